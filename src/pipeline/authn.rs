//! Step 3: authentication (JWT with the verified-token cache, or an
//! express-session cookie), revocation on every request, CSRF for cookie
//! requests, then the route's `require`. The credential checks themselves
//! are `auth/` (plain values in, an identity or a reason out); this step
//! ties them to the config snapshot and the shared state.

use super::{has_body, Ctx, Next, Pipeline};
use crate::auth;
use crate::denial::{Answer, Reason};
use crate::identity::{AuthMethod, Identity};
use crate::runtime::{AuthMode, Route, Runtime};
use crate::state::State;
use http::request::Parts;
use http::HeaderMap;
use std::sync::Arc;

impl Pipeline {
    /// Step 3: authenticates and authorizes the request for the matched
    /// route.
    pub(super) async fn authn(&self, req: &Parts, ctx: &mut Ctx) -> Next {
        let Some(rt) = ctx.rt.clone() else {
            return ctx.deny(Reason::NoRoute, has_body(&req.headers));
        };
        let Some(route) = ctx.route.and_then(|i| rt.routes.get(i)) else {
            return ctx.deny(Reason::NoRoute, has_body(&req.headers));
        };
        if route.auth == AuthMode::None {
            route
                .metrics(&self.state.metrics)
                .auth_for("none")
                .observe(ctx.start.elapsed().as_secs_f64());
            return Next::Forward;
        }
        if route.auth == AuthMode::JwtOrSession && auth::bearer(&req.headers).is_err() {
            ctx.auth_label = "session";
        }
        let mut result = authenticate(&self.state, &rt, route, &req.headers).await;
        if let Ok(id) = &result {
            // Known from here on, for the log line, even if refused below.
            ctx.auth_label = id.method.as_str();
            ctx.identity = Some(id.clone());
            // Cookies ride along on cross-site requests; bearer tokens don't.
            if id.method == AuthMethod::Session
                && auth::session::is_unsafe(&req.method)
                && !auth::session::csrf_ok(&req.headers, ctx.scheme, allowed_origins(&rt))
            {
                result = Err(Reason::Csrf);
            }
        }
        let result = result.and_then(|id| auth::authorize(&route.require, &id));
        route
            .metrics(&self.state.metrics)
            .auth_for(ctx.auth_label)
            .observe(ctx.start.elapsed().as_secs_f64());
        match result {
            Ok(()) => Next::Forward,
            Err(reason) => {
                if reason.response().status == 401
                    && route.login_redirect.is_some()
                    && is_browser(req)
                {
                    ctx.reason = reason;
                    let location =
                        login_location(route.login_redirect.as_deref().unwrap_or("/"), &req.uri);
                    return ctx.respond(Answer::redirect(location, has_body(&req.headers)));
                }
                ctx.deny(reason, has_body(&req.headers))
            }
        }
    }
}

