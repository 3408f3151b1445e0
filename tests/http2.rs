//! HTTP/2 to clients: the same answers as HTTP/1.1, and clear refusals of
//! hostile HTTP/2 input.
//!
//! - A corpus of requests (every auth outcome, roles, revocation, rate
//!   limits, host and path routing, spoofed identity and forwarding
//!   headers, `_` spellings, bodies) is sent with `curl --http1.1` and with
//!   `curl --http2` over TLS (ALPN `h2`) and `--http2-prior-knowledge` on a
//!   plain listener with `[server] h2c = true`: each answer (status, body)
//!   and what the upstream received (method, path, body, `x-auth-*`,
//!   `x-forwarded-*`) must be the same on all three. The corpus runs against
//!   both `direct_path` settings.
//! - Every case of the differential corpus (tests/reference/corpus.rs) that
//!   an HTTP/2 client can express (one well-formed request, origin-form
//!   target, no HTTP/1 framing or connection fields: 46 of 85) goes over
//!   HTTP/1.1 and h2c with the same result; the one accepted difference is
//!   a refusal's form (HTTP/1.1's 400, HTTP/2's RST_STREAM for a request
//!   pingora finds malformed, such as an empty `:authority`).
//! - Hostile HTTP/2 from a raw client (the `h2` package, tests/peers/h2_raw.py):
//!   `:authority` and `host` that disagree (400), a `:path` without `/`
//!   (RST_STREAM), a header block over `max_header_bytes` (431), a rapid
//!   reset flood (GOAWAY ENHANCE_YOUR_CALM), a SETTINGS flood (closed),
//!   more streams than `MAX_CONCURRENT_STREAMS` (REFUSED_STREAM); after
//!   each, the gateway still answers. A client that opens HTTP/2 (ALPN
//!   `h2`, or part of the h2c preface) and then stalls is disconnected
//!   after `request_header_timeout`.

mod common;

use common::ops::{curl, Pki};
use common::python::python;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const ADMIN_TOKEN: &str = "http2-admin-token-0123456789abcdef";

/// A JWT route for every path of host `admin.local` (`{name}`: its name).
const ADMIN_HOST_ROUTE: &str = r#"name = "{name}"
host = "admin.local"
path_prefix = "/"
upstream = "app"
auth = "jwt"
issuers = ["hs"]"#;

fn config(direct: bool, tls: Option<(&Path, &Path)>) -> String {
    let mut c = GatewayConfig::base()
        .direct_path(direct)
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .jwt_route_to(
            "admin",
            "/admin-api/",
            "app",
            &["hs"],
            "require = { roles = [\"admin\"] }",
        )
        .route(&ADMIN_HOST_ROUTE.replace("{name}", "host"))
        .route(
            r#"name = "open"
path_prefix = "/open/"
upstream = "app"
auth = "none"
headers = { "X-Tenant" = "tenant" }"#,
        )
        .route(
            r#"name = "limited"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "header:X-Client"
limit = 2
window = "1m"
count = "all""#,
        );
    match tls {
        Some((cert, key)) => {
            c = c.tls_files(cert, key);
        }
        None => c = c.server("h2c = true"),
    }
    c.toml()
}

