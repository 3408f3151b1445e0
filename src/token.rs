//! `authgate token`: mints a JWT with an issuer's configured signing key, so
//! demos and tests use exactly the keys the gateway verifies with.

use crate::runtime::Issuer;
use jsonwebtoken::{encode, Header};
use serde_json::{Map, Value};

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "issuer `{0}` has no signing key (configure secret_env/secret_file or private_key_file)"
    )]
    NoSigningKey(String),
    #[error("--claim `{0}` is not of the form key=value")]
    BadClaim(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Builds and signs the claims: `iss`, the first audience as `aud`, `iat`,
/// a random `jti`, `exp` = now + ttl, `sub`, then each `k=v` (v as JSON when
/// it parses, else a string), which may override the defaults.
pub fn mint(
    issuer: &Issuer,
    sub: &str,
    claims: &[String],
    ttl_secs: i64,
    kid: Option<&str>,
    now: i64,
) -> Result<String, TokenError> {
    let key = issuer
        .signing_key
        .as_ref()
        .ok_or_else(|| TokenError::NoSigningKey(issuer.name.to_string()))?;
    let alg = *issuer
        .algorithms
        .first()
        .ok_or_else(|| TokenError::NoSigningKey(issuer.name.to_string()))?;
    let mut map = Map::new();
    map.insert("iss".into(), Value::String(issuer.issuer.clone()));
    if let Some(aud) = issuer.audiences.first() {
        map.insert("aud".into(), Value::String(aud.clone()));
    }
    map.insert("sub".into(), Value::String(sub.to_string()));
    map.insert("iat".into(), Value::from(now));
    map.insert("exp".into(), Value::from(now + ttl_secs));
    let jti: [u8; 16] = rand::random();
    let jti_hex: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    map.insert("jti".into(), Value::String(jti_hex));
    for c in claims {
        let (k, v) = c
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| TokenError::BadClaim(c.clone()))?;
        let value =
            serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    let mut header = Header::new(alg);
    header.kid = kid
        .map(str::to_string)
        .or_else(|| issuer.signing_kid.clone());
    encode(&header, &Value::Object(map), key).map_err(|e| TokenError::Sign(e.to_string()))
}
