//! Streams that outlive their credential are ended within 1 s: a gRPC
//! server stream (grpcio client and server, over h2c) whose token's `jti`
//! or subject is revoked, or whose token reaches its `exp`, ends with
//! UNAUTHENTICATED and the reason as its message; a WebSocket (the
//! `websockets` client and server) is closed the same way. With the
//! route's `revalidate_streams = false` the stream runs on. A plain HTTP/2
//! stream is reset (or, before its answer started, refused with 401). The request log
//! says why, and `authgate_streams_ended_total` counts them.

mod common;

use common::python::{self, grpc_call_async, ws_client_async};
use common::redis_server;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ADMIN_TOKEN: &str = "streams-admin-token-0123456789abcdef";
/// The contract's bound, from the revocation (or `exp`) to the end.
const BOUND: f64 = 1.0;

fn config(grpc: &str, ws: &str, revalidate: bool) -> String {
    GatewayConfig::new()
        .server("h2c = true")
        .upstream_with("grpc", &[grpc], "protocol = \"h2c\"")
        .upstream("ws", &[ws])
        .hs_issuer()
        .issuer(
            "short",
            "issuer = \"https://short.test\"\nalgorithms = [\"HS256\"]\n\
             secret_env = \"TEST_HS_SECRET\"\nleeway = \"0s\"",
        )
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .route(&format!(
            r#"name = "grpc"
path_prefix = "/authgate.test.Echo/"
upstream = "grpc"
auth = "jwt"
issuers = ["hs", "short"]
revalidate_streams = {revalidate}"#
        ))
        .jwt_route_to("ws", "/ws/", "ws", &["hs"], "")
        .toml()
}

fn env() -> [(&'static str, &'static str); 2] {
    [HS_ENV, ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN)]
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Revokes over the admin API; the unix time it was acknowledged.
fn revoke(gw: &Gateway, body: Value) -> f64 {
    let r = gw.admin_post("/admin/revoke", ADMIN_TOKEN, &body.to_string());
    assert_eq!(r.status, 200, "revoke {body}: {}", r.text());
    unix_now()
}

/// Lets a stream that was just started run a while: the server's ticks
/// come every 100 ms, so half a second is several ticks in.
fn let_it_run() {
    std::thread::sleep(Duration::from_millis(500));
}

#[track_caller]
fn assert_ended(r: &Value, reason: &str, at: f64, what: &str) {
    assert_eq!(r["code"], "UNAUTHENTICATED", "{what}: {r}");
    assert_eq!(r["details"], reason, "{what}: {r}");
    assert!(
        r["received_before_end"].as_u64().unwrap_or(0) >= 2,
        "{what}: the stream should have run first: {r}"
    );
    let ended = r["ended_at"].as_f64().unwrap_or(f64::MAX);
    assert!(
        ended - at < BOUND,
        "{what}: ended {:.3} s after the revocation/expiry: {r}",
        ended - at
    );
}

#[test]
fn a_grpc_stream_ends_within_a_second_of_its_jti_or_subject_revocation() {
    let server = python::grpc_server();
    let ws = python::ws_server();
    let gw = Gateway::start(&config(&server.addr, &ws.addr, true), &env());
    let addr = gw.proxy_addr.clone();

    let t1 = hs_token(&hs_claims("alice", json!({"jti": "st-1"})));
    let call = grpc_call_async(&addr, "ServerStream", &["--token", &t1, "--body", "100"]);
    let_it_run();
    let exp = token_part(&t1, 1)["exp"].as_i64().unwrap();
    let at = revoke(&gw, json!({"jti": "st-1", "exp": exp}));
    let r = call.join().unwrap();
    assert_ended(&r, "revoked", at, "jti revocation");

    // a subject cutoff ends bob's stream too (his token was issued before it)
    let t2 = hs_token(&hs_claims("bob", json!({"iat": now() - 10})));
    let call = grpc_call_async(&addr, "ServerStream", &["--token", &t2, "--body", "100"]);
    let_it_run();
    let at = revoke(&gw, json!({"sub": "bob"}));
    let r = call.join().unwrap();
    assert_ended(&r, "revoked", at, "subject revocation");

    let m = gw
        .metrics_when(|m| metric(m, "authgate_streams_ended_total", &[]).is_some_and(|v| v >= 2.0));
    assert_eq!(
        metric(&m, "authgate_streams_ended_total", &[]),
        Some(2.0),
        "{m}"
    );
    let lines = wait_request_logs(&gw, 2);
    assert!(
        lines
            .iter()
            .all(|l| field_str(l, "reason").as_deref() == Some("revoked")
                && field(l, "grpc_status") == Some(&json!(16))),
        "{lines:#?}"
    );
}

