//! Gateway-signed identity assertions (Pomerium/Oathkeeper style): for
//! routes with `assertion = true`, a short-lived JWT carrying the verified
//! identity goes to the backend in `X-Auth-Assertion`, so a backend can
//! trust the identity without trusting the network. The public keys are
//! served as a JWKS on the proxy listener; each `kid` is the key's RFC 7638
//! thumbprint, so every instance and every rotation agrees on it.

use crate::identity::Identity;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Why an assertion key is unusable (a `check` error).
#[derive(Debug, thiserror::Error)]
pub enum AssertionKeyError {
    #[error("not a PEM private key")]
    NotPem,
    #[error("a SEC1/PKCS#1 key: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`")]
    NotPkcs8,
    #[error("the key is not a PKCS#8 {0} private key (generate one with `openssl genpkey -algorithm {1}`)")]
    WrongType(&'static str, &'static str),
}

/// A signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub jwk: Value,
    key: EncodingKey,
}

fn pkcs8_der(pem: &[u8]) -> Result<Vec<u8>, AssertionKeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| AssertionKeyError::NotPem)?;
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN EC PRIVATE KEY")
            || line.starts_with("-----BEGIN RSA PRIVATE KEY")
        {
            return Err(AssertionKeyError::NotPkcs8);
        }
        if line == "-----BEGIN PRIVATE KEY-----" {
            inside = true;
        } else if line.starts_with("-----END") {
            break;
        } else if inside {
            body.push_str(line);
        }
    }
    if !inside {
        return Err(AssertionKeyError::NotPem);
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| AssertionKeyError::NotPem)
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// RFC 7638 thumbprint (SHA-256, base64url) of the required members.
fn thumbprint(canonical: &str) -> String {
    b64(&Sha256::digest(canonical.as_bytes()))
}

impl SigningKey {
    /// Loads a PKCS#8 PEM private key for `alg` (ES256 or EdDSA).
    pub fn from_pem(pem: &[u8], alg: Algorithm) -> Result<SigningKey, AssertionKeyError> {
        let der = pkcs8_der(pem)?;
        let (jwk, canonical, key) = match alg {
            Algorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                    .map_err(|_| {
                        AssertionKeyError::WrongType(
                            "P-256 (ES256)",
                            "EC -pkeyopt ec_paramgen_curve:P-256",
                        )
                    })?;
                let public = pair.public_key().as_ref();
                let (x, y) = match public.split_first() {
                    Some((4, rest)) if rest.len() == 64 => (b64(&rest[..32]), b64(&rest[32..])),
                    _ => {
                        return Err(AssertionKeyError::WrongType(
                            "P-256 (ES256)",
                            "EC -pkeyopt ec_paramgen_curve:P-256",
                        ))
                    }
                };
                let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
                let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256", "use": "sig"});
                let key = EncodingKey::from_ec_pem(pem).map_err(|_| {
                    AssertionKeyError::WrongType(
                        "P-256 (ES256)",
                        "EC -pkeyopt ec_paramgen_curve:P-256",
                    )
                })?;
                (jwk, canonical, key)
            }
            _ => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                    .map_err(|_| AssertionKeyError::WrongType("Ed25519 (EdDSA)", "ed25519"))?;
                let x = b64(pair.public_key().as_ref());
                let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
                let jwk =
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "use": "sig"});
                let key = EncodingKey::from_ed_pem(pem)
                    .map_err(|_| AssertionKeyError::WrongType("Ed25519 (EdDSA)", "ed25519"))?;
                (jwk, canonical, key)
            }
        };
        let kid = thumbprint(&canonical);
        let mut jwk = jwk;
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), Value::String(kid.clone()));
        }
        Ok(SigningKey { kid, jwk, key })
    }
}

/// The compiled `[assertion]`.
pub struct AssertionSettings {
    pub algorithm: Algorithm,
    pub current: SigningKey,
    /// Still published (rotation), never used to sign.
    pub previous: Vec<SigningKey>,
    pub issuer: String,
    pub audience: String,
    pub ttl_secs: i64,
    pub jwks_path: String,
    /// The JWKS document, rendered once.
    pub jwks: String,
}

impl AssertionSettings {
    /// Renders the JWKS of the current and previous keys.
    pub fn render_jwks(current: &SigningKey, previous: &[SigningKey]) -> String {
        // One entry per kid: a key listed twice (or as current and previous)
        // is published once.
        let mut seen = std::collections::HashSet::new();
        let keys: Vec<&Value> = std::iter::once(current)
            .chain(previous.iter())
            .filter(|k| seen.insert(k.kid.as_str()))
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// Signs an assertion for `id` on `route` at `now`.
    pub fn sign(&self, id: &Identity, route: &str, now: i64) -> Option<String> {
        let mut claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "iat": now,
            "exp": now + self.ttl_secs,
            "roles": id.roles,
            "scopes": id.scopes,
            "auth_method": id.method.as_str(),
            "route": route,
        });
        let o = claims.as_object_mut()?;
        if let Some(s) = &id.subject {
            o.insert("sub".into(), Value::String(s.clone()));
        }
        if let Some(e) = &id.email {
            o.insert("email".into(), Value::String(e.clone()));
        }
        if id.method == crate::identity::AuthMethod::Jwt {
            if let Some(iss) = id.claims.get("iss") {
                o.insert("original_iss".into(), iss.clone());
            }
        }
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.current.kid.clone());
        encode(&header, &claims, &self.current.key).ok()
    }
}
