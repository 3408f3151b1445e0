//! JWT verification: the JWS envelope (header rules, key selection,
//! signature) and then the claims (exp, nbf, iat, iss, aud), each failure a
//! contract [`Reason`]. The rules that are never configurable live here:
//! `alg: none` and unknown algorithms are refused, `jku`/`x5u`/`jwk` header
//! fields and any `crit` extension reject the token (authgate never fetches or
//! trusts keys a token names), a token without `exp` is malformed, and the
//! token size is bounded before anything is decoded.

use super::keys::{parse_alg, AlgSet, KeySet};
use crate::denial::Reason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest token accepted (bytes). Longer ones are `malformed`, never a 5xx.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The JOSE header fields authgate looks at. Unknown fields are ignored;
/// duplicate fields are a parse error (serde), so `malformed`.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
}

/// A compact JWS split into its parts, header decoded.
pub struct Jws<'a> {
    pub header: JoseHeader,
    pub alg: Option<Algorithm>,
    payload_b64: &'a str,
    signature_b64: &'a str,
    signing_input: &'a str,
}

/// Splits and decodes the header of a compact JWS.
pub fn parse(token: &str) -> Result<Jws<'_>, Reason> {
    if token.len() > MAX_TOKEN_LEN || token.is_empty() {
        return Err(Reason::Malformed);
    }
    let mut it = token.splitn(4, '.');
    let (h, p, s) = match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(Reason::Malformed),
    };
    // An empty payload is a valid JWS (the claims check rejects it as a JWT);
    // an empty signature is refused by `verify`, after the algorithm check,
    // so an unsigned `alg: none` token reports `alg_not_allowed`.
    if h.is_empty() {
        return Err(Reason::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| Reason::Malformed)?;
    let header: JoseHeader =
        serde_json::from_slice(&header_bytes).map_err(|_| Reason::Malformed)?;
    if header.jku.is_some() || header.x5u.is_some() || header.jwk.is_some() {
        return Err(Reason::Malformed);
    }
    // authgate implements no JWS extension, so any `crit` names one it does
    // not understand (RFC 7515 §4.1.11: reject).
    if header.crit.is_some() {
        return Err(Reason::Malformed);
    }
    let alg = parse_alg(&header.alg);
    Ok(Jws {
        header,
        alg,
        payload_b64: p,
        signature_b64: s,
        signing_input: &token[..h.len() + 1 + p.len()],
    })
}

impl Jws<'_> {
    /// The decoded payload bytes (not yet verified).
    pub fn payload(&self) -> Result<Vec<u8>, Reason> {
        URL_SAFE_NO_PAD
            .decode(self.payload_b64)
            .map_err(|_| Reason::Malformed)
    }

    /// Checks the algorithm against `allowed` and the signature against the
    /// keys: by `kid` when the token names one, else every key that can
    /// serve the algorithm.
    pub fn verify(&self, keys: &KeySet, allowed: AlgSet) -> Result<(), Reason> {
        let alg = match self.alg {
            Some(a) if allowed.contains(a) => a,
            _ => return Err(Reason::AlgNotAllowed),
        };
        // Strict base64url (no padding, canonical trailing bits) before any crypto.
        let sig = URL_SAFE_NO_PAD
            .decode(self.signature_b64)
            .map_err(|_| Reason::Malformed)?;
        if sig.is_empty() {
            return Err(Reason::Malformed);
        }
        let kid = self.header.kid.as_deref();
        let mut candidates = 0;
        for k in &keys.keys {
            if let Some(kid) = kid {
                if k.kid.as_deref() != Some(kid) {
                    continue;
                }
            }
            if !k.algs.contains(alg) {
                continue;
            }
            candidates += 1;
            // A key aws-lc could not parse for `alg` when it was loaded
            // verifies nothing (jsonwebtoken's aws-lc provider refuses the
            // same keys).
            let ok = k
                .verifier(alg)
                .is_some_and(|v| v.verify(self.signing_input.as_bytes(), &sig));
            if ok {
                return Ok(());
            }
        }
        if candidates == 0 {
            return Err(Reason::UnknownKey);
        }
        Err(Reason::BadSignature)
    }
}