#[test]
fn a_grpc_stream_ends_within_a_second_of_its_token_expiring() {
    let server = python::grpc_server();
    let ws = python::ws_server();
    let gw = Gateway::start(&config(&server.addr, &ws.addr, true), &env());
    let exp = now() + 2;
    let t = hs_token(&json!({"iss": "https://short.test", "sub": "carol", "exp": exp}));
    let r = grpc_call_async(
        &gw.proxy_addr,
        "ServerStream",
        &["--token", &t, "--body", "100"],
    )
    .join()
    .unwrap();
    assert_ended(&r, "expired", exp as f64, "exp");
    let ended = r["ended_at"].as_f64().unwrap_or(0.0);
    assert!(ended >= exp as f64 - 1.0, "ended before exp: {r}");
}

#[test]
fn a_websocket_is_closed_within_a_second_of_its_revocation() {
    let server = python::grpc_server();
    let ws = python::ws_server();
    let gw = Gateway::start(&config(&server.addr, &ws.addr, true), &env());
    let t = hs_token(&hs_claims("dave", json!({"jti": "ws-1"})));
    let url = format!("ws://{}/ws/chat", gw.proxy_addr);
    let client = ws_client_async(&url, &t, 10);
    std::thread::sleep(Duration::from_millis(1500));
    let exp = token_part(&t, 1)["exp"].as_i64().unwrap();
    let at = revoke(&gw, json!({"jti": "ws-1", "exp": exp}));
    let r = client.join().unwrap();
    assert_eq!(r["connected"], true, "{r}");
    assert!(r["echoes"].as_u64().unwrap_or(0) >= 3, "{r}");
    assert_eq!(r["closed"], true, "{r}");
    let ended = r["ended_at"].as_f64().unwrap_or(f64::MAX);
    assert!(ended - at < BOUND, "closed {:.3} s after: {r}", ended - at);
    // a revoked token cannot open a new one
    let r = ws_client_async(&url, &t, 1).join().unwrap();
    assert_eq!(r["connected"], false, "{r}");
}

/// A WebSocket authenticated by an express-session cookie is closed within
/// 1 s of the session's destruction (`POST /admin/revoke {"session": sid}`,
/// which deletes it from Redis).
#[test]
fn a_session_websocket_is_closed_within_a_second_of_the_session_being_destroyed() {
    use authgate::testing::session::sign_cookie;
    const SECRET: &str = "streams-session-secret-0123456789abcdef";
    let redis = redis_server::RedisServer::start();
    let ws = python::ws_server();
    let toml = GatewayConfig::new()
        .upstream("ws", &[&ws.addr])
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .store_redis(&redis.url(), "deny")
        .sessions(
            "cookie = \"sid\"\nsecrets_env = [\"SESSION_SECRET\"]\nidentity = { subject = \"userId\" }",
        )
        .route(
            r#"name = "ws"
path_prefix = "/ws/"
upstream = "ws"
auth = "session""#,
        )
        .toml();
    let gw = Gateway::start(
        &toml,
        &[
            ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("SESSION_SECRET", SECRET),
        ],
    );
    let sid = new_sid("ws");
    let value = session_value(json!({"userId": "frank"}), 86_400_000, 86_400_000);
    let key = format!("sess:{sid}");
    assert_eq!(redis.cmd(&["SET", &key, &value, "PX", "86400000"]), "OK");
    let cookie = format!("sid={}", sign_cookie(&sid, SECRET.as_bytes()));
    let url = format!("ws://{}/ws/chat", gw.proxy_addr);
    let client = python::ws_client_with_cookie(&url, "-", 10, &cookie);
    std::thread::sleep(Duration::from_millis(1500));
    let at = revoke(&gw, json!({"session": sid}));
    let r = client.join().unwrap();
    assert_eq!(r["connected"], true, "{r}");
    assert!(r["echoes"].as_u64().unwrap_or(0) >= 3, "{r}");
    assert_eq!(r["closed"], true, "{r}");
    let ended = r["ended_at"].as_f64().unwrap_or(f64::MAX);
    assert!(
        ended - at < BOUND,
        "closed {:.3} s after: {r}\n{}",
        ended - at,
        gw.logs()
    );
}

