//! The admin listener and observability: `/healthz`, `/readyz`, Prometheus `/metrics`
//! (`authgate_requests_total` by route/outcome/reason with `route="unmatched"` for a
//! 404, `authgate_auth_duration_seconds` by method jwt/none,
//! `authgate_upstream_duration_seconds`), and the stdout log: one JSON line per request
//! with route, method, auth, path, status, outcome, reason, subject, client_ip,
//! duration_ms, and no token, cookie or secret anywhere in stdout or stderr.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn cfg() -> String {
    GatewayConfig::base().open_route("open", "/open/").toml()
}

const REQS: &str = "authgate_requests_total";

/// Polls `/metrics` until `authgate_requests_total` adds up to `n` (metrics may be
/// recorded after the response is sent), then returns the text.
fn metrics_after(gw: &Gateway, n: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics();
        if metric(&text, REQS, &[]) == Some(n) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_and_readiness() {
    let (gw, _up) = Gateway::with_upstream(&cfg(), &[HS_ENV]);
    let r = gw.admin_get("/healthz");
    assert_eq!(r.status, 200);
    let r = gw.admin_get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    // the admin endpoints are not exposed on the proxy listener
    for path in ["/metrics", "/healthz"] {
        let r = gw.get(path, &[]);
        assert_error(&r, 404, "not_found", "no_route");
    }
}

#[test]
fn metrics_count_requests_by_route_outcome_reason() {
    let (gw, up) = Gateway::with_upstream(&cfg(), &[HS_ENV]);
    let good = hs_token(&hs_claims("alice", json!({})));
    let forged = sign(
        Algorithm::HS256,
        &hs_key("wrong"),
        &hs_claims("alice", json!({})),
    );
    assert_eq!(gw.get_bearer("/api/a", &good).status, 200);
    assert_eq!(gw.get_bearer("/api/b", &good).status, 200);
    assert_eq!(gw.get("/api/c", &[]).status, 401);
    assert_eq!(gw.get_bearer("/api/d", &forged).status, 401);
    assert_eq!(gw.get("/nowhere", &[]).status, 404);
    assert_eq!(gw.get("/open/e", &[]).status, 200);
    assert_eq!(up.hits(), 3);

    let text = metrics_after(&gw, 6.0);
    let r = gw.admin_get("/metrics");
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    for (name, kind) in [
        (REQS, "counter"),
        ("authgate_auth_duration_seconds", "histogram"),
        ("authgate_upstream_duration_seconds", "histogram"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "no TYPE line for {name}:\n{text}"
        );
    }
    let count = |labels: &[(&str, &str)]| metric(&text, REQS, labels);
    let allowed = [("outcome", "allowed"), ("reason", "ok")];
    assert_eq!(
        count(&[("route", "api"), allowed[0], allowed[1]]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(&[("route", "open"), allowed[0], allowed[1]]),
        Some(1.0),
        "{text}"
    );
    for reason in ["missing_credentials", "bad_signature"] {
        assert_eq!(
            count(&[("route", "api"), ("outcome", "denied"), ("reason", reason)]),
            Some(1.0),
            "{reason}: {text}"
        );
    }
    assert_eq!(
        count(&[("route", "unmatched"), ("reason", "no_route")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(count(&[]), Some(6.0), "{text}");

    let hist = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, &format!("{name}_count"), labels).unwrap_or(0.0)
    };
    let auth = "authgate_auth_duration_seconds";
    assert!(
        hist(auth, &[("route", "api"), ("method", "jwt")]) >= 2.0,
        "{text}"
    );
    assert!(
        hist(auth, &[("route", "open"), ("method", "none")]) >= 1.0,
        "{text}"
    );
    assert_eq!(hist(auth, &[("route", "api"), ("method", "none")]), 0.0);
    let upstream = "authgate_upstream_duration_seconds";
    assert_eq!(hist(upstream, &[("route", "api")]), 2.0, "{text}");
    assert_eq!(hist(upstream, &[("route", "open")]), 1.0, "{text}");
    assert!(metric(&text, &format!("{upstream}_bucket"), &[("route", "api")]).is_some());

    for secret in [good.as_str(), forged.as_str(), HS_SECRET] {
        assert!(!text.contains(secret), "metrics leak a credential");
    }
}

fn find<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    let hits: Vec<&Value> = lines
        .iter()
        .filter(|l| field_str(l, "path").as_deref() == Some(path))
        .collect();
    assert_eq!(hits.len(), 1, "log lines for {path}: {hits:?}");
    hits[0]
}

fn assert_fields(line: &Value, want: &[(&str, &str)]) {
    for (k, v) in want {
        assert_eq!(field_str(line, k).as_deref(), Some(*v), "{k} in {line}");
    }
}

#[test]
fn one_json_log_line_per_request_without_secrets() {
    let (gw, _up) = Gateway::with_upstream(&cfg(), &[HS_ENV]);
    let good = hs_token(&hs_claims("alice", json!({})));
    let forged = sign(
        Algorithm::HS256,
        &hs_key("forged-secret"),
        &hs_claims("mallory", json!({})),
    );
    let cookie = "sessionId=s3cr3t-cookie-value-123456";
    assert_eq!(gw.get_bearer("/api/ok", &good).status, 200);
    assert_eq!(gw.get_bearer("/api/denied", &forged).status, 401);
    assert_eq!(gw.get("/nowhere", &[]).status, 404);
    let r = gw.get("/open/p", &[("Cookie", cookie)]);
    assert_eq!(r.status, 200);

    let lines = wait_request_logs(&gw, 4);
    std::thread::sleep(Duration::from_millis(200));
    let logs = gw.logs();
    let lines_now = request_log_lines(&logs);
    assert_eq!(lines_now.len(), 4, "request log lines: {lines:?}\n{logs}");
    for l in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(l).is_ok(),
            "not a JSON line: {l}"
        );
    }

    let ok = find(&lines_now, "/api/ok");
    assert_fields(
        ok,
        &[
            ("route", "api"),
            ("method", "GET"),
            ("auth", "jwt"),
            ("status", "200"),
            ("outcome", "allowed"),
            ("reason", "ok"),
            ("subject", "alice"),
            ("client_ip", "127.0.0.1"),
        ],
    );
    let denied = find(&lines_now, "/api/denied");
    assert_fields(
        denied,
        &[
            ("route", "api"),
            ("auth", "jwt"),
            ("status", "401"),
            ("outcome", "denied"),
            ("reason", "bad_signature"),
            ("client_ip", "127.0.0.1"),
        ],
    );
    let unmatched = find(&lines_now, "/nowhere");
    assert_fields(unmatched, &[("status", "404"), ("reason", "no_route")]);
    let open = find(&lines_now, "/open/p");
    assert_fields(
        open,
        &[
            ("route", "open"),
            ("auth", "none"),
            ("status", "200"),
            ("outcome", "allowed"),
            ("reason", "ok"),
        ],
    );
    for l in &lines_now {
        let d = field(l, "duration_ms").unwrap_or_else(|| panic!("no duration_ms in {l}"));
        let ms = d
            .as_f64()
            .or_else(|| d.as_str().and_then(|s| s.parse().ok()));
        assert!(ms.is_some_and(|ms| ms >= 0.0), "duration_ms {d} in {l}");
    }

    let all = format!("{logs}\n{}", gw.stderr());
    for (what, secret) in [
        ("valid token", good.as_str()),
        ("forged token", forged.as_str()),
        ("valid signature", good.rsplit('.').next().unwrap()),
        ("forged signature", forged.rsplit('.').next().unwrap()),
        ("HMAC secret", HS_SECRET),
        ("cookie", "s3cr3t-cookie-value-123456"),
    ] {
        assert!(!all.contains(secret), "the {what} appears in the output");
    }
}