fn env() -> [(&'static str, &'static str); 2] {
    [HS_ENV, ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

/// One request of the corpus: method, path, header lines, body.
struct Req {
    name: &'static str,
    method: String,
    path: String,
    headers: Vec<String>,
    body: String,
}

fn req(name: &'static str, method: &'static str, path: &str, headers: &[&str]) -> Req {
    Req {
        name,
        method: method.to_string(),
        path: path.to_string(),
        headers: headers.iter().map(|h| h.to_string()).collect(),
        body: String::new(),
    }
}

fn corpus(valid: &str, admin: &str, expired: &str, revoked: &str, wrong_iss: &str) -> Vec<Req> {
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let (v, a) = (bearer(valid), bearer(admin));
    let mut c = vec![
        req("valid token", "GET", "/api/x?q=1", &[&v]),
        req("no token", "GET", "/api/x", &[]),
        req(
            "malformed token",
            "GET",
            "/api/x",
            &["Authorization: Bearer abc.def"],
        ),
        req("expired token", "GET", "/api/x", &[&bearer(expired)]),
        req("wrong issuer", "GET", "/api/x", &[&bearer(wrong_iss)]),
        req("revoked token", "GET", "/api/x", &[&bearer(revoked)]),
        req(
            "basic scheme",
            "GET",
            "/api/x",
            &["Authorization: Basic YTpi"],
        ),
        req("role missing", "GET", "/admin-api/users", &[&v]),
        req("role present", "GET", "/admin-api/users", &[&a]),
        req("HEAD", "HEAD", "/api/x", &[&v]),
        req("DELETE", "DELETE", "/api/items/7", &[&v]),
        req("no route", "GET", "/nowhere", &[&v]),
        req("dot segments", "GET", "/open/../api/x", &[]),
        req("encoded dot segments", "GET", "/open/%2e%2e/api/x", &[]),
        req("encoded slash", "GET", "/api%2fx", &[]),
        req("encoded unreserved", "GET", "/%61pi/x", &[&v]),
        req("params", "GET", "/api;x=1/x", &[&v]),
        req(
            "host route without token",
            "GET",
            "/x",
            &["Host: admin.local"],
        ),
        req(
            "host route with token",
            "GET",
            "/x",
            &["Host: Admin.Local.", &v],
        ),
        req(
            "spoofed identity",
            "GET",
            "/api/x",
            &[
                &v,
                "X-Auth-Subject: mallory",
                "X-Auth-Roles: admin",
                "X_Auth_Email: m@x",
            ],
        ),
        req(
            "spoofed forwarding",
            "GET",
            "/open/x",
            &[
                "X-Forwarded-For: 10.9.9.9",
                "X-Forwarded-Proto: https",
                "X-Real-IP: 10.9.9.9",
            ],
        ),
        req(
            "mapped header from client",
            "GET",
            "/open/x",
            &["X-Tenant: evil"],
        ),
        req(
            "url override",
            "GET",
            "/open/x",
            &["X-Original-URL: /api/x"],
        ),
    ];
    let mut post = req(
        "POST body",
        "POST",
        "/api/items",
        &[&v, "Content-Type: application/json"],
    );
    post.body = r#"{"name":"widget"}"#.into();
    c.push(post);
    let mut unauth = req(
        "POST without token",
        "POST",
        "/api/items",
        &["Content-Type: text/plain"],
    );
    unauth.body = "hello".into();
    c.push(unauth);
    for i in 0..3 {
        let mut r = req("rate limit", "GET", "/login", &["X-Client: {client}"]);
        r.name = ["rate limit 1", "rate limit 2", "rate limit 3"][i];
        c.push(r);
    }
    c
}

/// The fields of what the upstream got that must not depend on the
/// client's protocol.
fn seen(r: &RecordedRequest) -> Value {
    let keep = |k: &str| {
        k.starts_with("x-auth-")
            || k.starts_with("x-forwarded-")
            || k == "x-real-ip"
            || k == "x-tenant"
            || k == "x-original-url"
    };
    let mut fields: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| keep(k) && k != "x-forwarded-proto")
        .cloned()
        .collect();
    fields.sort();
    json!({
        "method": r.method,
        "path": r.path,
        "body": String::from_utf8_lossy(&r.body),
        "fields": fields,
    })
}

/// What one protocol made of the corpus: per request, the answer and what
/// the upstream received (none when it received nothing).
fn run(
    gw: &Gateway,
    up: &Upstream,
    proto: &str,
    base_url: &str,
    ca: Option<&str>,
    corpus: &[Req],
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for r in corpus {
        let before = up.hits();
        let mut args: Vec<String> = vec![proto.into(), "--path-as-is".into()];
        if let Some(ca) = ca {
            args.extend(["--cacert".into(), ca.into()]);
            let port = gw.proxy_addr.rsplit_once(':').map_or("", |p| p.1);
            args.extend(["--resolve".into(), format!("localhost:{port}:127.0.0.1")]);
        }
        args.extend(["-X".into(), r.method.clone()]);
        if r.method == "HEAD" {
            args.push("--head".into());
        }
        for h in &r.headers {
            args.extend(["-H".into(), h.replace("{client}", proto)]);
        }
        if !r.body.is_empty() {
            args.extend(["--data-binary".into(), r.body.clone()]);
        }
        args.push(format!("{base_url}{}", r.path));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let res = curl(&argv);
        if res.code == 92 && up.hits() == before {
            // HTTP/2: the stream was reset (pingora refuses a malformed
            // request, such as an empty `:authority`, before routing)
            out.push((
                r.name.to_string(),
                json!({"status": "reset", "upstream": null}),
            ));
            continue;
        }
        assert_eq!(res.code, 0, "{proto} {}: curl failed: {res:?}", r.name);
        let body: Value = if r.method == "HEAD" {
            Value::Null
        } else {
            serde_json::from_str(&res.body).unwrap_or_else(|_| json!(res.body))
        };
        let got = if up.hits() > before {
            seen(&up.last())
        } else {
            Value::Null
        };
        // the echo body names the upstream's view, which `seen` compares
        let body = if got.is_null() { body } else { json!("(echo)") };
        out.push((
            r.name.to_string(),
            json!({"status": res.status, "body": body, "upstream": got}),
        ));
    }
    out
}

fn tokens() -> (String, String, String, String, String) {
    let valid = hs_token(&hs_claims(
        "alice",
        json!({"roles": ["user"], "email": "a@x"}),
    ));
    let admin = hs_token(&hs_claims("root", json!({"roles": ["admin"]})));
    let expired = hs_token(&hs_claims("alice", json!({"exp": now() - 3600})));
    let revoked = hs_token(&hs_claims("alice", json!({"jti": "h2-revoked"})));
    let wrong = hs_token(&claims("https://other.test", "alice"));
    (valid, admin, expired, revoked, wrong)
}

fn revoke(gw: &Gateway, token: &str) {
    let exp = token_part(token, 1)["exp"].as_i64().unwrap_or(0);
    let body = json!({"jti": "h2-revoked", "exp": exp}).to_string();
    let r = gw.admin_post("/admin/revoke", ADMIN_TOKEN, &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[track_caller]
fn assert_same(what: &str, a: &[(String, Value)], b: &[(String, Value)]) {
    let mut diffs = Vec::new();
    for ((name, x), (_, y)) in a.iter().zip(b) {
        // a refusal either way: HTTP/1.1's 400, HTTP/2's RST_STREAM
        let refused =
            |v: &Value| v["upstream"].is_null() && (v["status"] == 400 || v["status"] == "reset");
        if x != y && !(refused(x) && refused(y)) {
            diffs.push(format!("{name}:\n  HTTP/1.1 {x}\n  {what} {y}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what} differs from HTTP/1.1:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn the_corpus_gets_the_same_answers_over_http2_as_over_http11() {
    let (valid, admin, expired, revoked, wrong) = tokens();
    let corpus = corpus(&valid, &admin, &expired, &revoked, &wrong);
    let pki = Pki::new("h2");
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let ca = pki.ca.display().to_string();
    for direct in [true, false] {
        // h2c: HTTP/1.1 and HTTP/2 with prior knowledge on the plain listener
        let (gw, up) = Gateway::with_upstream(&config(direct, None), &env());
        revoke(&gw, &revoked);
        let base = format!("http://{}", gw.proxy_addr);
        let h1 = run(&gw, &up, "--http1.1", &base, None, &corpus);
        let h2c = run(&gw, &up, "--http2-prior-knowledge", &base, None, &corpus);
        assert_same(&format!("h2c (direct_path = {direct})"), &h1, &h2c);
        // the corpus means something: a sample of the HTTP/1.1 answers
        let get = |n: &str| &h1.iter().find(|(k, _)| k == n).unwrap().1;
        assert_eq!(get("valid token")["status"], 200);
        assert_eq!(
            get("valid token")["upstream"]["fields"][0],
            json!(["x-auth-email", "a@x"])
        );
        assert_eq!(get("no token")["body"]["reason"], "missing_credentials");
        assert_eq!(get("revoked token")["body"]["reason"], "revoked");
        assert_eq!(get("role missing")["status"], 403);
        assert_eq!(get("host route without token")["status"], 401);
        assert_eq!(get("rate limit 3")["status"], 429);
        assert_eq!(get("spoofed identity")["status"], 200);
        assert!(
            !get("spoofed identity").to_string().contains("mallory"),
            "{}",
            get("spoofed identity")
        );
        // TLS: HTTP/1.1 and HTTP/2 by ALPN
        let (gw, up) = Gateway::with_upstream(&config(direct, Some((&cert, &key))), &env());
        revoke(&gw, &revoked);
        let port = gw
            .proxy_addr
            .rsplit_once(':')
            .map_or("", |p| p.1)
            .to_string();
        let base = format!("https://localhost:{port}");
        let h1 = run(&gw, &up, "--http1.1", &base, Some(&ca), &corpus);
        let h2 = run(&gw, &up, "--http2", &base, Some(&ca), &corpus);
        assert_same(&format!("h2 over TLS (direct_path = {direct})"), &h1, &h2);
        // and the metrics count the same: every request has its outcome
        let m = gw.metrics();
        assert_eq!(
            metric(
                &m,
                "authgate_requests_total",
                &[
                    ("route", "api"),
                    ("outcome", "denied"),
                    ("reason", "revoked")
                ]
            ),
            Some(2.0),
            "{m}"
        );
    }
}

fn h2_raw(addr: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/h2_raw.py");
    let out = Command::new(python())
        .arg(&script)
        .args(args.iter().take(1))
        .arg(addr)
        .args(args.iter().skip(1))
        .output()
        .expect("run h2_raw.py");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "h2_raw.py {args:?}: not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[track_caller]
fn still_serving(gw: &Gateway, after: &str) {
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/open/ok", gw.proxy_addr),
    ]);
    assert_eq!(
        (r.code, r.status),
        (0, 200),
        "after {after}: {r:?}\n{}",
        gw.logs()
    );
}

#[test]
fn hostile_http2_input_gets_clear_refusals_and_never_a_crash() {
    let (gw, up) = Gateway::with_upstream(&config(false, None), &env());
    let addr = gw.proxy_addr.as_str();

    let ok = h2_raw(addr, &["request", "/open/x", "localhost"]);
    assert_eq!(ok["status"], 200, "{ok}");
    let hits = up.hits();

    // :authority and host that disagree: which one would the backend route on?
    let r = h2_raw(addr, &["request", "/open/x", "a.local", "host=admin.local"]);
    assert_eq!(r["status"], 400, "{r}");
    // a :path that is not origin-form
    let r = h2_raw(addr, &["request", "open/x", "localhost"]);
    assert!(r["reset"].is_number() || r["status"] == 400, "{r}");
    let r = h2_raw(addr, &["request", "*", "localhost"]);
    assert_eq!(r["status"], 400, "{r}");
    // a spoofed identity field in HTTP/2 never reaches the upstream
    let r = h2_raw(
        addr,
        &["request", "/open/x", "localhost", "x-auth-subject=mallory"],
    );
    assert_eq!(r["status"], 200, "{r}");
    assert!(up.last().header("x-auth-subject").is_none());
    assert_eq!(
        up.hits(),
        hits + 1,
        "only the clean request reached the upstream"
    );
    still_serving(&gw, "pseudo-header tricks");

    // a header block over max_header_bytes (64 KiB)
    let r = h2_raw(addr, &["big-headers", "70000"]);
    assert_eq!(r["status"], 431, "{r}");
    still_serving(&gw, "a large header block");

    // rapid reset: the connection is closed with ENHANCE_YOUR_CALM (11)
    let r = h2_raw(addr, &["rapid-reset", "1000"]);
    assert_eq!(r["goaway"], 11, "{r}");
    still_serving(&gw, "a rapid reset flood");

    // a SETTINGS flood: closed
    let r = h2_raw(addr, &["settings-flood", "50000"]);
    assert_eq!(r["closed"], true, "{r}");
    still_serving(&gw, "a SETTINGS flood");

    // more streams than announced: the ones over 100 are refused
    let r = h2_raw(addr, &["streams", "300", "/open/slow"]);
    assert_eq!(r["max_concurrent_streams"], 100, "{r}");
    assert!(r["refused"].as_u64().unwrap_or(0) >= 190, "{r}");
    still_serving(&gw, "a stream flood");
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

/// HTTP/2's slowloris: the connection preface never completes. Over TLS
/// (ALPN `h2`, nothing sent) and in h2c (half the preface sent), the
/// gateway closes the connection after `request_header_timeout` (1 s here).
#[test]
fn a_stalled_http2_opening_is_cut_after_the_head_timeout() {
    let pki = Pki::new("h2-stall");
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    for (tls, mode, bytes) in [
        (true, "tls", "0"),
        (false, "h2c", "12"),
        (false, "h2c", "24"),
    ] {
        let toml = GatewayConfig::base()
            .server("request_header_timeout = \"1s\"")
            .server(if tls { "" } else { "h2c = true" });
        let toml = if tls {
            toml.tls_files(&cert, &key)
        } else {
            toml
        };
        let (gw, _up) = Gateway::with_upstream(&toml.toml(), &[HS_ENV]);
        let r = h2_raw(&gw.proxy_addr, &["stall", bytes, mode]);
        if tls {
            assert_eq!(r["alpn"], "h2", "{r}");
        }
        let after = r["closed_after"].as_f64();
        assert!(
            after.is_some_and(|s| (0.5..5.0).contains(&s)),
            "{mode} with {bytes} preface bytes: {r}"
        );
    }
}

// ---------------------------------------------------------------------------
// the differential corpus over HTTP/2

#[path = "reference/corpus.rs"]
mod corpus;

/// A corpus request an HTTP/2 client can send: method, target, fields (the
/// framing fields curl sets itself left out) and body. `None`: HTTP/1
/// framing, connection-level fields, a target that is not origin-form, or
/// anything that does not parse as one well-formed HTTP/1.1 request: its
/// behaviour is HTTP/1's own, tested by tests/differential.rs.
fn expressible(name: &'static str, raw: &str) -> Option<Req> {
    let bytes = raw.as_bytes();
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let end = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let (method, target) = (req.method?.to_string(), req.path?.to_string());
    if req.version != Some(1) || !target.starts_with('/') || target.contains('#') {
        return None;
    }
    let mut out = Vec::new();
    let mut hosts = 0;
    let mut length = None;
    for f in req.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        let value = std::str::from_utf8(f.value).ok()?.to_string();
        if value.bytes().any(|b| b < 0x20 && b != b'\t') {
            return None;
        }
        match name.as_str() {
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
            | "te" | "expect" | "http2-settings" => return None,
            "host" => hosts += 1,
            "content-length" => {
                if length.is_some() {
                    return None;
                }
                length = Some(value.trim().parse::<usize>().ok()?);
                continue;
            }
            _ => {}
        }
        out.push(format!("{}: {value}", f.name));
    }
    let body = &bytes[end..];
    if hosts != 1 || length.unwrap_or(0) != body.len() {
        return None;
    }
    Some(Req {
        name,
        method,
        path: target,
        headers: out,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

fn corpus_config() -> String {
    GatewayConfig::new()
        .server("h2c = true")
        .upstream("app", &["{upstream}"])
        .hs_issuer()
        .jwt_route("api", "/api/", &["hs"])
        .route(&ADMIN_HOST_ROUTE.replace("{name}", "admin"))
        .route(
            r#"name = "open"
path_prefix = "/"
upstream = "app"
auth = "none""#,
        )
        .toml()
}

/// Every case of the differential corpus (tests/differential.rs) that an
/// HTTP/2 client can express is sent with curl over HTTP/1.1 and over h2c:
/// the same status, body and upstream request. The cases left out are
/// printed with the reason (HTTP/1 framing and connection behaviour).
#[test]
fn the_differential_corpus_gets_the_same_answers_over_http2() {
    let (gw, up) = Gateway::with_upstream(&corpus_config(), &[HS_ENV]);
    let token = hs_token(&hs_claims("alice", json!({})));
    let base = format!("http://{}", gw.proxy_addr);
    let mut replayed = Vec::new();
    let mut skipped = Vec::new();
    for case in corpus::cases() {
        let one = case.requests.len() == 1 && !case.pipelined && case.kind == corpus::Kind::Length;
        let raw = case.requests[0]
            .replace("{tok}", &token)
            .replace("{id}", case.name);
        match expressible(case.name, &raw).filter(|_| one) {
            Some(r) => replayed.push(r),
            None => skipped.push(case.name),
        }
    }
    println!(
        "{} cases replayed; skipped (HTTP/1 only): {skipped:?}",
        replayed.len()
    );
    assert!(
        replayed.len() >= 40,
        "only {} cases replayed",
        replayed.len()
    );
    let h1 = run(&gw, &up, "--http1.1", &base, None, &replayed);
    let h2 = run(&gw, &up, "--http2-prior-knowledge", &base, None, &replayed);
    assert_same("the differential corpus over h2c", &h1, &h2);
    // it exercised the auth: some cases were refused, some reached the upstream
    let statuses: Vec<u64> = h1
        .iter()
        .filter_map(|(_, v)| v["status"].as_u64())
        .collect();
    assert!(statuses.contains(&401) && statuses.contains(&200) && statuses.contains(&400));
}

/// `[server] h2c` is off by default: a plain listener does not speak
/// HTTP/2 with prior knowledge (the preface is a malformed HTTP/1.1 head),
/// and nothing reaches the upstream.
#[test]
fn without_h2c_a_plain_listener_does_not_speak_http2() {
    let (gw, up) = Gateway::with_upstream(&GatewayConfig::base().toml(), &[HS_ENV]);
    let r = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/api/x", gw.proxy_addr),
    ]);
    assert!(r.code != 0 || r.status == 400, "{r:?}");
    assert_eq!(up.hits(), 0);
    // HTTP/1.1 on the same listener is served
    let r = curl(&["--http1.1", &format!("http://{}/api/x", gw.proxy_addr)]);
    assert_eq!((r.code, r.status), (0, 401), "{r:?}");
}