#[test]
fn with_revalidate_streams_off_a_stream_runs_on_after_its_revocation() {
    let server = python::grpc_server();
    let ws = python::ws_server();
    let gw = Gateway::start(&config(&server.addr, &ws.addr, false), &env());
    let t = hs_token(&hs_claims("erin", json!({"jti": "off-1"})));
    let call = grpc_call_async(
        &gw.proxy_addr,
        "ServerStream",
        &["--token", &t, "--body", "20"],
    );
    let_it_run();
    let exp = token_part(&t, 1)["exp"].as_i64().unwrap();
    revoke(&gw, json!({"jti": "off-1", "exp": exp}));
    let r = call.join().unwrap();
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(r["received_before_end"], 20, "{r}");
    // new calls are refused as always
    let r = python::grpc_call(&gw.proxy_addr, None, "Unary", &["--token", &t]);
    assert_eq!(r["code"], "UNAUTHENTICATED", "{r}");
}

/// An HTTP/1.1 upstream that answers every request with a chunked body,
/// one chunk every 100 ms for 10 s (a server-sent stream).
fn ticking_upstream() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
                for i in 0..100 {
                    let line = format!("data: tick {i}\n\n");
                    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
                    if s.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = s.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}

/// `curl --http2-prior-knowledge` in the background: (exit code, body,
/// unix time it ended).
fn curl_h2_async(url: &str, token: &str) -> std::thread::JoinHandle<(i32, String, f64)> {
    let (url, auth) = (url.to_string(), format!("Authorization: Bearer {token}"));
    std::thread::spawn(move || {
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "-N",
                "--max-time",
                "15",
                "--http2-prior-knowledge",
                "-H",
                &auth,
                &url,
            ])
            .output()
            .expect("run curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            unix_now(),
        )
    })
}

fn h2_config(sse: &str, slow: &str) -> String {
    GatewayConfig::new()
        .server("h2c = true")
        .upstream("sse", &[sse])
        .upstream_with("slow", &[slow], "read_timeout = \"30s\"")
        .hs_issuer()
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .jwt_route_to("sse", "/sse/", "sse", &["hs"], "")
        .jwt_route_to("slow", "/slow/", "slow", &["hs"], "")
        .toml()
}

/// A plain HTTP/2 stream (not gRPC): its answer has started, so it is
/// reset (curl: "stream error", exit 92) within 1 s of the revocation.
#[test]
fn an_http2_stream_is_reset_within_a_second_of_its_revocation() {
    let slow = common::ops::SlowUpstream::start(Duration::from_secs(10));
    let gw = Gateway::start(&h2_config(&ticking_upstream(), &slow.addr), &env());
    let t = hs_token(&hs_claims("gina", json!({"jti": "sse-1"})));
    let call = curl_h2_async(&format!("http://{}/sse/events", gw.proxy_addr), &t);
    std::thread::sleep(Duration::from_millis(800));
    let exp = token_part(&t, 1)["exp"].as_i64().unwrap();
    let at = revoke(&gw, json!({"jti": "sse-1", "exp": exp}));
    let (code, body, ended) = call.join().unwrap();
    assert_eq!(code, 92, "curl should see the stream reset: {code} {body}");
    assert!(body.matches("data: tick").count() >= 3, "{body}");
    assert!(ended - at < BOUND, "reset {:.3} s after", ended - at);
}

/// A stream whose answer has not started (the upstream still thinking)
/// gets the refusal a request refused at its start gets: 401 `revoked`.
#[test]
fn a_waiting_http2_stream_gets_a_401_within_a_second_of_its_revocation() {
    let slow = common::ops::SlowUpstream::start(Duration::from_secs(10));
    let gw = Gateway::start(&h2_config(&ticking_upstream(), &slow.addr), &env());
    let t = hs_token(&hs_claims("hank", json!({"jti": "slow-1"})));
    let call = curl_h2_async(&format!("http://{}/slow/x", gw.proxy_addr), &t);
    let arrived = poll_until(Duration::from_secs(5), || {
        (slow.arrived() == 1).then_some(())
    });
    assert!(arrived.is_some(), "the request never reached the upstream");
    let exp = token_part(&t, 1)["exp"].as_i64().unwrap();
    let at = revoke(&gw, json!({"jti": "slow-1", "exp": exp}));
    let (code, body, ended) = call.join().unwrap();
    assert_eq!(code, 0, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(
        v,
        json!({"error": "invalid_token", "reason": "revoked"}),
        "{body}"
    );
    assert!(ended - at < BOUND, "answered {:.3} s after", ended - at);
    assert_eq!(slow.answered(), 0);
}