/// Authenticates a request on `route` (`None`-auth routes never get
/// here). `jwt_or_session`: a Bearer token decides alone; without one
/// (no `Authorization`, or another scheme) the session cookie is tried.
async fn authenticate(
    state: &State,
    rt: &Runtime,
    route: &Route,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, Reason> {
    match route.auth {
        // step 3 forwards `auth = "none"` routes before asking
        AuthMode::None => Err(Reason::NoRoute),
        AuthMode::Jwt => by_jwt(state, rt, route, auth::bearer(headers)?).await,
        AuthMode::Session => by_session(state, rt, headers).await,
        AuthMode::JwtOrSession => match auth::bearer(headers) {
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
    match verify_token(rt, route, token, crate::clock::now_unix()) {
        Err(Reason::UnknownKey) => {
            let Some(remote) = remote_issuer_of(rt, route, token) else {
                return Err(Reason::UnknownKey);
            };
            match remote.refetch_for_unknown_kid().await {
                auth::jwks::Refetch::Refreshed => {
                    verify_token(rt, route, token, crate::clock::now_unix())
                }
                auth::jwks::Refetch::Fetched(Ok(_)) => {
                    state
                        .metrics
                        .jwks_refresh
                        .with_label_values(&[remote.issuer.as_str(), "ok"])
                        .inc();
                    verify_token(rt, route, token, crate::clock::now_unix())
                }
                auth::jwks::Refetch::Fetched(Err(e)) => {
                    state
                        .metrics
                        .jwks_refresh
                        .with_label_values(&[remote.issuer.as_str(), "error"])
                        .inc();
                    tracing::warn!(issuer = remote.issuer.as_str(), error = %e, "JWKS re-fetch for an unknown kid failed");
                    Err(Reason::UnknownKey)
                }
                auth::jwks::Refetch::Skipped => Err(Reason::UnknownKey),
            }
        }
        other => other,
    }
}

/// The remote key set of the route issuer this token claims (by `iss`).
fn remote_issuer_of(
    rt: &Runtime,
    route: &Route,
    token: &str,
) -> Option<Arc<auth::jwks::RemoteKeys>> {
    let jws = auth::jwt::parse(token).ok()?;
    let claims = auth::jwt::claims_of(&jws.payload().ok()?).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    route
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i))
        .find(|i| i.issuer == iss)
        .and_then(|i| match &i.keys {
            auth::jwks::KeySource::Remote(r) => Some(r.clone()),
            auth::jwks::KeySource::Static(_) => None,
        })
}

async fn by_session(
    state: &State,
    rt: &Runtime,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, Reason> {
    match (&rt.sessions, &state.sessions) {
        (Some(settings), Some(cache)) => {
            auth::session::authenticate(settings, cache, &state.store, &state.metrics, headers)
                .await
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
    let jws = auth::jwt::parse(token)?;
    match jws.alg {
        Some(a) if route.algs.contains(a) => {}
        _ => return Err(Reason::AlgNotAllowed),
    }
    let claims = auth::jwt::claims_of(&jws.payload()?)?;
    let iss = claims.get("iss").and_then(|v| v.as_str());
    let (issuer_idx, issuer) = route
        .issuers
        .iter()
        .filter_map(|i| rt.issuers.get(*i).map(|x| (*i, x)))
        .find(|(_, i)| Some(i.issuer.as_str()) == iss)
        .ok_or(Reason::WrongIssuer)?;
    let keys = issuer.keys.current()?;
    jws.verify(&keys, issuer.algs)?;
    let rules = auth::jwt::ClaimRules {
        issuer: &issuer.issuer,
        audiences: &issuer.audiences,
        leeway: issuer.leeway,
    };
    auth::jwt::check_claims(&claims, &rules, now)?;
    let exp = claims
        .get("exp")
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
        .unwrap_or(now);
    let expires_at = exp.saturating_add(issuer.leeway);
    let mut identity = Identity::from_jwt(issuer.name.clone(), claims, &rt.kept_claims);
    identity.expires_at = Some(expires_at);
    Ok(Verified {
        identity,
        issuer: issuer_idx,
        keys,
        expires_at,
    })
}

/// A token that passed every signature and claim check.
pub struct Verified {
    pub identity: Identity,
    /// Index of the issuer (in the runtime) that verified it.
    pub issuer: usize,
    pub keys: Arc<auth::keys::KeySet>,
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
    let now = crate::clock::now_unix();
    let cache = &state.token_cache;
    let key = cache
        .enabled()
        .then(|| auth::cache::TokenCache::key(token))
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
                    Arc::new(auth::cache::CachedToken {
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

/// A browser navigation: GET or HEAD whose `Accept` mentions `text/html`.
fn is_browser(req: &Parts) -> bool {
    (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && req
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// `<login_redirect>?return_to=<url-encoded original path and query>`.
fn login_location(base: &str, uri: &http::Uri) -> String {
    let original = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sep = if base.contains('?') { '&' } else { '?' };
    let encoded =
        percent_encoding::utf8_percent_encode(original, percent_encoding::NON_ALPHANUMERIC);
    format!("{base}{sep}return_to={encoded}")
}

fn allowed_origins(rt: &Runtime) -> &[String] {
    rt.sessions
        .as_ref()
        .map_or(&[], |s| s.allowed_origins.as_slice())
}
