//! Graceful shutdown: with an upstream that takes ~1 s to answer, requests in flight
//! when SIGTERM arrives (on new and on keep-alive connections) still complete with
//! 200, connections opened after SIGTERM are not proxied, and the process exits with
//! status 0 within the documented bound (`[server] grace_period = "3s"`: the grace
//! period, then up to another grace period for the runtimes).

mod common;

use common::ops::*;
use common::*;
use std::thread;
use std::time::{Duration, Instant};

const GRACE_SECS: u64 = 3;

fn config(upstream: &str) -> String {
    GatewayConfig::base()
        .threads(2)
        .server("grace_period = \"3s\"")
        .toml()
        .replace("{upstream}", upstream)
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits() {
    let slow = SlowUpstream::start(Duration::from_millis(1200));
    let mut gw = Gateway::start(&config(&slow.addr), &[HS_ENV]);
    let tok = hs_token(&hs_claims("alice", serde_json::json!({})));
    let auth = format!("Bearer {tok}");

    // a keep-alive connection that has served one request already
    let mut ka = KeepAlive::new(&gw.proxy_addr);
    let first = ka.get("/api/warm", &[("Authorization", &auth)]).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let before = slow.arrived();

    let new_conn = {
        let (addr, auth) = (gw.proxy_addr.clone(), auth.clone());
        thread::spawn(move || {
            try_request(
                &addr,
                "GET",
                "/api/inflight",
                &[("Authorization", &auth)],
                b"",
            )
        })
    };
    let reused = {
        let auth = auth.clone();
        thread::spawn(move || ka.get("/api/inflight-keepalive", &[("Authorization", &auth)]))
    };
    // both requests have reached the upstream
    let arrived = poll_until(Duration::from_secs(5), || {
        (slow.arrived() >= before + 2).then_some(())
    });
    assert!(arrived.is_some(), "requests did not reach the upstream");
    let t0 = Instant::now();
    gw.signal("-TERM");

    let r = new_conn.join().unwrap().expect("in-flight request failed");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], serde_json::json!("/api/inflight"));
    let r = reused
        .join()
        .unwrap()
        .expect("in-flight keep-alive request failed");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["path"],
        serde_json::json!("/api/inflight-keepalive")
    );

    // a connection opened after SIGTERM is not proxied
    let late = {
        let (addr, auth) = (gw.proxy_addr.clone(), auth.clone());
        thread::spawn(move || {
            try_request(&addr, "GET", "/api/late", &[("Authorization", &auth)], b"")
        })
    };

    let bound = Duration::from_secs(2 * GRACE_SECS + 3);
    let status = gw.wait_exit(bound);
    let waited = t0.elapsed();
    assert!(
        status.is_some(),
        "still running {waited:?} after SIGTERM (grace period {GRACE_SECS} s)\n{}",
        gw.logs()
    );
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}\n{}", gw.stderr());
    let late = late.join().unwrap();
    assert!(
        late.as_ref().map_or(true, |r| r.status != 200),
        "a request sent after SIGTERM was proxied: {late:?}"
    );
    assert_eq!(
        slow.arrived(),
        before + 2,
        "the late request reached the upstream"
    );
}

#[test]
fn sigterm_on_an_idle_gateway_exits_cleanly() {
    let (mut gw, _up) = GatewayConfig::base()
        .server("grace_period = \"1s\"")
        .with_upstream(&[HS_ENV]);
    let tok = hs_token(&hs_claims("alice", serde_json::json!({})));
    assert_eq!(gw.get_bearer("/api/x", &tok).status, 200);
    gw.signal("-TERM");
    let status = gw.wait_exit(Duration::from_secs(2 + 3));
    assert!(
        status.is_some(),
        "still running after SIGTERM\n{}",
        gw.logs()
    );
    assert!(status.unwrap().success(), "{:?}", status);
    // Nothing logged is lost at exit: the request's line is there, and the
    // last line is the gateway's own "stopped", written after pingora's
    // runtimes have exited (the log writer is flushed before the process
    // ends).
    let logs = gw.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "request" && l["path"] == "/api/x"),
        "no request line\n{logs}"
    );
    // the request line's target is the one operators filter on
    // (`RUST_LOG=authgate::gateway=warn`), whatever module writes it
    assert!(
        lines
            .iter()
            .filter(|l| l["message"] == "request")
            .all(|l| l["target"] == "authgate::gateway"),
        "request lines with another target\n{logs}"
    );
    assert_eq!(
        lines.last().map(|l| l["message"].clone()),
        Some(serde_json::json!("stopped")),
        "{logs}"
    );
}
