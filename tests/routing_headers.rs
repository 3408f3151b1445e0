//! Routing and what the backend receives: exact `path` beats prefixes, the longest
//! prefix wins, `host` / `methods` skip a route (next candidate or 404 `no_route`);
//! client-sent `X-Auth-*` and route-mapped headers are stripped on every route;
//! mapped claims arrive; `require` roles/scopes give 403; a dead upstream gives 502;
//! two addrs share the traffic; `X-Forwarded-For` handling; `Authorization` and the
//! request body are forwarded unchanged.

mod common;

use common::*;
use serde_json::json;

fn route(name: &str, matcher: &str, upstream: &str, auth: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\n{matcher}\nupstream = \"{upstream}\"\nauth = \"{auth}\"\n"
    )
}

#[test]
fn exact_path_beats_prefix_and_longest_prefix_wins() {
    let (short, long, exact) = (Upstream::start(), Upstream::start(), Upstream::start());
    // declared in the order a first-match router would get wrong
    let cfg = GatewayConfig::new()
        .extra(&format!(
            "
[upstreams.short]
addrs = [\"{}\"]
[upstreams.long]
addrs = [\"{}\"]
[upstreams.exact]
addrs = [\"{}\"]
{}{}{}",
            short.addr,
            long.addr,
            exact.addr,
            route("short", "path_prefix = \"/r/\"", "short", "none"),
            route("long", "path_prefix = \"/r/deep/\"", "long", "none"),
            route("exact", "path = \"/r/deep/exact\"", "exact", "none"),
        ))
        .toml();
    let gw = Gateway::start(&cfg, &[]);
    let hits = || (short.hits(), long.hits(), exact.hits());
    let ok = |path: &str| {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    };
    ok("/r/x");
    assert_eq!(hits(), (1, 0, 0));
    ok("/r/deep/x");
    assert_eq!(hits(), (1, 1, 0));
    ok("/r/deep/exact");
    assert_eq!(hits(), (1, 1, 1));
    ok("/r/deep/exact?with=query");
    assert_eq!(hits(), (1, 1, 2));
    assert_eq!(exact.last().path, "/r/deep/exact?with=query");
    ok("/r/deep/exact/more");
    assert_eq!(hits(), (1, 2, 2));
    ok("/r/deepish");
    assert_eq!(hits(), (2, 2, 2));

    let r = gw.get("/nowhere", &[]);
    assert_error(&r, 404, "not_found", "no_route");
    let r = gw.get("/", &[]);
    assert_error(&r, 404, "not_found", "no_route");
    assert_eq!(hits(), (2, 2, 2));
}

#[test]
fn host_and_methods_narrow_routes() {
    let (hosted, any, post) = (Upstream::start(), Upstream::start(), Upstream::start());
    let cfg = GatewayConfig::new()
        .extra(&format!(
            "
[upstreams.hosted]
addrs = [\"{}\"]
[upstreams.any]
addrs = [\"{}\"]
[upstreams.post]
addrs = [\"{}\"]
{}host = \"a.example\"
{}{}methods = [\"POST\", \"PUT\"]
",
            hosted.addr,
            any.addr,
            post.addr,
            route("hosted", "path_prefix = \"/h/x/\"", "hosted", "none"),
            route("any", "path_prefix = \"/h/\"", "any", "none"),
            route("post", "path_prefix = \"/m/\"", "post", "none"),
        ))
        .toml();
    let gw = Gateway::start(&cfg, &[]);
    let r = gw.get("/h/x/1", &[("Host", "a.example")]);
    assert_eq!(r.status, 200);
    assert_eq!((hosted.hits(), any.hits()), (1, 0));
    // host does not match: the longer prefix is skipped, the next candidate serves
    let r = gw.get("/h/x/1", &[("Host", "b.example")]);
    assert_eq!(r.status, 200);
    assert_eq!((hosted.hits(), any.hits()), (1, 1));

    let r = request(&gw.proxy_addr, "POST", "/m/1", &[], b"payload");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(&gw.proxy_addr, "PUT", "/m/1", &[], b"payload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(post.hits(), 2);
    for method in ["GET", "DELETE"] {
        let r = request(&gw.proxy_addr, method, "/m/1", &[], b"");
        assert_error(&r, 404, "not_found", "no_route");
    }
    assert_eq!(post.hits(), 2);
}

/// `api` (jwt, maps sub/tenant), `public` (none), both on the same upstream.
fn mapped_config() -> String {
    GatewayConfig::base()
        .more("headers = { \"X-User-Id\" = \"sub\", \"X-Tenant\" = \"tenant\" }")
        .extra(&route(
            "public",
            "path_prefix = \"/public/\"",
            "app",
            "none",
        ))
        .toml()
}

/// Identities keep only the claims a mapping reads (runtime `kept_claims`),
/// and a cached identity serves later requests: mapped values, dotted paths
/// included, must be the same on the verifying request and on cache hits.
#[test]
fn mapped_claims_reach_the_upstream_on_cache_hits_too() {
    let (gw, up) = GatewayConfig::base()
        .more("headers = { \"X-Org\" = \"org.id\", \"X-Plan\" = \"plan\" }")
        .with_upstream(&[HS_ENV]);
    let t = hs_token(&hs_claims(
        "carol",
        json!({"org": {"id": "o7", "name": "x"}, "plan": "pro", "other": "y"}),
    ));
    let auth = format!("Bearer {t}");
    for round in 0..3 {
        let r = gw.get("/api/p", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.header_all("x-org"), ["o7"], "round {round}");
        assert_eq!(seen.header_all("x-plan"), ["pro"], "round {round}");
        assert_eq!(
            seen.header_all("x-auth-subject"),
            ["carol"],
            "round {round}"
        );
    }
}

const SPOOFS: [(&str, &str); 9] = [
    ("X-Auth-Subject", "mallory"),
    ("x-auth-subject", "mallory2"),
    ("X-AUTH-ROLES", "admin"),
    ("X-Auth-Scopes", "everything"),
    ("X-Auth-Method", "session"),
    ("X-Auth-Issuer", "hs"),
    ("X-Auth-Custom", "x"),
    ("X-User-Id", "mallory"),
    ("x-tenant", "evil-corp"),
];

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let (gw, up) = Gateway::with_upstream(&mapped_config(), &[HS_ENV]);

    // auth = "none" route: everything stripped, nothing added
    let r = gw.get("/public/p", &SPOOFS);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    for (k, v) in &seen.headers {
        assert!(
            !k.starts_with("x-auth-") && k != "x-user-id" && k != "x-tenant",
            "{k}: {v} reached the upstream of an auth=none route"
        );
    }

    // jwt route: the gateway's values replace the spoofed ones, once each
    let t = hs_token(&hs_claims("alice", json!({"tenant": "t1"})));
    let auth = format!("Bearer {t}");
    let mut headers = SPOOFS.to_vec();
    headers.push(("Authorization", &auth));
    let r = gw.get("/api/p", &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header_all("x-auth-subject"), ["alice"]);
    assert_eq!(seen.header_all("x-auth-method"), ["jwt"]);
    assert_eq!(seen.header_all("x-auth-issuer"), ["hs"]);
    assert_eq!(seen.header_all("x-user-id"), ["alice"]);
    assert_eq!(seen.header_all("x-tenant"), ["t1"]);
    // the token has no roles / scopes: absent (or empty), never the spoofed values
    for name in ["x-auth-roles", "x-auth-scopes"] {
        let values = seen.header_all(name);
        assert!(values.iter().all(|v| v.is_empty()), "{name}: {values:?}");
    }
    assert!(seen.header_all("x-auth-custom").is_empty());

    // a mapped claim the token lacks: no header at all, the spoof is still removed
    let t = hs_token(&hs_claims("bob", json!({})));
    let auth = format!("Bearer {t}");
    let r = gw.get(
        "/api/q",
        &[("Authorization", &auth), ("X-Tenant", "evil-corp")],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header_all("x-user-id"), ["bob"]);
    assert!(seen.header_all("x-tenant").is_empty(), "{:?}", seen.headers);
}

#[test]
fn required_roles_and_scopes() {
    let cfg = GatewayConfig::base()
        .extra(&route("ops", "path_prefix = \"/ops/\"", "app", "jwt"))
        .more("require = { roles = [\"admin\"] }")
        .extra(&route("orders", "path_prefix = \"/orders/\"", "app", "jwt"))
        .more("require = { scopes = [\"orders:read\"] }")
        .extra(&route("both", "path_prefix = \"/both/\"", "app", "jwt"))
        .more("require = { roles = [\"admin\", \"ops\"], scopes = [\"a\", \"b\"] }")
        .toml();
    let (gw, up) = Gateway::with_upstream(&cfg, &[HS_ENV]);
    let forbidden = |path: &str, extra: serde_json::Value, reason: &str| {
        let t = hs_token(&hs_claims("alice", extra.clone()));
        let r = gw.get_bearer(path, &t);
        assert_error(&r, 403, "forbidden", reason);
        let www = r.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with("Bearer") && www.contains("insufficient_scope"),
            "{path} {extra}: WWW-Authenticate {www:?}"
        );
        assert_no_token(&r, &t);
    };
    let allowed = |path: &str, extra: serde_json::Value| {
        let t = hs_token(&hs_claims("alice", extra.clone()));
        let r = gw.get_bearer(path, &t);
        assert_eq!(r.status, 200, "{path} {extra}: {}", r.text());
    };

    forbidden("/ops/x", json!({}), "insufficient_role");
    forbidden("/ops/x", json!({"roles": ["user"]}), "insufficient_role");
    forbidden(
        "/ops/x",
        json!({"role": "administrator"}),
        "insufficient_role",
    );
    forbidden("/ops/x", json!({"scope": "admin"}), "insufficient_role");
    allowed("/ops/x", json!({"roles": ["user", "admin"]}));
    allowed("/ops/x", json!({"role": "admin"}));

    forbidden(
        "/orders/x",
        json!({"scope": "orders:write"}),
        "insufficient_scope",
    );
    forbidden(
        "/orders/x",
        json!({"roles": ["orders:read"]}),
        "insufficient_scope",
    );
    allowed("/orders/x", json!({"scope": "a orders:read"}));
    allowed("/orders/x", json!({"scp": ["orders:read"]}));

    // all listed must be present
    forbidden(
        "/both/x",
        json!({"roles": ["admin"], "scope": "a b"}),
        "insufficient_role",
    );
    forbidden(
        "/both/x",
        json!({"roles": ["admin", "ops"], "scope": "a"}),
        "insufficient_scope",
    );
    allowed(
        "/both/x",
        json!({"roles": ["ops", "admin"], "scope": "b a"}),
    );
    assert_eq!(up.hits(), 5);

    // no token on a require route is still 401, not 403
    let r = gw.get("/ops/x", &[]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
}

#[test]
fn dead_upstream_is_502() {
    let cfg = GatewayConfig::base()
        .extra(&route("open", "path_prefix = \"/open/\"", "app", "none"))
        .toml()
        .replace("{upstream}", &dead_addr());
    let gw = Gateway::start(&cfg, &[HS_ENV]);
    let r = gw.get("/open/x", &[]);
    assert_error(&r, 502, "bad_gateway", "upstream_error");
    let t = hs_token(&hs_claims("alice", json!({})));
    let r = gw.get_bearer("/api/x", &t);
    assert_error(&r, 502, "bad_gateway", "upstream_error");
    assert_no_token(&r, &t);
}

#[test]
fn two_addrs_share_the_traffic() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let cfg = GatewayConfig::new()
        .extra(&format!(
            "\n[upstreams.pair]\naddrs = [\"{}\", \"{}\"]\n{}",
            a.addr,
            b.addr,
            route("open", "path_prefix = \"/\"", "pair", "none")
        ))
        .toml();
    let gw = Gateway::start(&cfg, &[]);
    for i in 0..10 {
        let r = gw.get(&format!("/n/{i}"), &[]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.hits() + b.hits(), 10);
    assert!(
        a.hits() >= 2 && b.hits() >= 2,
        "round-robin split {} / {}",
        a.hits(),
        b.hits()
    );
}

#[test]
fn forwarded_headers_authorization_and_body() {
    let cfg = GatewayConfig::base()
        .extra(&route("open", "path_prefix = \"/open/\"", "app", "none"))
        .toml();
    let (gw, up) = Gateway::with_upstream(&cfg, &[HS_ENV]);

    // untrusted peer (trusted_proxies defaults to empty): XFF replaced
    let r = gw.get("/open/x", &[("X-Forwarded-For", "1.2.3.4")]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-for"), ["127.0.0.1"]);
    let r = gw.get("/open/x", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-for"), ["127.0.0.1"]);
    // the same on the general path (a request with a body)
    let r = request(
        &gw.proxy_addr,
        "POST",
        "/open/x",
        &[("X-Forwarded-For", "1.2.3.4")],
        b"x",
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        up.last().header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    // an untrusted peer cannot claim https either
    let r = gw.get("/open/x", &[("X-Forwarded-Proto", "https")]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header_all("x-forwarded-proto"), ["http"]);

    // Authorization forwarded byte for byte
    let t = hs_token(&hs_claims("alice", json!({})));
    let auth = format!("Bearer {t}");
    let r = gw.get("/api/x", &[("Authorization", &auth), ("Cookie", "a=b")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header_all("authorization"),
        std::slice::from_ref(&auth)
    );
    assert_eq!(up.last().header_all("cookie"), ["a=b"]);

    // method, path and query, body
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let r = request(
        &gw.proxy_addr,
        "POST",
        "/api/upload?x=1&y=%20",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/octet-stream"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/upload?x=1&y=%20");
    assert_eq!(echo["body_len"], body.len());
    assert_eq!(echo["body_sha256"], sha256_hex(&body));
}

#[test]
fn trusted_proxy_appends_peer() {
    let cfg = GatewayConfig::base()
        .trusted_proxies(&["127.0.0.1/32"])
        .extra(&route("open", "path_prefix = \"/open/\"", "app", "none"))
        .toml();
    let (gw, up) = Gateway::with_upstream(&cfg, &[HS_ENV]);
    let r = gw.get("/open/x", &[("X-Forwarded-For", "1.2.3.4")]);
    assert_eq!(r.status, 200);
    let xff = up.last().header_all("x-forwarded-for").join(",");
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(hops, ["1.2.3.4", "127.0.0.1"]);
    // the same on the general path (a request with a body)
    let r = request(
        &gw.proxy_addr,
        "POST",
        "/open/x",
        &[("X-Forwarded-For", "1.2.3.4")],
        b"x",
    );
    assert_eq!(r.status, 200);
    let xff = up.last().header_all("x-forwarded-for").join(",");
    let hops: Vec<&str> = xff.split(',').map(str::trim).collect();
    assert_eq!(hops, ["1.2.3.4", "127.0.0.1"], "general path");
    // a trusted proxy's scheme is kept when it says https; anything else is http
    for (sent, seen) in [("https", "https"), ("HTTPS", "https"), ("gopher", "http")] {
        let r = gw.get("/open/x", &[("X-Forwarded-Proto", sent)]);
        assert_eq!(r.status, 200);
        assert_eq!(up.last().header_all("x-forwarded-proto"), [seen], "{sent}");
    }
}
