//! gRPC through authgate with peers no one here wrote: a Python gRPC server
//! and client from `grpcio` (tests/peers/grpc_peer.py, in the venv of
//! tests/python/setup.sh). The gateway listens with `[server] h2c = true`
//! (and, in one test, over TLS with ALPN `h2`), and reaches the server with
//! `[upstreams.grpc] protocol = "h2c"`.
//!
//! - unary, server-streaming and bidirectional calls pass with a valid
//!   token, and the server sees the identity as metadata (`x-auth-*`), never
//!   the client's own `x-auth-*` metadata;
//! - the client sees UNAUTHENTICATED for a missing, bad or revoked token,
//!   PERMISSION_DENIED for a token without the role, RESOURCE_EXHAUSTED for
//!   a rate limit and UNAVAILABLE for an upstream that is down, each with
//!   the reason code as its message;
//! - the request log and `authgate_grpc_requests_total` record the gRPC
//!   status next to the HTTP one.

mod common;

use common::ops::Pki;
use common::python;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

const ADMIN_TOKEN: &str = "grpc-admin-token-0123456789abcdef";

fn grpc_call(addr: &str, method: &str, args: &[&str]) -> Value {
    python::grpc_call(addr, None, method, args)
}

fn grpc_call_path(addr: &str, service: &str, args: &[&str]) -> Value {
    python::grpc_call(addr, Some(service), "Unary", args)
}

fn config(grpc_addr: &str, tls: Option<(&Path, &Path)>) -> String {
    let mut c = GatewayConfig::new()
        .server("h2c = true")
        .upstream_with("grpc", &[grpc_addr], "protocol = \"h2c\"")
        .upstream_with(
            "down",
            &[&dead_addr()],
            "protocol = \"h2c\"\nconnect_timeout = \"1s\"",
        )
        .hs_issuer()
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .jwt_route_to("grpc", "/authgate.test.Echo/", "grpc", &["hs"], "")
        .jwt_route_to(
            "admin-only",
            "/authgate.test.Admin/",
            "grpc",
            &["hs"],
            "require = { roles = [\"admin\"] }",
        )
        .route(
            r#"name = "limited"
path_prefix = "/authgate.test.Limited/"
upstream = "grpc"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 1
window = "1m"
count = "all""#,
        )
        .route(
            r#"name = "down"
path_prefix = "/authgate.test.Down/"
upstream = "down"
auth = "none""#,
        );
    if let Some((cert, key)) = tls {
        c = c.tls_files(cert, key);
    }
    c.toml()
}

