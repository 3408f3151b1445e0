//! Compiles `[[routes]]`: each route's matcher (path, host, methods), auth
//! mode, issuers, `require`, claim-to-header mappings, assertion flag and
//! rate limits. Its own file because routes are compiled last: they refer
//! to upstreams, issuers, sessions and the assertion section by name.

use super::duration;
use crate::auth::keys::AlgSet;
use crate::config::file::{FileConfig, RouteFile};
use crate::config::Issues;
use crate::ratelimit::{Count, KeySpec, Limit};
use crate::router::Matcher;
use crate::runtime::{AuthMode, Issuer, Require, Route};
use http::HeaderName;
use std::time::Duration;

/// What routes refer to, built before them.
pub(super) struct Built<'a> {
    pub(super) cfg: &'a FileConfig,
    pub(super) upstream_names: &'a [String],
    pub(super) issuer_names: &'a [String],
    pub(super) issuers: &'a [Issuer],
    pub(super) have_sessions: bool,
}

pub(super) fn build_route(
    idx: usize,
    r: &RouteFile,
    b: &Built,
    issues: &mut Issues,
) -> Option<(Route, Matcher)> {
    let Built {
        cfg,
        upstream_names,
        issuer_names,
        issuers,
        have_sessions,
    } = *b;
    let at = |k: &str| format!("routes.{idx}.{k}");
    let here = format!("routes.{idx}");
    let before = issues.0.len();
    let upstream_name = r.upstream.as_deref()?;
    let upstream = match upstream_names.iter().position(|n| n == upstream_name) {
        Some(u) => u,
        None => {
            if !cfg.upstreams.contains_key(upstream_name) {
                issues.at(at("upstream"), format!("unknown upstream `{upstream_name}` (define it as [upstreams.{upstream_name}])"));
            }
            usize::MAX
        }
    };
    match (&r.path, &r.path_prefix) {
        (None, None) => issues.at(here.clone(), "a route needs `path` or `path_prefix`"),
        (Some(_), Some(_)) => issues.at(here.clone(), "give `path` or `path_prefix`, not both"),
        (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
            let k = if r.path.is_some() {
                "path"
            } else {
                "path_prefix"
            };
            issues.at(at(k), "paths start with `/`");
        }
        _ => {}
    }
    let auth = match r.auth.as_deref().unwrap_or("jwt") {
        "jwt" => AuthMode::Jwt,
        "none" => AuthMode::None,
        "session" => AuthMode::Session,
        "jwt_or_session" => AuthMode::JwtOrSession,
        other => {
            issues.at(at("auth"), format!("unknown auth `{other}` (expected \"jwt\", \"session\", \"jwt_or_session\" or \"none\")"));
            AuthMode::None
        }
    };
    let mut route_issuers = Vec::new();
    if r.issuers.as_ref().is_some_and(Vec::is_empty) {
        issues.at(
            at("issuers"),
            "an empty issuers list accepts no token; omit it to accept every issuer",
        );
    }
    if r.require.is_some() && auth == AuthMode::None {
        issues.at(
            at("require"),
            "require has no identity to check on an auth = \"none\" route",
        );
    }
    match &r.issuers {
        Some(list) => {
            for (n, name) in list.iter().enumerate() {
                match issuer_names.iter().position(|x| x == name) {
                    Some(i) => route_issuers.push(i),
                    None if !cfg.issuers.contains_key(name) => issues.at(
                        format!("routes.{idx}.issuers.{n}"),
                        format!("unknown issuer `{name}` (define it as [issuers.{name}])"),
                    ),
                    None => {}
                }
            }
        }
        None => route_issuers.extend(0..issuers.len()),
    }
    if matches!(auth, AuthMode::Session | AuthMode::JwtOrSession) && !have_sessions {
        issues.at(at("auth"), "session routes need a valid [sessions] section");
    }
    if r.login_redirect.is_some() && !matches!(auth, AuthMode::Session | AuthMode::JwtOrSession) {
        issues.at(
            at("login_redirect"),
            "login_redirect applies to session routes (auth = \"session\" or \"jwt_or_session\")",
        );
    }
    if matches!(auth, AuthMode::Jwt | AuthMode::JwtOrSession)
        && route_issuers.is_empty()
        && cfg.issuers.is_empty()
    {
        issues.at(at("auth"), "a jwt route needs at least one [issuers.*]");
    }
    let mut algs = AlgSet::default();
    for i in &route_issuers {
        if let Some(iss) = issuers.get(*i) {
            for a in iss.algs.iter() {
                algs.insert(a);
            }
        }
    }
    let mut headers = Vec::new();
    for (h, claim) in &r.headers {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if name.as_str().starts_with("x-auth-") => issues.at(
                format!("routes.{idx}.headers.{h}"),
                "X-Auth-* headers are the gateway's own; map claims to another name",
            ),
            Ok(name) if is_protected(&name) => issues.at(
                format!("routes.{idx}.headers.{h}"),
                format!("`{h}` cannot carry a claim"),
            ),
            Ok(name) => headers.push((name, claim.clone())),
            Err(_) => issues.at(
                format!("routes.{idx}.headers.{h}"),
                format!("`{h}` is not a valid header name"),
            ),
        }
    }
    if r.assertion && cfg.assertion.is_none() {
        issues.at(
            at("assertion"),
            "assertion = true needs an [assertion] section (the gateway's signing key)",
        );
    }
    if r.assertion && auth == AuthMode::None {
        issues.at(
            at("assertion"),
            "an auth = \"none\" route has no identity to assert",
        );
    }
    let mut limits = Vec::new();
    for (n, l) in r.rate_limits.iter().enumerate() {
        let lat = |k: &str| format!("routes.{idx}.rate_limits.{n}.{k}");
        let key = match l.key.as_deref().map(KeySpec::parse) {
            Some(Ok(k)) => Some(k),
            Some(Err(e)) => {
                issues.at(lat("key"), e);
                None
            }
            None => {
                issues.at(
                    format!("routes.{idx}.rate_limits.{n}"),
                    "missing `key` (\"ip\", \"header:NAME\", \"form:FIELD\" or \"json:FIELD\")",
                );
                None
            }
        };
        let limit = match l.limit {
            Some(x) if x > 0 && x <= 1_000_000_000 => Some(x),
            Some(_) => {
                issues.at(lat("limit"), "limit must be between 1 and 1000000000");
                None
            }
            None => {
                issues.at(format!("routes.{idx}.rate_limits.{n}"), "missing `limit`");
                None
            }
        };
        let window = match l.window.as_deref().map(duration) {
            Some(Ok(d)) if d >= Duration::from_secs(1) && d <= Duration::from_secs(366 * 86400) => {
                Some(d)
            }
            Some(Ok(_)) => {
                issues.at(lat("window"), "window must be between 1s and 366 days");
                None
            }
            Some(Err(e)) => {
                issues.at(lat("window"), e);
                None
            }
            None => {
                issues.at(
                    format!("routes.{idx}.rate_limits.{n}"),
                    "missing `window` (e.g. \"1m\")",
                );
                None
            }
        };
        let count = match l.count.as_deref() {
            None | Some("all") => Count::All,
            Some("failures") => Count::Failures,
            Some(other) => {
                issues.at(
                    lat("count"),
                    format!("unknown count `{other}` (expected \"all\" or \"failures\")"),
                );
                Count::All
            }
        };
        if let (Some(key), Some(limit), Some(window)) = (key, limit, window) {
            limits.push(Limit::new(key, limit, window.as_micros() as u64, count));
        }
    }
    let limits_need_body = limits.iter().any(|l| l.key.needs_body());
    let methods = r
        .methods
        .as_ref()
        .map(|m| m.iter().map(|s| s.to_ascii_uppercase()).collect())
        .unwrap_or_default();
    let name = r
        .name
        .clone()
        .or_else(|| r.path.clone())
        .or_else(|| r.path_prefix.clone())
        .unwrap_or_else(|| format!("route{idx}"));
    if issues.0.len() > before {
        return None;
    }
    let require = r
        .require
        .as_ref()
        .map(|q| Require {
            roles: q.roles.clone(),
            scopes: q.scopes.clone(),
        })
        .unwrap_or_default();
    Some((
        Route {
            name,
            upstream,
            auth,
            issuers: route_issuers,
            algs,
            require,
            login_redirect: r.login_redirect.clone(),
            headers,
            limits,
            limits_need_body,
            metrics: std::sync::OnceLock::new(),
            assertion: r.assertion,
        },
        Matcher {
            path: r.path.clone(),
            path_prefix: r.path_prefix.clone(),
            // one trailing dot, as a request's host loses it
            host: r.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                h.strip_suffix('.').map(str::to_string).unwrap_or(h)
            }),
            methods,
        },
    ))
}

/// Headers a claim mapping must never overwrite: hop-by-hop and framing
/// headers, and the credentials that are forwarded unchanged.
fn is_protected(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
            | "proxy-connection"
            | "authorization"
            | "cookie"
            | "x-forwarded-for"
            | "x-forwarded-proto"
    )
}
