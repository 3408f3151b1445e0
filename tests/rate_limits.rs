//! Rate limits against the real binary: `[[routes.rate_limits]]` keyed on the
//! client IP, a header, a form field or a JSON field; `count = "failures"`;
//! several limits on one route; bodies forwarded intact; X-Forwarded-For
//! handling; two instances sharing one real `redis-server`; store outages
//! under `on_error = "deny"` / `"allow"`; the memory store.
//!
//! The limiter is GCRA: `limit` L per `window` W allows L requests at once,
//! then one more every W/L. Tests that read `RateLimit` values use long
//! windows (1h), so that nothing refills while a test runs, except where the
//! brief's numbers (5 per minute) are the point.

mod common;

use common::login::{chunked, one_chunk, send_raw};
use common::*;
use rand::RngCore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("Content-Type", "application/json");

// ---------------------------------------------------------------------------
// config builders

/// One `[[routes.rate_limits]]` table.
fn limit(key: &str, limit: u64, window: &str, count: &str) -> String {
    format!(
        "\n[[routes.rate_limits]]\nkey = \"{key}\"\nlimit = {limit}\nwindow = \"{window}\"\ncount = \"{count}\"\n"
    )
}

/// One `auth = "none"` route on `app` with an exact `path` and its limits.
fn route(name: &str, path: &str, limits: &[String]) -> String {
    let mut s = format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"app\"\nauth = \"none\"\n"
    );
    for l in limits {
        s.push_str(l);
    }
    s
}

/// `[store]` for a Redis at `url`.
fn redis_store(url: &str, on_error: &str) -> String {
    format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\non_error = \"{on_error}\"\n")
}

/// A whole config: `store` is a `[store]` table or "" (memory), `trusted` the
/// inside of `trusted_proxies = [...]`. `{upstream}` is left for the harness.
fn config(store: &str, trusted: &str, routes: &[String]) -> String {
    let mut c = GatewayConfig::new()
        .server(&format!("trusted_proxies = [{trusted}]"))
        .extra(store)
        .upstream("app", &["{upstream}"]);
    for r in routes {
        c = c.extra(r);
    }
    c.toml()
}

/// The gateway in front of a login upstream (401 on `password=wrong`).
fn start(cfg: &str) -> (Gateway, Upstream) {
    start_on(cfg, Upstream::login())
}

/// The gateway in front of `up`.
fn start_on(cfg: &str, up: Upstream) -> (Gateway, Upstream) {
    let gw = Gateway::start(&cfg.replace("{upstream}", &up.addr), &[]);
    (gw, up)
}

/// One route, `login` on `/login`, limited by `key` with `count = "failures"`.
fn failures_route(key: &str, n: u64) -> String {
    config(
        "",
        "",
        &[route("login", "/login", &[limit(key, n, "1h", "failures")])],
    )
}

// ---------------------------------------------------------------------------
// requests and header readers

fn post_form(gw: &Gateway, path: &str, body: &str) -> Response {
    request(&gw.proxy_addr, "POST", path, &[FORM], body.as_bytes())
}

fn post_form_h(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut h = vec![FORM];
    h.extend_from_slice(headers);
    request(&gw.proxy_addr, "POST", path, &h, body.as_bytes())
}

fn post_json(gw: &Gateway, path: &str, body: &Value) -> Response {
    request(
        &gw.proxy_addr,
        "POST",
        path,
        &[JSON],
        body.to_string().as_bytes(),
    )
}

fn post_raw(gw: &Gateway, path: &str, body: &[u8]) -> Response {
    request(&gw.proxy_addr, "POST", path, &[FORM], body)
}

/// `POST path` with `Transfer-Encoding: chunked`: the head, then each of `parts`
/// as its own write (`pause` between writes). `parts` must hold the chunk framing.
fn post_chunked(gw: &Gateway, path: &str, parts: &[Vec<u8>], pause: Duration) -> Response {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gw.proxy_addr
    );
    let mut all: Vec<&[u8]> = vec![head.as_bytes()];
    all.extend(parts.iter().map(Vec::as_slice));
    send_raw(&gw.proxy_addr, &all, pause)
        .unwrap_or_else(|e| panic!("chunked POST {path} to {}: {e}", gw.proxy_addr))
}

/// A parsed `RateLimit` entry: (policy name, r, t).
#[derive(Debug, PartialEq)]
struct State {
    name: String,
    r: u64,
    t: u64,
}

/// Parses `"name";r=R;t=T, ...`.
fn rate_state(r: &Response) -> Vec<State> {
    let h = r
        .header("RateLimit")
        .unwrap_or_else(|| panic!("no RateLimit header on {} {}", r.status, r.text()));
    h.split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim().trim_matches('"').to_string();
            let mut st = State {
                name,
                r: u64::MAX,
                t: u64::MAX,
            };
            for p in parts {
                match p.split_once('=') {
                    Some(("r", v)) => st.r = v.parse().unwrap(),
                    Some(("t", v)) => st.t = v.parse().unwrap(),
                    _ => panic!("unexpected RateLimit parameter {p:?} in {h:?}"),
                }
            }
            assert!(st.r != u64::MAX && st.t != u64::MAX, "RateLimit {h:?}");
            st
        })
        .collect()
}

/// `r` of the only `RateLimit` entry.
fn remaining(r: &Response) -> u64 {
    let s = rate_state(r);
    assert_eq!(s.len(), 1, "one limit expected: {s:?}");
    s[0].r
}

