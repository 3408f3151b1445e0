//! Compiles `[[routes]]`: each route's matcher (path, host, methods), auth
//! mode, issuers, `require`, claim-to-header mappings, assertion flag and
//! rate limits. Its own file because routes are compiled last: they refer
//! to upstreams, issuers, sessions and the assertion section by name.

use super::duration;
use crate::auth::keys::AlgSet;
use crate::config::file::{FileConfig, RouteFile};
use crate::config::Issues;
use crate::identity;
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
            Ok(name) if identity::has_rule(name.as_str(), identity::PROTECTED) => issues.at(
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
            revalidate_streams: r.revalidate_streams.unwrap_or(true),
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

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use crate::runtime::AuthMode;

    const HS: &str =
        "[issuers.a]\nissuer = \"i\"\nalgorithms = [\"HS256\"]\nsecret_file = \"hs_secret.txt\"\n";
    const UP: &str = "[upstreams.app]\naddrs = [\"127.0.0.1:9\"]\n";

    #[test]
    fn unknown_upstream_is_refused_at_the_route() {
        let e = refused(&MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\""));
        has_line(
            &e,
            "g.toml:7:12: unknown upstream `nope` (define it as [upstreams.nope])",
        );
        let e = refused(&MINIMAL.replace("upstream = \"app\"\n", ""));
        has(&e, "missing `upstream`");
    }

    #[test]
    fn defaults_are_applied() {
        let rt = accepted(&format!(
            "{HS}{UP}[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\n"
        ));
        let r = &rt.routes[0];
        assert_eq!(r.name, "/api", "a route is named by its path");
        assert_eq!(r.auth, AuthMode::Jwt, "auth defaults to jwt");
        assert_eq!(r.issuers, [0], "every issuer when none is listed");
        assert_eq!(r.algs.iter().count(), 1);
        assert!(r.require.roles.is_empty() && r.require.scopes.is_empty());
        assert!(r.headers.is_empty() && r.limits.is_empty());
        assert!(!r.limits_need_body && !r.assertion);
        assert!(r.login_redirect.is_none());
    }

    #[test]
    fn paths_auth_and_issuers_are_checked() {
        let route = |body: &str| format!("{HS}{UP}[[routes]]\nupstream = \"app\"\n{body}");
        has(
            &refused(&route("auth = \"none\"\n")),
            "a route needs `path` or `path_prefix`",
        );
        has(
            &refused(&route("path = \"/a\"\npath_prefix = \"/a\"\n")),
            "give `path` or `path_prefix`, not both",
        );
        has_line(
            &refused(&route("path = \"a\"\n")),
            "g.toml:9:8: paths start with `/`",
        );
        has_line(
            &refused(&route("path = \"/a\"\nauth = \"magic\"\n")),
            "g.toml:10:8: unknown auth `magic` (expected \"jwt\", \"session\", \"jwt_or_session\" or \"none\")",
        );
        has_line(
            &refused(&route("path = \"/a\"\nissuers = [\"a\", \"b\"]\n")),
            "g.toml:10:17: unknown issuer `b` (define it as [issuers.b])",
        );
        has(
            &refused(&route("path = \"/a\"\nauth = \"session\"\n")),
            "session routes need a valid [sessions] section",
        );
        let e = refused(&format!(
            "{UP}[[routes]]\npath = \"/a\"\nupstream = \"app\"\n"
        ));
        has(&e, "a jwt route needs at least one [issuers.*]");
    }

    #[test]
    fn claim_headers_are_mapped_and_kept() {
        let rt = accepted(&format!(
            "{HS}{UP}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nheaders = {{ \"X-User\" = \"org.id\" }}\n"
        ));
        assert_eq!(rt.mapped_headers, ["x-user"]);
        assert_eq!(rt.kept_claims, ["org.id", "org"]);
        let e = refused(&format!(
            "{HS}{UP}[[routes]]\npath = \"/a\"\nupstream = \"app\"\nheaders = {{ \"X-Auth-User\" = \"sub\", \"Cookie\" = \"sub\" }}\n"
        ));
        has(
            &e,
            "X-Auth-* headers are the gateway's own; map claims to another name",
        );
        has(&e, "`Cookie` cannot carry a claim");
    }

    #[test]
    fn route_names_are_unique() {
        let e = refused(&format!(
            "{UP}[[routes]]\nname = \"r\"\npath = \"/a\"\nupstream = \"app\"\nauth = \"none\"\n\n[[routes]]\nname = \"r\"\npath = \"/b\"\nupstream = \"app\"\nauth = \"none\"\n"
        ));
        has_line(
            &e,
            "g.toml:10:8: duplicate route name `r` (names label metrics and logs)",
        );
    }

    #[test]
    fn rate_limits_are_checked() {
        let rt = accepted(&format!(
            "{MINIMAL}rate_limits = [{{ key = \"json:user\", limit = 5, window = \"1m\" }}]\n"
        ));
        assert_eq!(rt.routes[0].limits.len(), 1);
        assert!(rt.routes[0].limits_need_body);
        let e = refused(&format!(
            "{MINIMAL}rate_limits = [{{ limit = 0, window = \"0s\", count = \"some\" }}]\n"
        ));
        has(&e, "missing `key` (\"ip\", \"header:NAME\"");
        has(&e, "limit must be between 1 and 1000000000");
        has(&e, "window must be between 1s and 366 days");
        has(
            &e,
            "unknown count `some` (expected \"all\" or \"failures\")",
        );
    }

    #[test]
    fn require_needs_an_identity() {
        let e = refused(&format!("{MINIMAL}require = {{ roles = [\"admin\"] }}\n"));
        has(
            &e,
            "require has no identity to check on an auth = \"none\" route",
        );
    }
}
