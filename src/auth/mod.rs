//! Credential primitives: the Bearer token of a request, JWT parsing and
//! verification, key sets and JWKS, express-session cookies, the caches,
//! and `require`. Plain values in, an [`Identity`] or a [`Reason`] out: no
//! config snapshot and no shared state (the pipeline's authn step ties
//! these to both), so each is tested without a proxy or a server.

pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod session;

use crate::denial::Reason;
use crate::identity::Identity;
use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The Bearer token of a request. No `Authorization`, or another scheme, is
/// `missing_credentials`; two `Authorization` headers or an empty or
/// non-ASCII token are `malformed`.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Reason> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Err(Reason::MissingCredentials);
    };
    if all.next().is_some() {
        return Err(Reason::Malformed);
    }
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(Reason::MissingCredentials);
    }
    let token = std::str::from_utf8(&bytes[7..])
        .map_err(|_| Reason::Malformed)?
        .trim();
    if token.is_empty() {
        return Err(Reason::Malformed);
    }
    Ok(token)
}

/// A route's `require`: roles and scopes every request must carry.
#[derive(Debug, Clone, Default)]
pub struct Require {
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
}

/// The route's `require`: every listed role, then every listed scope.
pub fn authorize(require: &Require, id: &Identity) -> Result<(), Reason> {
    if !require.roles.iter().all(|r| id.roles.contains(r)) {
        return Err(Reason::InsufficientRole);
    }
    if !require.scopes.iter().all(|s| id.scopes.contains(s)) {
        return Err(Reason::InsufficientScope);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(Reason::MissingCredentials));
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), Err(Reason::MissingCredentials));
        h.insert(AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Ok("abc"));
        h.append(AUTHORIZATION, "Bearer def".parse().unwrap());
        assert_eq!(bearer(&h), Err(Reason::Malformed));
    }
}