/// A 429 with the contract's body, a whole-seconds `Retry-After` > 0, and both
/// RateLimit headers; returns Retry-After.
#[track_caller]
fn assert_429(r: &Response) -> u64 {
    assert_error(r, 429, "rate_limited", "rate_limited");
    let retry: u64 = r
        .header("Retry-After")
        .expect("429 without Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry > 0, "Retry-After {retry}");
    assert!(
        r.header("RateLimit-Policy").is_some(),
        "no RateLimit-Policy"
    );
    for s in rate_state(r) {
        assert_eq!(s.r, 0, "a 429's RateLimit has r=0: {s:?}");
    }
    retry
}

#[track_caller]
fn assert_status(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {}", r.status, r.text());
}

fn counter(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics(), name, labels).unwrap_or(0.0)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    b
}

/// The upstream's echo (`body_sha256`, `body_len`) matches `sent`.
#[track_caller]
fn assert_intact(r: &Response, sent: &[u8], what: &str) {
    assert_status(r, 200, what);
    let echo = r.json();
    assert_eq!(
        echo["body_len"].as_u64(),
        Some(sent.len() as u64),
        "{what}: body length at the upstream"
    );
    assert_eq!(
        echo["body_sha256"].as_str(),
        Some(sha256_hex(sent).as_str()),
        "{what}: body SHA-256 at the upstream"
    );
}

// ---------------------------------------------------------------------------
// 5 per minute by IP: statuses, headers, body, metrics, upstream hits

