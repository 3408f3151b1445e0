//! Authentication per route: credentials in, an [`Identity`] or a
//! [`Reason`] out. Takes plain values (headers, the runtime snapshot), so it
//! is tested without a proxy session.

pub mod cache;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod session;

use crate::denial::Reason;
use crate::identity::Identity;
use crate::runtime::{AuthMode, Require, Route, Runtime};
use crate::state::State;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use std::sync::Arc;

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

/// Authenticates a request on `route` (`None`-auth routes never get
/// here). `jwt_or_session`: a Bearer token decides alone; without one
/// (no `Authorization`, or another scheme) the session cookie is tried.
pub async fn authenticate(
    state: &State,
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, Reason> {
    match route.auth {
        AuthMode::None => Err(Reason::Ok),
        AuthMode::Jwt => by_jwt(state, rt, route, bearer(headers)?).await,
        AuthMode::Session => by_session(state, rt, headers).await,
        AuthMode::JwtOrSession => match bearer(headers) {
            Ok(token) => by_jwt(state, rt, route, token).await,
            Err(Reason::MissingCredentials) => by_session(state, rt, headers).await,
            Err(e) => Err(e),
        },
    }
}

/// [`verify_token`], and when the token names a `kid` its issuer's remote
/// key set lacks, one shared re-fetch (within the cooldown) and a retry.
async fn verify_with_refetch(
    state: &State,
    rt: &Runtime,
    route: &Route,
    token: &str,
) -> Result<Verified, Reason> {
    match verify_token(rt, route, token, jwt::now_unix()) {
        Err(Reason::UnknownKey) => {
            let Some(remote) = remote_issuer_of(rt, route, token) else {
                return Err(Reason::UnknownKey);
            };
            match remote.refetch_for_unknown_kid().await {
                jwks::Refetch::Refreshed => verify_token(rt, route, token, jwt::now_unix()),
                jwks::Refetch::Fetched(Ok(_)) => {
                    state
                        .metrics
                        .jwks_refresh
                        .with_label_values(&[remote.issuer.as_str(), "ok"])
                        .inc();
                    verify_token(rt, route, token, jwt::now_unix())
                }
                jwks::Refetch::Fetched(Err(e)) => {
                    state
                        .metrics
                        .jwks_refresh
                        .with_label_values(&[remote.issuer.as_str(), "error"])
                        .inc();
                    tracing::warn!(issuer = remote.issuer.as_str(), error = %e, "JWKS re-fetch for an unknown kid failed");
                    Err(Reason::UnknownKey)
                }
                jwks::Refetch::Skipped => Err(Reason::UnknownKey),
            }
        }
        other => other,
    }
}

/// The remote key set of the route issuer this token claims (by `iss`).
fn remote_issuer_of(rt: &Runtime, route: &Route, token: &str) -> Option<Arc<jwks::RemoteKeys>> {
    let jws = jwt::parse(token).ok()?;
    let claims = jwt::claims_of(&jws.payload().ok()?).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    route
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i))
        .find(|i| i.issuer == iss)
        .and_then(|i| match &i.keys {
            jwks::KeySource::Remote(r) => Some(r.clone()),
            jwks::KeySource::Static(_) => None,
        })
}

async fn by_session(
    state: &State,
    rt: &Runtime,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, Reason> {
    match (&rt.sessions, &state.sessions) {
        (Some(settings), Some(cache)) => {
            session::authenticate(settings, cache, &state.store, &state.metrics, headers).await
        }
        // A session route is only accepted by `check` with [sessions]; a
        // reload cannot add one without a restart, so fail closed.
        _ => Err(Reason::StoreUnavailable),
    }
}

/// Verifies a JWT for a route: the issuer is chosen among the route's by the
/// token's `iss`, then its pinned algorithms and keys decide.
pub fn verify_token(
    rt: &Runtime,
    route: &Route,
    token: &str,
    now: i64,
) -> Result<Verified, Reason> {
    let jws = jwt::parse(token)?;
    match jws.alg {
        Some(a) if route.algs.contains(a) => {}
        _ => return Err(Reason::AlgNotAllowed),
    }
    let claims = jwt::claims_of(&jws.payload()?)?;
    let iss = claims.get("iss").and_then(|v| v.as_str());
    let (issuer_idx, issuer) = route
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i).map(|x| (*i, x)))
        .find(|(_, i)| Some(i.issuer.as_str()) == iss)
        .ok_or(Reason::WrongIssuer)?;
    let keys = issuer.keys.current()?;
    jws.verify(&keys, issuer.algs)?;
    let rules = jwt::ClaimRules {
        issuer: &issuer.issuer,
        audiences: &issuer.audiences,
        leeway: issuer.leeway,
    };
    jwt::check_claims(&claims, &rules, now)?;
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .unwrap_or(now);
    Ok(Verified {
        identity: Identity::from_jwt(issuer.name.clone(), claims, &rt.kept_claims),
        issuer: issuer_idx,
        keys,
        expires_at: exp.saturating_add(issuer.leeway),
    })
}

/// A token that passed every signature and claim check.
pub struct Verified {
    pub identity: Identity,
    /// Index of the issuer (in the runtime) that verified it.
    pub issuer: usize,
    pub keys: Arc<keys::KeySet>,
    /// Unix seconds from which it is expired (`exp` + leeway).
    pub expires_at: i64,
}

/// JWT authentication with the verified-token cache: a hit skips the
/// signature and claim checks (not revocation); a miss verifies, and
/// caches a token verified before (`TokenCache::admit`).
async fn by_jwt(
    state: &State,
    rt: &Runtime,
    route: &Route,
    token: &str,
) -> Result<Arc<Identity>, Reason> {
    let now = jwt::now_unix();
    let cache = &state.token_cache;
    let key = cache
        .enabled()
        .then(|| cache::TokenCache::key(token))
        .flatten();
    let cached = key.as_ref().and_then(|k| cache.get(k));
    // an entry made stale by a reload or a key-set change earned its place
    let stale = cached.is_some();
    let hit = cached.filter(|e| {
        e.generation == rt.generation
            && route.issuers.contains(&e.issuer)
            && rt
                .issuers
                .get(e.issuer)
                .is_some_and(|i| i.keys.is_current(&e.keys))
    });
    let identity = match hit {
        Some(e) if now < e.expires_at => {
            state.metrics.token_cache_hit.inc();
            e.identity.clone()
        }
        Some(_) => {
            if let Some(k) = &key {
                cache.remove(k);
            }
            return Err(Reason::Expired);
        }
        None => {
            if key.is_some() {
                state.metrics.token_cache_miss.inc();
            }
            let v = verify_with_refetch(state, rt, route, token).await?;
            let identity = Arc::new(v.identity);
            if let Some(k) = key.filter(|k| stale || cache.admit(k)) {
                cache.insert(
                    k,
                    Arc::new(cache::CachedToken {
                        identity: identity.clone(),
                        generation: rt.generation,
                        issuer: v.issuer,
                        keys: v.keys,
                        expires_at: v.expires_at,
                        valid_until: std::time::Instant::now() + cache.max_ttl,
                    }),
                );
            }
            identity
        }
    };
    // Checked on every request, cache hit or not: a local lookup.
    if state.revocations.is_revoked(&identity) {
        return Err(Reason::Revoked);
    }
    Ok(identity)
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