/// Verifies a compact JWS and returns its payload: the envelope check alone,
/// used for JWS test vectors and by [`verify_token`].
pub fn verify_jws(token: &str, keys: &KeySet, allowed: AlgSet) -> Result<Vec<u8>, Reason> {
    let jws = parse(token)?;
    jws.verify(keys, allowed)?;
    jws.payload()
}

/// What an issuer asks of a token's claims.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub leeway: i64,
}

fn num(v: &Value) -> Result<i64, Reason> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        .ok_or(Reason::Malformed)
}

/// Checks the registered claims at time `now` (unix seconds).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: i64,
) -> Result<(), Reason> {
    let exp = num(claims.get("exp").ok_or(Reason::Malformed)?)?;
    if now >= exp.saturating_add(rules.leeway) {
        return Err(Reason::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        if num(nbf)? > now.saturating_add(rules.leeway) {
            return Err(Reason::NotYetValid);
        }
    }
    if let Some(iat) = claims.get("iat") {
        if num(iat)? > now.saturating_add(rules.leeway) {
            return Err(Reason::NotYetValid);
        }
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == rules.issuer => {}
        _ => return Err(Reason::WrongIssuer),
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.iter().any(|x| x == a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(Reason::WrongAudience);
        }
    }
    Ok(())
}

/// Decodes a verified payload as a JSON object of claims.
pub fn claims_of(payload: &[u8]) -> Result<Map<String, Value>, Reason> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Reason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::secret_key;
    use crate::clock::now_unix;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn keys() -> KeySet {
        KeySet {
            keys: vec![secret_key(b"0123456789abcdef0123456789abcdef")],
        }
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap()
    }

    #[test]
    fn accepts_valid_and_rejects_tampering() {
        let t = token(serde_json::json!({"sub":"a","exp": now_unix() + 60}));
        assert!(verify_jws(&t, &keys(), AlgSet::HMAC).is_ok());
        let mut bad = t.clone();
        bad.push('A');
        assert!(verify_jws(&bad, &keys(), AlgSet::HMAC).is_err());
        assert_eq!(
            verify_jws(&t, &keys(), AlgSet::RSA),
            Err(Reason::AlgNotAllowed)
        );
    }

    #[test]
    fn header_rules() {
        let enc = |h: &str| URL_SAFE_NO_PAD.encode(h);
        let p = enc("{}");
        for h in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","jku":"http://x"}"#,
            r#"{"alg":"HS256","x5u":"http://x"}"#,
            r#"{"alg":"HS256","jwk":{}}"#,
            r#"{"alg":"HS256","crit":["x"]}"#,
            r#"{"alg":"HS256","alg":"HS256"}"#,
        ] {
            let t = format!("{}.{}.AAAA", enc(h), p);
            assert!(verify_jws(&t, &keys(), AlgSet::HMAC).is_err(), "{h}");
        }
    }

    #[test]
    fn claim_rules() {
        let aud = vec!["api".to_string()];
        let r = ClaimRules {
            issuer: "i",
            audiences: &aud,
            leeway: 30,
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        let now = 1_000_000;
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"i","aud":"api","exp":now+1})),
                &r,
                now
            ),
            Ok(())
        );
        assert_eq!(
            check_claims(&c(serde_json::json!({"iss":"i","aud":"api"})), &r, now),
            Err(Reason::Malformed)
        );
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"i","aud":"api","exp":now-31})),
                &r,
                now
            ),
            Err(Reason::Expired)
        );
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"i","aud":"api","exp":now-10})),
                &r,
                now
            ),
            Ok(())
        );
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"i","aud":"api","exp":now+99,"nbf":now+31})),
                &r,
                now
            ),
            Err(Reason::NotYetValid)
        );
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"j","aud":"api","exp":now+99})),
                &r,
                now
            ),
            Err(Reason::WrongIssuer)
        );
        assert_eq!(
            check_claims(&c(serde_json::json!({"iss":"i","exp":now+99})), &r, now),
            Err(Reason::WrongAudience)
        );
        assert_eq!(
            check_claims(
                &c(serde_json::json!({"iss":"i","aud":["x","api"],"exp":now+99})),
                &r,
                now
            ),
            Ok(())
        );
    }
}