fn five_per_minute_by_ip(store: &str) {
    let cfg = config(
        store,
        "",
        &[route("login", "/login", &[limit("ip", 5, "1m", "all")])],
    );
    let (gw, up) = start(&cfg);
    for k in 1..=5u64 {
        let r = post_form(&gw, "/login", "username=alice&password=pw");
        assert_status(&r, 200, &format!("request {k}"));
        assert_eq!(
            r.header("RateLimit-Policy"),
            Some(r#""ip";q=5;w=60"#),
            "request {k}"
        );
        let s = rate_state(&r);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "ip");
        assert_eq!(s[0].r, 5 - k, "remaining after request {k}");
        // The budget is full again k * 12 s after the first request (less what passed).
        assert!(
            s[0].t > (k - 1) * 12 && s[0].t <= k * 12,
            "request {k}: t={} not in ({}, {}]",
            s[0].t,
            (k - 1) * 12,
            k * 12
        );
    }
    assert_eq!(up.hits(), 5);

    let r = post_form(&gw, "/login", "username=alice&password=pw");
    let retry = assert_429(&r);
    assert!(
        retry <= 12,
        "Retry-After {retry} > 12 (one more every 12 s)"
    );
    assert_eq!(r.header("RateLimit-Policy"), Some(r#""ip";q=5;w=60"#));
    assert_eq!(
        r.header("RateLimit"),
        Some(format!(r#""ip";r=0;t={retry}"#).as_str())
    );
    assert_eq!(up.hits(), 5, "the 6th request reached the upstream");

    // A GET without a body is limited the same way (the key is the IP).
    assert_429(&gw.get("/login", &[]));
    assert_eq!(up.hits(), 5);

    assert_eq!(
        counter(&gw, "authgate_rate_limited_total", &[("route", "login")]),
        2.0
    );
    // Requests are counted in the logging phase, after the answer: poll.
    let counted = poll_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        let denied = metric(
            &m,
            "authgate_requests_total",
            &[("route", "login"), ("reason", "rate_limited")],
        )?;
        let denied_outcome = metric(
            &m,
            "authgate_requests_total",
            &[
                ("route", "login"),
                ("outcome", "denied"),
                ("reason", "rate_limited"),
            ],
        )?;
        (denied == 2.0 && denied_outcome == 2.0).then_some(())
    });
    assert!(
        counted.is_some(),
        "authgate_requests_total{{route=\"login\",outcome=\"denied\",reason=\"rate_limited\"}} != 2:\n{}",
        gw.metrics()
    );
    let lines = wait_request_logs(&gw, 7);
    let limited = lines
        .iter()
        .filter(|l| field_str(l, "reason").as_deref() == Some("rate_limited"))
        .filter(|l| field_str(l, "status").as_deref() == Some("429"))
        .count();
    assert_eq!(limited, 2, "request log lines: {lines:?}");
}

#[test]
fn memory_store_5_per_minute_by_ip_then_429_with_headers() {
    five_per_minute_by_ip("");
}

#[test]
fn redis_store_5_per_minute_by_ip_then_429_with_headers() {
    let redis = RedisServer::start();
    five_per_minute_by_ip(&redis_store(&redis.url(), "deny"));
    // The budget lives in Redis, under the documented prefix.
    let keys = redis.cmd(&["KEYS", "authgate:rl:*"]);
    assert_eq!(
        keys.lines().count(),
        1,
        "rate-limit keys in Redis: {keys:?}"
    );
    let ttl: i64 = redis.cmd(&["PTTL", keys.trim()]).parse().unwrap();
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the key expires by itself: PTTL {ttl}"
    );
}

// ---------------------------------------------------------------------------
// keys: form / json / header, normalization, fallback to the IP

#[test]
fn username_budgets_are_independent_and_case_insensitive() {
    let cfg = config(
        "",
        "",
        &[
            route("login", "/login", &[limit("form:username", 3, "1h", "all")]),
            route(
                "api-login",
                "/api/login",
                &[limit("json:user", 3, "1h", "all")],
            ),
        ],
    );
    let (gw, up) = start(&cfg);

    // form:username
    for k in 0..3 {
        let r = post_form(&gw, "/login", "username=alice&password=wrong");
        assert_status(&r, 401, &format!("alice #{k} reaches the upstream"));
        assert_eq!(
            r.header("RateLimit-Policy"),
            Some(r#""form:username";q=3;w=3600"#)
        );
        assert_eq!(remaining(&r), 2 - k);
    }
    assert_429(&post_form(&gw, "/login", "username=alice&password=pw"));
    // bob has his own budget, whatever alice did.
    for k in 0..3 {
        let r = post_form(&gw, "/login", "password=pw&username=bob");
        assert_status(&r, 200, &format!("bob #{k}"));
        assert_eq!(remaining(&r), 2 - k);
    }
    assert_429(&post_form(&gw, "/login", "username=bob"));
    // Case and surrounding white space don't make a new budget.
    for variant in [
        "username=Alice&password=pw",
        "username=ALICE",
        "username=%20alice%20&password=pw",
        "username=+aLiCe+",
        "password=pw&username=alice%09",
    ] {
        assert_429(&post_form(&gw, "/login", variant));
    }
    // ... but a different name does.
    assert_status(
        &post_form(&gw, "/login", "username=alice2&password=pw"),
        200,
        "alice2",
    );
    assert_eq!(up.hits(), 7);

    // json:user, a separate route: its budgets are its own.
    for k in 0..3 {
        let r = post_json(
            &gw,
            "/api/login",
            &json!({"user": "alice", "password": "pw"}),
        );
        assert_status(&r, 200, &format!("json alice #{k}"));
        assert_eq!(
            r.header("RateLimit-Policy"),
            Some(r#""json:user";q=3;w=3600"#)
        );
        assert_eq!(remaining(&r), 2 - k);
    }
    for v in [
        json!({"user": "alice"}),
        json!({"user": " Alice "}),
        json!({"password": "x", "user": "ALICE"}),
    ] {
        assert_429(&post_json(&gw, "/api/login", &v));
    }
    let r = post_json(&gw, "/api/login", &json!({"user": "bob", "password": "pw"}));
    assert_status(&r, 200, "json bob");
    assert_eq!(remaining(&r), 2);
    assert_eq!(up.hits(), 11);
    assert_eq!(
        counter(&gw, "authgate_rate_limited_total", &[("route", "login")]),
        7.0
    );
    assert_eq!(
        counter(
            &gw,
            "authgate_rate_limited_total",
            &[("route", "api-login")]
        ),
        3.0
    );
}

#[test]
fn header_key_is_trimmed_and_lower_cased() {
    let cfg = config(
        "",
        "",
        &[route(
            "keyed",
            "/keyed",
            &[limit("header:X-Api-Key", 2, "1h", "all")],
        )],
    );
    let (gw, _up) = start(&cfg);
    assert_status(&gw.get("/keyed", &[("X-Api-Key", "KeyA")]), 200, "KeyA 1");
    let r = gw.get("/keyed", &[("X-Api-Key", "keya")]);
    assert_status(&r, 200, "keya 2");
    assert_eq!(
        r.header("RateLimit-Policy"),
        Some(r#""header:x-api-key";q=2;w=3600"#)
    );
    assert_429(&gw.get("/keyed", &[("x-api-key", "  KEYA ")]));
    assert_status(&gw.get("/keyed", &[("X-Api-Key", "keyb")]), 200, "keyb");
    // No header: the IP's budget, separate from the keys'.
    assert_status(&gw.get("/keyed", &[]), 200, "no key 1");
    assert_status(&gw.get("/keyed", &[]), 200, "no key 2");
    assert_429(&gw.get("/keyed", &[]));
    assert_429(&gw.get("/keyed", &[("X-Api-Key", "")]));
    assert_status(&gw.get("/keyed", &[("X-Api-Key", "keyb")]), 200, "keyb 2");
}

#[test]
fn a_body_without_the_field_is_limited_by_ip() {
    let cfg = config(
        "",
        "",
        &[
            route("login", "/login", &[limit("form:username", 2, "1h", "all")]),
            route(
                "api-login",
                "/api/login",
                &[limit("json:user", 2, "1h", "all")],
            ),
        ],
    );
    let (gw, up) = start(&cfg);

    assert_status(&post_form(&gw, "/login", "password=x"), 200, "no field 1");
    assert_status(
        &post_form(&gw, "/login", "other=1&password=x"),
        200,
        "no field 2",
    );
    // The IP's budget is used up: any request without the field is refused...
    assert_429(&post_form(&gw, "/login", "password=y"));
    assert_429(&post_form(&gw, "/login", "username=&password=y"));
    assert_429(&post_form(&gw, "/login", "username=%20%20"));
    assert_429(&post_form(&gw, "/login", ""));
    assert_429(&gw.get("/login", &[]));
    // ... never let through unlimited; a request with the field has its own budget.
    assert_status(&post_form(&gw, "/login", "username=alice"), 200, "alice");
    assert_eq!(up.hits(), 3);

    assert_status(
        &post_json(&gw, "/api/login", &json!({"other": 1})),
        200,
        "json 1",
    );
    assert_status(&post_json(&gw, "/api/login", &json!([1, 2])), 200, "json 2");
    for body in [
        json!({"other": 1}),
        json!({"user": ""}),
        json!({"user": "   "}),
        json!({"user": null}),
        json!({"user": ["alice"]}),
        json!("alice"),
    ] {
        assert_429(&post_json(&gw, "/api/login", &body));
    }
    assert_429(&post_raw(&gw, "/api/login", b"not json {\"user\":\"x\"}"));
    assert_429(&gw.get("/api/login", &[]));
    let r = post_json(&gw, "/api/login", &json!({"user": "carol"}));
    assert_status(&r, 200, "carol");
    assert_eq!(remaining(&r), 1);
    // A number is a value too.
    assert_status(
        &post_json(&gw, "/api/login", &json!({"user": 42})),
        200,
        "42",
    );
    assert_eq!(up.hits(), 7);
}

// ---------------------------------------------------------------------------
// count = "failures"

fn failures_only(store: &str) {
    let cfg = config(
        store,
        "",
        &[route(
            "login",
            "/login",
            &[limit("form:username", 3, "1h", "failures")],
        )],
    );
    let (gw, up) = start(&cfg);

    // Successful logins never consume the budget.
    for k in 0..10 {
        let r = post_form(&gw, "/login", "username=alice&password=right");
        assert_status(&r, 200, &format!("success #{k}"));
        assert_eq!(
            remaining(&r),
            3,
            "success #{k} consumed the failures budget"
        );
    }
    // Three failures (the upstream's 401s pass through to the client).
    for k in 0..3 {
        let r = post_form(&gw, "/login", "username=alice&password=wrong");
        assert_status(&r, 401, &format!("failure #{k}"));
    }
    assert_eq!(up.hits(), 13);
    // The 4th attempt is refused before the upstream, even with the right password.
    let retry = assert_429(&post_form(&gw, "/login", "username=alice&password=right"));
    assert!(
        retry <= 1200,
        "Retry-After {retry} > one emission interval (20 min)"
    );
    assert_429(&post_form(&gw, "/login", "username=Alice&password=wrong"));
    assert_eq!(up.hits(), 13, "a refused attempt reached the upstream");

    // Another user is unaffected; 403 counts like 401.
    assert_status(
        &post_form(&gw, "/login", "username=bob&password=wrong"),
        401,
        "bob failure",
    );
    assert_status(
        &post_form(&gw, "/login", "username=bob&status=403"),
        403,
        "bob 403",
    );
    assert_status(
        &post_form(&gw, "/login", "username=bob&password=right"),
        200,
        "bob success",
    );
    assert_status(
        &post_form(&gw, "/login", "username=bob&status=403"),
        403,
        "bob 403",
    );
    assert_429(&post_form(&gw, "/login", "username=bob&password=right"));

    // Other statuses are not failures: 5 x 500 and 404, then still 3 failures allowed.
    for k in 0..5 {
        assert_status(
            &post_form(&gw, "/login", "username=carol&status=500"),
            500,
            &format!("carol 500 #{k}"),
        );
        assert_status(
            &post_form(&gw, "/login", "username=carol&status=404"),
            404,
            &format!("carol 404 #{k}"),
        );
    }
    for k in 0..3 {
        assert_status(
            &post_form(&gw, "/login", "username=carol&password=wrong"),
            401,
            &format!("carol failure #{k}"),
        );
    }
    let before = up.hits();
    assert_429(&post_form(&gw, "/login", "username=carol&password=right"));
    assert_eq!(up.hits(), before);
    assert_eq!(
        counter(&gw, "authgate_rate_limited_total", &[("route", "login")]),
        4.0
    );
}

/// `count = "failures"` on bodyless GETs, which the direct path serves:
/// an answered attempt is refunded (and its `RateLimit` says so), a 401
/// is charged, and the budget spent refuses the next one.
#[test]
fn failures_are_counted_on_the_direct_path_too() {
    fn by_path(req: &RecordedRequest) -> u16 {
        if req.path.contains("wrong") {
            401
        } else {
            200
        }
    }
    let (gw, up) = start_on(
        &failures_route("ip", 2),
        Upstream::start_with_status(by_path),
    );
    for k in 0..5 {
        let r = gw.get("/login?ok", &[]);
        assert_status(&r, 200, &format!("success #{k}"));
        assert_eq!(remaining(&r), 2, "success #{k} consumed the budget");
    }
    for k in 0..2 {
        assert_status(&gw.get("/login?wrong", &[]), 401, &format!("failure #{k}"));
    }
    assert_429(&gw.get("/login?ok", &[]));
    assert_eq!(up.hits(), 7);
    assert_eq!(
        counter(&gw, "authgate_proxy_path_total", &[("path", "direct")]),
        8.0
    );
}

#[test]
fn memory_store_failures_count_only_upstream_401_and_403() {
    failures_only("");
}

#[test]
fn redis_store_failures_count_only_upstream_401_and_403() {
    let redis = RedisServer::start();
    failures_only(&redis_store(&redis.url(), "deny"));
}

// ---------------------------------------------------------------------------
// bodies reach the upstream intact

#[test]
fn bodies_on_a_form_keyed_route_arrive_intact_and_are_keyed() {
    let cfg = config(
        "",
        "",
        &[route(
            "upload",
            "/upload",
            &[limit("form:username", 100, "1h", "all")],
        )],
    );
    let (gw, up) = start(&cfg);
    // docs/config.md: a body-keyed route reads the whole body, up to 64 KiB
    const MIB: usize = 64 * 1024;
    let form_upload = |user: &str| {
        use base64::Engine;
        let mut body = format!("username={user}&data=").into_bytes();
        let data = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(MIB));
        body.extend_from_slice(&data.as_bytes()[..MIB - body.len()]);
        assert_eq!(body.len(), MIB);
        body
    };

    // A small form, keyed on alice, byte for byte at the upstream.
    let small = b"username=alice&password=p%26ss+word&note=caf%C3%A9".to_vec();
    let r = post_raw(&gw, "/upload", &small);
    assert_intact(&r, &small, "small form");
    assert_eq!(remaining(&r), 99, "small form: alice's first request");
    assert_eq!(up.last().body, small);
    assert_eq!(
        up.last().header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // 64 KiB with Content-Length.
    let body = form_upload("alice");
    let r = post_raw(&gw, "/upload", &body);
    assert_intact(&r, &body, "64 KiB, Content-Length");
    assert_eq!(
        remaining(&r),
        98,
        "64 KiB Content-Length upload counted on alice"
    );

    // 64 KiB chunked: 16 KiB chunks, 1000-byte chunks, one 64 KiB chunk.
    let mut expect = 97;
    for chunk in [16 * 1024, 1000, MIB] {
        let body = form_upload("alice");
        let r = post_chunked(&gw, "/upload", &[chunked(&body, chunk)], Duration::ZERO);
        let what = format!("64 KiB chunked in {chunk}-byte chunks");
        assert_intact(&r, &body, &what);
        assert_eq!(remaining(&r), expect, "{what}: counted on alice");
        expect -= 1;
    }

    // Another user's upload is on another budget.
    let body = form_upload("bob");
    let r = post_chunked(&gw, "/upload", &[chunked(&body, 16 * 1024)], Duration::ZERO);
    assert_intact(&r, &body, "bob, chunked");
    assert_eq!(remaining(&r), 99, "bob's upload counted on bob");

    // Random bytes (no form field: the IP's budget), both framings.
    let raw = random_bytes(MIB);
    let r = post_raw(&gw, "/upload", &raw);
    assert_intact(&r, &raw, "64 KiB random bytes, Content-Length");
    assert_eq!(remaining(&r), 99, "random bytes: the IP's first request");
    let raw = random_bytes(MIB);
    let r = post_chunked(&gw, "/upload", &[chunked(&raw, 32 * 1024)], Duration::ZERO);
    assert_intact(&r, &raw, "64 KiB random bytes, chunked");
    assert_eq!(remaining(&r), 98, "random bytes: the IP's second request");

    // A body sent slowly, in pieces, still arrives whole.
    let body = b"username=dave&password=pw&x=1".to_vec();
    let parts: Vec<Vec<u8>> = vec![
        one_chunk(&body[..9]),
        one_chunk(&body[9..]),
        b"0\r\n\r\n".to_vec(),
    ];
    let r = post_chunked(&gw, "/upload", &parts, Duration::from_millis(100));
    assert_intact(&r, &body, "slow chunked form");
    assert_eq!(up.hits(), 9);

    // One byte more: the key could hide past what is read (docs/security.md
    // F2), so 413, with either framing, and nothing reaches the upstream.
    let mut body = form_upload("alice");
    body.push(b'x');
    assert_status(
        &post_raw(&gw, "/upload", &body),
        413,
        "64 KiB + 1, Content-Length",
    );
    for chunk in [16 * 1024, MIB + 1] {
        let r = post_chunked(&gw, "/upload", &[chunked(&body, chunk)], Duration::ZERO);
        assert_status(
            &r,
            413,
            &format!("64 KiB + 1 chunked in {chunk}-byte chunks"),
        );
    }
    assert_eq!(up.hits(), 9);
}

/// Chunked uploads of any shape arrive whole: a small first chunk (no key
/// field in it), then a large one, sent after a pause so that the gateway sees
/// them in separate reads.
#[test]
fn chunked_uploads_with_a_small_first_chunk_then_a_large_one_arrive_intact() {
    let cfg = config(
        "",
        "",
        &[route(
            "upload",
            "/upload",
            &[limit("form:username", 100, "1h", "all")],
        )],
    );
    let (gw, up) = start(&cfg);
    for (first, second) in [
        (100, 30 * 1024),
        (100, 64 * 1024 - 100),
        (5000, 50 * 1024),
        (9000, 64 * 1024 - 9000),
    ] {
        for with_field in [false, true] {
            let mut body = if with_field {
                b"username=alice&data=".to_vec()
            } else {
                Vec::new()
            };
            body.extend(
                random_bytes(first + second - body.len())
                    .iter()
                    .map(|b| b'a' + b % 26),
            );
            let parts = vec![
                one_chunk(&body[..first]),
                [one_chunk(&body[first..]), b"0\r\n\r\n".to_vec()].concat(),
            ];
            let r = post_chunked(&gw, "/upload", &parts, Duration::from_millis(200));
            assert_intact(
                &r,
                &body,
                &format!("chunked {first} B then {second} B (username field: {with_field})"),
            );
        }
    }
    assert_eq!(up.hits(), 8);
}

// ---------------------------------------------------------------------------
// X-Forwarded-For and the ip key

#[test]
fn spoofed_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    let cfg = config(
        "",
        "",
        &[route("login", "/login", &[limit("ip", 3, "1h", "all")])],
    );
    let (gw, up) = start(&cfg);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let xff = format!("198.51.100.{i}");
        let r = post_form_h(&gw, "/login", &[("X-Forwarded-For", &xff)], "username=a");
        statuses.push(r.status);
        if r.status == 429 {
            assert_429(&r);
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // The upstream saw the peer, not the spoofed value.
    for rec in up.requests() {
        assert_eq!(rec.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    }
    assert_429(&post_form_h(
        &gw,
        "/login",
        &[("X-Forwarded-For", "203.0.113.9, 10.0.0.1")],
        "username=a",
    ));
    assert_429(&post_form(&gw, "/login", "username=a"));
    assert_eq!(up.hits(), 3);
}

#[test]
fn behind_a_trusted_proxy_the_right_most_untrusted_x_forwarded_for_entry_is_the_key() {
    let cfg = config(
        "",
        "\"127.0.0.1/32\"",
        &[route("login", "/login", &[limit("ip", 2, "1h", "all")])],
    );
    let (gw, up) = start(&cfg);
    let with_xff = |xff: &str| post_form_h(&gw, "/login", &[("X-Forwarded-For", xff)], "u=1");

    assert_status(&with_xff("203.0.113.1"), 200, "client 1, #1");
    assert_status(&with_xff("203.0.113.1"), 200, "client 1, #2");
    assert_429(&with_xff("203.0.113.1"));
    // A different client behind the proxy has its own budget.
    assert_status(&with_xff("203.0.113.2"), 200, "client 2");
    // The client can't escape by prepending entries: the right-most untrusted one counts.
    assert_429(&with_xff("198.51.100.7, 203.0.113.1"));
    assert_429(&with_xff("10.9.9.9,203.0.113.1"));
    // Trusted hops are skipped from the right.
    assert_429(&with_xff("203.0.113.1, 127.0.0.1"));
    // A chain whose last untrusted hop is new: a new budget.
    assert_status(&with_xff("203.0.113.1, 203.0.113.3"), 200, "client 3");
    // Without X-Forwarded-For: the proxy itself.
    assert_status(&post_form(&gw, "/login", "u=1"), 200, "no XFF");
    // The upstream gets the chain with the peer appended.
    assert_eq!(
        up.last().header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_status(&with_xff("203.0.113.2"), 200, "client 2, #2");
    assert_eq!(
        up.last().header("x-forwarded-for").as_deref(),
        Some("203.0.113.2, 127.0.0.1")
    );
    assert_429(&with_xff("203.0.113.2"));
    assert_eq!(up.hits(), 6);
}

// ---------------------------------------------------------------------------
// several limits on one route

#[test]
fn every_limit_of_a_route_must_pass_and_a_refusal_consumes_none() {
    let cfg = config(
        "",
        "",
        &[route(
            "login",
            "/login",
            &[
                limit("ip", 4, "1h", "all"),
                limit("form:username", 2, "1h", "all"),
            ],
        )],
    );
    let (gw, up) = start(&cfg);
    let policy = r#""ip";q=4;w=3600, "form:username";q=2;w=3600"#;

    let r = post_form(&gw, "/login", "username=alice");
    assert_status(&r, 200, "alice 1");
    assert_eq!(r.header("RateLimit-Policy"), Some(policy));
    let s = rate_state(&r);
    assert_eq!(
        s.iter().map(|s| (s.name.as_str(), s.r)).collect::<Vec<_>>(),
        [("ip", 3), ("form:username", 1)]
    );
    assert_status(&post_form(&gw, "/login", "username=alice"), 200, "alice 2");
    // alice's own limit refuses; the IP's budget is not consumed by that.
    let r = post_form(&gw, "/login", "username=alice");
    let retry = assert_429(&r);
    assert!(
        retry > 12 * 60,
        "the username limit decides: Retry-After {retry}"
    );
    assert_eq!(r.header("RateLimit-Policy"), Some(policy));
    assert_429(&post_form(&gw, "/login", "username=ALICE"));
    let r = post_form(&gw, "/login", "username=bob");
    assert_status(&r, 200, "bob 1");
    let s = rate_state(&r);
    assert_eq!(
        s.iter().map(|s| (s.name.as_str(), s.r)).collect::<Vec<_>>(),
        [("ip", 1), ("form:username", 1)],
        "the refused requests consumed the IP budget"
    );
    assert_status(&post_form(&gw, "/login", "username=bob"), 200, "bob 2");
    // Now the IP limit refuses a user with budget left.
    let r = post_form(&gw, "/login", "username=carol");
    let retry = assert_429(&r);
    assert!(
        retry <= 15 * 60,
        "the IP limit decides: Retry-After {retry}"
    );
    assert_eq!(up.hits(), 4);
    assert_eq!(
        counter(&gw, "authgate_rate_limited_total", &[("route", "login")]),
        3.0
    );
}

// ---------------------------------------------------------------------------
// Redis: a shared budget; outages

#[test]
fn two_instances_sharing_redis_share_one_budget() {
    let redis = RedisServer::start();
    let cfg = config(
        &redis_store(&redis.url(), "deny"),
        "",
        &[route("login", "/login", &[limit("ip", 10, "1m", "all")])],
    );
    let up = Upstream::start();
    let cfg = cfg.replace("{upstream}", &up.addr);
    let a = Gateway::start(&cfg, &[]);
    let b = Gateway::start(&cfg, &[]);
    let started = Instant::now();
    let statuses: Vec<u16> = (0..50)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            let r = post_form(gw, "/login", "username=alice");
            if r.status == 429 {
                assert_429(&r);
            }
            r.status
        })
        .collect();
    let elapsed = started.elapsed();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    // One more passes every 6 s: this holds as long as the 50 requests take less.
    assert_eq!(
        passed, 10,
        "statuses {statuses:?} (50 requests in {elapsed:?}; a request would refill after 6 s)"
    );
    assert!(
        statuses[..10].iter().all(|s| *s == 200) && statuses[10..].iter().all(|s| *s == 429),
        "statuses {statuses:?}"
    );
    assert_eq!(up.hits(), 10);
    let limited = counter(&a, "authgate_rate_limited_total", &[("route", "login")])
        + counter(&b, "authgate_rate_limited_total", &[("route", "login")]);
    assert_eq!(limited, 40.0);
}

#[test]
fn redis_outage_deny_answers_503_and_allow_lets_through() {
    let mut redis = RedisServer::start();
    let routes = [
        route("login", "/login", &[limit("ip", 1000, "1m", "all")]),
        route("open", "/open", &[]),
    ];
    let up = Upstream::start();
    let deny = Gateway::start(
        &config(&redis_store(&redis.url(), "deny"), "", &routes).replace("{upstream}", &up.addr),
        &[],
    );
    let allow = Gateway::start(
        &config(&redis_store(&redis.url(), "allow"), "", &routes).replace("{upstream}", &up.addr),
        &[],
    );
    assert_status(&post_form(&deny, "/login", "u=1"), 200, "deny, Redis up");
    assert_status(&post_form(&allow, "/login", "u=1"), 200, "allow, Redis up");
    let errors = |gw: &Gateway| counter(gw, "authgate_store_errors_total", &[("op", "ratelimit")]);
    let (deny_before, allow_before) = (errors(&deny), errors(&allow));

    redis.kill();
    for k in 0..3 {
        let r = post_form(&deny, "/login", "u=1");
        assert_error(&r, 503, "unavailable", "store_unavailable");
        let r = post_form(&allow, "/login", "u=1");
        assert_status(&r, 200, &format!("allow #{k}, Redis down"));
        assert!(r.json()["body_sha256"].is_string(), "reached the upstream");
    }
    assert!(
        errors(&deny) >= deny_before + 3.0,
        "store errors (deny): {} -> {}",
        deny_before,
        errors(&deny)
    );
    assert!(
        errors(&allow) >= allow_before + 3.0,
        "store errors (allow): {} -> {}",
        allow_before,
        errors(&allow)
    );
    // Both stay alive; routes without limits don't need the store.
    for gw in [&deny, &allow] {
        assert_status(&gw.admin_get("/healthz"), 200, "healthz during the outage");
        assert_status(
            &gw.get("/open", &[]),
            200,
            "unlimited route during the outage",
        );
    }
    let logs = deny.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("store error") && l.contains("ratelimit")),
        "no store error logged:\n{logs}"
    );
    // the policy as the config spells it, not the Rust variant
    assert!(
        logs.lines()
            .any(|l| l.contains("store error") && l.contains("\"on_error\":\"deny\"")),
        "store error without on_error = deny:\n{logs}"
    );
    let logs = allow.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("store error") && l.contains("\"on_error\":\"allow\"")),
        "store error without on_error = allow:\n{logs}"
    );

    // Redis back (empty): limiting works again.
    redis.restart();
    let back = poll_until(Duration::from_secs(15), || {
        (post_form(&deny, "/login", "u=1").status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "deny gateway did not recover after Redis came back"
    );
    let r = post_form(&allow, "/login", "u=1");
    assert_status(&r, 200, "allow, Redis back");
    assert!(
        r.header("RateLimit").is_some(),
        "limited again after the outage"
    );
}

#[test]
fn a_paused_redis_is_an_outage_too() {
    let redis = RedisServer::start();
    let cfg = config(
        &redis_store(&redis.url(), "deny"),
        "",
        &[route("login", "/login", &[limit("ip", 1000, "1m", "all")])],
    );
    let (gw, _up) = start(&cfg);
    assert_status(&post_form(&gw, "/login", "u=1"), 200, "Redis up");
    redis.pause();
    let r = post_form(&gw, "/login", "u=1");
    redis.resume();
    assert_error(&r, 503, "unavailable", "store_unavailable");
    assert!(counter(&gw, "authgate_store_errors_total", &[("op", "ratelimit")]) >= 1.0);
    let back = poll_until(Duration::from_secs(15), || {
        let r = post_form(&gw, "/login", "u=1");
        (r.status == 200 && r.header("RateLimit").is_some()).then_some(())
    });
    assert!(back.is_some(), "no recovery after SIGCONT");
}

#[test]
fn memory_store_limits_are_per_instance() {
    let cfg = config(
        "",
        "",
        &[route("login", "/login", &[limit("ip", 2, "1h", "all")])],
    );
    let up = Upstream::start();
    let cfg = cfg.replace("{upstream}", &up.addr);
    let a = Gateway::start(&cfg, &[]);
    let b = Gateway::start(&cfg, &[]);
    assert_status(&post_form(&a, "/login", "u=1"), 200, "a 1");
    assert_status(&post_form(&a, "/login", "u=1"), 200, "a 2");
    assert_429(&post_form(&a, "/login", "u=1"));
    // Nothing is shared: b has its own budget.
    assert_status(&post_form(&b, "/login", "u=1"), 200, "b 1");
    assert_status(&post_form(&b, "/login", "u=1"), 200, "b 2");
    assert_429(&post_form(&b, "/login", "u=1"));
    assert_eq!(up.hits(), 4);
}

// ---------------------------------------------------------------------------
// a username key must not be escapable by how the body is framed (each of
// these let an exhausted alice through on the IP's budget before read_prefix
// read past the first body chunk)

/// alice's budget (limit 2) is used up with ordinary requests first.
fn exhausted_alice() -> (Gateway, Upstream) {
    let cfg = config(
        "",
        "",
        &[
            route("login", "/login", &[limit("form:username", 2, "1h", "all")]),
            route(
                "api-login",
                "/api/login",
                &[limit("json:user", 2, "1h", "all")],
            ),
        ],
    );
    let (gw, up) = start(&cfg);
    for _ in 0..2 {
        assert_status(
            &post_form(&gw, "/login", "username=alice&password=pw"),
            200,
            "alice",
        );
        assert_status(
            &post_json(
                &gw,
                "/api/login",
                &json!({"user": "alice", "password": "pw"}),
            ),
            200,
            "json alice",
        );
    }
    assert_429(&post_form(&gw, "/login", "username=alice&password=pw"));
    assert_429(&post_json(&gw, "/api/login", &json!({"user": "alice"})));
    (gw, up)
}

/// docs/config.md: the whole body is read for a `form:` key. A chunked body
/// whose first chunk cuts the value is still keyed on the whole value.
#[test]
fn a_chunked_body_split_inside_the_username_is_still_keyed_on_it() {
    let (gw, up) = exhausted_alice();
    let hits = up.hits();
    let r = post_chunked(
        &gw,
        "/login",
        &[
            one_chunk(b"username=al"),
            one_chunk(b"ice&password=guess1"),
            b"0\r\n\r\n".to_vec(),
        ],
        Duration::from_millis(300),
    );
    assert_eq!(
        r.status,
        429,
        "alice's exhausted budget escaped by splitting the username across chunks: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(up.hits(), hits);
}

/// A chunked form (and a chunked JSON object) whose field is complete but
/// whose terminating zero-size chunk comes in a later packet, as streaming
/// clients send it.
#[test]
fn a_chunked_body_with_a_late_terminator_is_still_keyed_on_the_username() {
    let (gw, up) = exhausted_alice();
    let hits = up.hits();
    let r = post_chunked(
        &gw,
        "/login",
        &[
            one_chunk(b"password=guess2&username=alice"),
            b"0\r\n\r\n".to_vec(),
        ],
        Duration::from_millis(300),
    );
    assert_eq!(
        r.status,
        429,
        "form: alice's exhausted budget escaped with a late chunked terminator: {} {}",
        r.status,
        r.text()
    );
    // The same for JSON.
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gw.proxy_addr
    );
    let chunk = one_chunk(br#"{"user":"alice","password":"guess3"}"#);
    let r = send_raw(
        &gw.proxy_addr,
        &[head.as_bytes(), &chunk, b"0\r\n\r\n"],
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(
        r.status,
        429,
        "json: alice's exhausted budget escaped with a late chunked terminator: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(up.hits(), hits);
}

/// A large Content-Length body (60 KiB, near the 64 KiB a body-keyed route
/// reads) whose first packet ends inside the username: the whole value is
/// the key.
#[test]
fn a_large_body_whose_first_packet_cuts_the_username_is_still_keyed_on_it() {
    let (gw, up) = exhausted_alice();
    let hits = up.hits();
    let mut rest = b"ice&password=guess4&pad=".to_vec();
    rest.resize(60 * 1024 - b"username=al".len(), b'x');
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gw.proxy_addr,
        60 * 1024
    );
    let r = send_raw(
        &gw.proxy_addr,
        &[head.as_bytes(), b"username=al", &rest],
        Duration::from_millis(300),
    )
    .unwrap();
    assert_eq!(
        r.status,
        429,
        "alice's exhausted budget escaped by a first packet that cuts the username: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(up.hits(), hits);
}

/// `Expect: 100-continue` must not let a client opt out of its username
/// budget: the gateway answers `100 Continue` itself and keys on the body
/// (an early design used the IP key here, which this test caught).
#[test]
fn expect_100_continue_does_not_escape_the_username_budget() {
    let (gw, up) = exhausted_alice();
    let hits = up.hits();
    let body = "username=alice&password=guess5";
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        gw.proxy_addr,
        body.len()
    );
    // The body goes right after the head, without waiting for 100 Continue
    // (RFC 9110 allows it); an interim 100 answer is skipped by send_raw.
    let r = send_raw(
        &gw.proxy_addr,
        &[format!("{head}{body}").as_bytes()],
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(
        r.status,
        429,
        "alice's exhausted budget escaped with Expect: 100-continue: {} {}",
        r.status,
        r.text()
    );
    assert_eq!(up.hits(), hits);
}

#[test]
fn a_refused_upload_gets_a_clean_429_and_never_reaches_the_upstream() {
    let cfg = config(
        "",
        "",
        &[route(
            "login",
            "/login",
            &[limit("form:username", 1, "1h", "all")],
        )],
    );
    let (gw, up) = start(&cfg);
    assert_status(&post_form(&gw, "/login", "username=alice"), 200, "first");
    let mut body = b"username=alice&data=".to_vec();
    body.resize(60 * 1024, b'a');
    let r = try_request(&gw.proxy_addr, "POST", "/login", &[FORM], &body)
        .expect("a refused 60 KiB Content-Length upload: no readable answer");
    assert_429(&r);
    let r = post_chunked(&gw, "/login", &[chunked(&body, 16 * 1024)], Duration::ZERO);
    assert_429(&r);
    // Over the 64 KiB a body-keyed route reads: the answer (413) comes
    // before the body is read; it must still reach the client.
    body.resize(1024 * 1024, b'a');
    let r = try_request(&gw.proxy_addr, "POST", "/login", &[FORM], &body)
        .expect("a refused 1 MiB Content-Length upload: no readable answer");
    assert_status(&r, 413, "1 MiB Content-Length");
    let r = post_chunked(&gw, "/login", &[chunked(&body, 16 * 1024)], Duration::ZERO);
    assert_status(&r, 413, "1 MiB chunked");
    assert_eq!(up.hits(), 1);
}

#[test]
fn keep_alive_connections_carry_limited_requests_with_bodies() {
    use std::io::{BufRead, BufReader, Read, Write};
    let cfg = config(
        "",
        "",
        &[route(
            "login",
            "/login",
            &[limit("form:username", 2, "1h", "all")],
        )],
    );
    let (gw, up) = start(&cfg);
    let stream = std::net::TcpStream::connect(&gw.proxy_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut rd = BufReader::new(stream);
    let mut send = |body: &str| -> (u16, String) {
        write!(
            w,
            "POST /login HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).unwrap();
        let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut len = 0;
        loop {
            line.clear();
            rd.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut b = vec![0; len];
        rd.read_exact(&mut b).unwrap();
        (status, String::from_utf8_lossy(&b).into_owned())
    };
    for (k, body) in [
        "username=alice&a=1",
        "username=bob&a=2",
        "username=alice&a=3",
    ]
    .iter()
    .enumerate()
    {
        let (status, text) = send(body);
        assert_eq!(status, 200, "request {k} on one connection: {text}");
        let echo: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            echo["body_sha256"],
            sha256_hex(body.as_bytes()),
            "request {k}"
        );
    }
    let (status, text) = send("username=alice&a=4");
    assert_eq!(status, 429, "{text}");
    assert_eq!(up.hits(), 3);
}

/// `count = "failures"` charges each attempt before forwarding it and
/// refunds it when the answer is not a failure, so attempts in flight at the
/// same time cannot all pass an unconsumed budget: with limit 3, a burst of 10
/// concurrent wrong passwords lets at most 3 reach the upstream (an early
/// count-after-response design let all 10 through, which this test caught).
#[test]
fn concurrent_failures_are_bounded_by_the_limit() {
    fn slow_401(_req: &RecordedRequest) -> u16 {
        // Keeps every attempt in flight while the others are checked.
        std::thread::sleep(Duration::from_millis(500));
        401
    }
    let (gw, up) = start_on(
        &failures_route("form:username", 3),
        Upstream::start_with_status(slow_401),
    );
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (addr, b) = (gw.proxy_addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                request(
                    &addr,
                    "POST",
                    "/login",
                    &[FORM],
                    b"username=alice&password=wrong",
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        up.hits() <= 3,
        "{} of 10 concurrent failed attempts reached the upstream with limit 3: {statuses:?}",
        up.hits()
    );
}