fn env() -> [(&'static str, &'static str); 2] {
    [HS_ENV, ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

fn token(sub: &str, extra: Value) -> String {
    hs_token(&hs_claims(sub, extra))
}

#[track_caller]
fn assert_status(r: &Value, code: &str, details: &str) {
    assert_eq!(
        (r["code"].as_str(), r["details"].as_str()),
        (Some(code), Some(details)),
        "{r}"
    );
}

/// The metadata the server saw on a Unary call (it answers them as JSON).
fn seen_metadata(r: &Value) -> Value {
    serde_json::from_str(r["responses"][0].as_str().unwrap_or("null")).unwrap_or(Value::Null)
}

#[test]
fn grpc_calls_pass_with_identity_metadata_and_refusals_are_grpc_statuses() {
    let server = python::grpc_server();
    let gw = Gateway::start(&config(&server.addr, None), &env());
    let addr = gw.proxy_addr.as_str();
    let alice = token("alice", json!({"jti": "g1", "roles": ["user"]}));

    // unary: the identity arrives as metadata; the client's own x-auth-*
    // metadata does not
    let r = grpc_call(
        addr,
        "Unary",
        &["--token", &alice, "--metadata", "x-auth-subject=mallory"],
    );
    assert_status(&r, "OK", "");
    let md = seen_metadata(&r);
    assert_eq!(md["x-auth-subject"], "alice", "{md}");
    assert_eq!(md["x-auth-method"], "jwt", "{md}");
    assert_eq!(md["x-auth-issuer"], "hs", "{md}");
    // server streaming and bidirectional
    let r = grpc_call(addr, "ServerStream", &["--token", &alice, "--body", "3"]);
    assert_status(&r, "OK", "");
    assert_eq!(r["responses"], json!(["tick 0", "tick 1", "tick 2"]));
    let r = grpc_call(addr, "Bidi", &["--token", &alice, "--messages", "a,b,c"]);
    assert_status(&r, "OK", "");
    assert_eq!(r["responses"], json!(["echo: a", "echo: b", "echo: c"]));

    // refusals: gRPC statuses with the reason code as the message
    let r = grpc_call(addr, "Unary", &[]);
    assert_status(&r, "UNAUTHENTICATED", "missing_credentials");
    let r = grpc_call(addr, "Unary", &["--token", "not-a-jwt"]);
    assert_status(&r, "UNAUTHENTICATED", "malformed");
    let expired = token("alice", json!({"exp": now() - 600}));
    let r = grpc_call(addr, "ServerStream", &["--token", &expired]);
    assert_status(&r, "UNAUTHENTICATED", "expired");

    // revoked: the admin revokes alice's jti
    let exp = token_part(&alice, 1)["exp"].as_i64().unwrap();
    let body = json!({"jti": "g1", "exp": exp}).to_string();
    let rv = gw.admin_post("/admin/revoke", ADMIN_TOKEN, &body);
    assert_eq!(rv.status, 200, "{}", rv.text());
    let r = grpc_call(addr, "Unary", &["--token", &alice]);
    assert_status(&r, "UNAUTHENTICATED", "revoked");

    // no route for the service: UNIMPLEMENTED, as gRPC maps 404
    let r = grpc_call_path(addr, "authgate.test.Nowhere", &["--token", &alice]);
    assert_status(&r, "UNIMPLEMENTED", "no_route");

    let log = wait_request_logs(&gw, 8);
    let grpc_lines: Vec<&Value> = log
        .iter()
        .filter(|l| field_str(l, "route").as_deref() == Some("grpc"))
        .collect();
    assert!(
        grpc_lines
            .iter()
            .any(|l| field(l, "grpc_status") == Some(&json!(16))
                && field(l, "status") == Some(&json!(200))
                && field_str(l, "reason").as_deref() == Some("revoked")),
        "no request line with grpc_status 16 and reason revoked: {grpc_lines:#?}"
    );
    assert!(
        grpc_lines
            .iter()
            .any(|l| field(l, "grpc_status") == Some(&json!(0))),
        "no request line with the upstream's grpc_status 0: {grpc_lines:#?}"
    );
    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "authgate_grpc_requests_total",
            &[("route", "grpc"), ("grpc_status", "16")]
        )
        .is_some_and(|v| v >= 4.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "authgate_grpc_requests_total",
            &[("route", "grpc"), ("grpc_status", "0")]
        )
        .is_some_and(|v| v >= 3.0),
        "{m}"
    );
}

#[test]
fn roles_rate_limits_and_a_dead_upstream_are_grpc_statuses_too() {
    let server = python::grpc_server();
    let gw = Gateway::start(&config(&server.addr, None), &env());
    let addr = gw.proxy_addr.as_str();
    let user = token("bob", json!({"roles": ["user"]}));
    let r = grpc_call_path(addr, "authgate.test.Admin", &["--token", &user]);
    assert_status(&r, "PERMISSION_DENIED", "insufficient_role");
    // with the role, the request reaches the server (which has no Admin service)
    let admin = token("carol", json!({"roles": ["admin"]}));
    let r = grpc_call_path(addr, "authgate.test.Admin", &["--token", &admin]);
    assert_eq!(r["code"], "UNIMPLEMENTED", "{r}");

    let r = grpc_call_path(addr, "authgate.test.Limited", &[]);
    assert_eq!(r["code"], "UNIMPLEMENTED", "the first call passes: {r}");
    let r = grpc_call_path(addr, "authgate.test.Limited", &[]);
    assert_status(&r, "RESOURCE_EXHAUSTED", "rate_limited");

    let r = grpc_call_path(addr, "authgate.test.Down", &[]);
    assert_status(&r, "UNAVAILABLE", "upstream_error");
}

#[test]
fn grpc_over_tls_negotiates_h2_by_alpn() {
    let server = python::grpc_server();
    let pki = Pki::new("grpc-tls");
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let gw = Gateway::start(&config(&server.addr, Some((&cert, &key))), &env());
    let ca = pki.ca.display().to_string();
    let alice = token("alice", json!({}));
    let r = grpc_call(&gw.proxy_addr, "Unary", &["--token", &alice, "--ca", &ca]);
    assert_status(&r, "OK", "");
    assert_eq!(seen_metadata(&r)["x-forwarded-proto"], "https", "{r}");
    let r = grpc_call(&gw.proxy_addr, "Unary", &["--ca", &ca]);
    assert_status(&r, "UNAUTHENTICATED", "missing_credentials");
}
