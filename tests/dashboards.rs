//! The shipped observability artefacts against a live gateway: `docs/dashboards/authgate.json`
//! (Grafana) and `docs/alerts.yml` (Prometheus rules) only use metrics, labels and label
//! values that authgate really exports.
//!
//! One gateway (Redis store, an HS256 issuer, a `jwks_url` issuer, a rate-limited login
//! route, a route to a dead upstream) gets traffic that makes every metric of the contract
//! appear: allowed / denied / error requests, a 503 `keys_unavailable` before the JWKS
//! ever loads, JWKS refresh errors then successes, token-cache misses and hits, a 429, a
//! 502, a revocation and a revoked token, a reload that works and one that is refused,
//! then Redis killed: a rate-limit check and a revocation that fail (store errors).
//! Then `/metrics` is scraped and every PromQL expression of the dashboard and the alert
//! rules is parsed: every `authgate_*` name must be a sample name in the scrape, every
//! label matcher and `by (...)` label must exist on it, and every `label="value"` must
//! match a series. Every metric family in the scrape must be on the dashboard and in
//! docs/operations.md, and every alert must have a runbook section there.
//!
//! With `promtool` installed (Debian: `apt-get install prometheus`), also runs
//! `promtool check rules docs/alerts.yml`, `promtool test rules
//! tests/dashboards/alerts_test.yml`, and `check rules` on the dashboard's expressions;
//! without it those steps are skipped with a printed note.

mod common;

use common::ops::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The contract's metrics plus the two extensions, with their types.
const FAMILIES: &[(&str, &str)] = &[
    ("authgate_requests_total", "counter"),
    ("authgate_auth_duration_seconds", "histogram"),
    ("authgate_upstream_duration_seconds", "histogram"),
    ("authgate_rate_limited_total", "counter"),
    ("authgate_revocations_total", "counter"),
    ("authgate_store_errors_total", "counter"),
    ("authgate_jwks_refresh_total", "counter"),
    ("authgate_config_reloads_total", "counter"),
    ("authgate_revocation_mirror_entries", "gauge"),
    ("authgate_token_cache_total", "counter"),
];

/// Labels Prometheus adds at scrape time (or that histograms carry).
const TARGET_LABELS: &[&str] = &["instance", "job"];

// ---------------------------------------------------------------------------
// the Prometheus text format

/// name -> every label set of its samples.
type Scrape = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn parse_scrape(text: &str) -> Scrape {
    let mut out: Scrape = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for (k, v) in split_matchers(labels) {
            map.insert(k, v);
        }
        out.entry(name.to_string()).or_default().push(map);
    }
    out
}

/// `# TYPE name kind` lines.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (n, k) = l.split_once(' ')?;
            Some((n.to_string(), k.trim().to_string()))
        })
        .collect()
}

/// `a="x",b="y"` -> [(a, x), (b, y)] (for the scrape, where every matcher is `=`).
fn split_matchers(s: &str) -> Vec<(String, String)> {
    parse_matchers(s)
        .into_iter()
        .map(|(k, _, v)| (k, v))
        .collect()
}

// ---------------------------------------------------------------------------
// a little PromQL reading: selectors, matchers, `by (...)`

/// `label op "value"` items of a selector's braces (ops: = != =~ !~).
fn parse_matchers(s: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && matches!(chars[i], '=' | '!' | '~') {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        assert!(
            i < chars.len() && chars[i] == '"',
            "cannot read matchers {s:?} (label {label:?})"
        );
        i += 1;
        let mut value = String::new();
        while i < chars.len() && chars[i] != '"' {
            if chars[i] == '\\' && i + 1 < chars.len() {
                i += 1;
            }
            value.push(chars[i]);
            i += 1;
        }
        i += 1;
        assert!(
            !label.is_empty() && ["=", "!=", "=~", "!~"].contains(&op.as_str()),
            "bad matcher in {s:?}: {label:?} {op:?}"
        );
        out.push((label, op, value));
    }
    out
}

/// A metric selector found in an expression.
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Every `authgate_*` selector in `expr`, and the labels of its `by (...)` /
/// `without (...)` clauses.
fn read_expr(expr: &str) -> (Vec<Selector>, Vec<String>) {
    let bytes = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut selectors = Vec::new();
    let mut grouping = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            // skip string literals
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            continue;
        }
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if word.starts_with("authgate_") {
            let mut matchers = Vec::new();
            if j < bytes.len() && bytes[j] == b'{' {
                let end = expr[j..].find('}').expect("unclosed selector") + j;
                matchers = parse_matchers(&expr[j + 1..end]);
                i = end + 1;
            }
            selectors.push(Selector {
                name: word.to_string(),
                matchers,
            });
        } else if (word == "by" || word == "without") && j < bytes.len() && bytes[j] == b'(' {
            let end = expr[j..].find(')').expect("unclosed by") + j;
            grouping.extend(
                expr[j + 1..end]
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
            i = end + 1;
        }
    }
    (selectors, grouping)
}

// ---------------------------------------------------------------------------
// the artefacts

/// (where, expression) for every query of the dashboard: panel targets and
/// templating queries.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = fs::read_to_string(root().join("docs/dashboards/authgate.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "authgate");
    assert!(
        dash["schemaVersion"].as_i64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "duplicate id: {title}"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_i64().unwrap(), g["w"].as_i64().unwrap());
        assert!(x >= 0 && w > 0 && x + w <= 24, "{title}: gridPos {g}");
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap().to_string()),
                "{title}"
            );
            let expr = t["expr"].as_str().expect("expr").to_string();
            out.push((format!("dashboard panel {title:?}"), expr));
        }
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{title}: no description"
        );
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(SELECTOR, label)
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .expect("label_values(...)");
            let (sel, label) = inner.rsplit_once(',').unwrap();
            let label = label.trim();
            out.push((
                format!("dashboard variable {}", v["name"]),
                format!("count by ({label}) ({sel})"),
            ));
        }
    }
    out
}

/// (alert name, expression) from docs/alerts.yml: `expr:` on one line, or `expr: |`
/// and the more indented lines after it.
fn alert_exprs() -> Vec<(String, String)> {
    let text = fs::read_to_string(root().join("docs/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let t = l.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            alert = name.trim().to_string();
        } else if let Some(rest) = t.strip_prefix("expr:") {
            let indent = l.len() - t.len();
            let rest = rest.trim();
            let expr = if rest == "|" || rest == ">" {
                let mut body = Vec::new();
                while i + 1 < lines.len() {
                    let n = lines[i + 1];
                    if !n.trim().is_empty() && n.len() - n.trim_start().len() <= indent {
                        break;
                    }
                    body.push(n.trim());
                    i += 1;
                }
                body.join(" ")
            } else {
                rest.to_string()
            };
            assert!(!alert.is_empty(), "expr before any alert");
            out.push((alert.clone(), expr));
        }
        i += 1;
    }
    let n_alerts = text.matches("- alert:").count();
    assert_eq!(out.len(), n_alerts, "one expr per alert");
    assert!(n_alerts >= 5, "{n_alerts} alerts");
    out
}

/// Checks every selector and grouping label of `expr` against the scrape.
fn check_expr(scrape: &Scrape, fams: &BTreeMap<String, String>, what: &str, expr: &str) {
    let (selectors, grouping) = read_expr(expr);
    // `up` is Prometheus's own series about the scrape (AuthgateDown)
    let only_up = expr.trim_start().starts_with("up{");
    assert!(
        !selectors.is_empty() || only_up,
        "{what}: no authgate metric in {expr}"
    );
    let mut labels_here: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for s in &selectors {
        let series = scrape.get(&s.name).unwrap_or_else(|| {
            panic!(
                "{what}: `{}` is not a sample name in /metrics\n  expr: {expr}",
                s.name
            )
        });
        // histograms: the suffix names a histogram family
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = s.name.strip_suffix(suffix) {
                if fams.get(base).map(String::as_str) == Some("histogram") {
                    continue;
                }
                assert!(
                    fams.contains_key(&s.name),
                    "{what}: `{}` is neither a family nor a histogram's {suffix}",
                    s.name
                );
            }
        }
        let known: BTreeSet<&String> = series.iter().flat_map(|m| m.keys()).collect();
        labels_here.extend(known.iter().map(|k| k.to_string()));
        for (label, op, value) in &s.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            assert!(
                known.contains(label),
                "{what}: `{}` has no label `{label}` (it has {known:?})\n  expr: {expr}",
                s.name
            );
            if op == "=" && !value.contains('$') {
                assert!(
                    series.iter().any(|m| m.get(label) == Some(value)),
                    "{what}: no `{}` series with {label}=\"{value}\" in /metrics\n  expr: {expr}",
                    s.name
                );
            }
            if op == "=~" && !value.contains('$') {
                // every alternative of a plain `a|b|c` is a real value
                if value
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '|')
                {
                    for alt in value.split('|') {
                        assert!(
                            is_contract_value(label, alt),
                            "{what}: {label}=~ alternative `{alt}` is not a value authgate uses"
                        );
                    }
                }
            }
        }
    }
    for g in &grouping {
        assert!(
            labels_here.contains(g) || g == "le",
            "{what}: grouping by `{g}`, which none of its metrics has\n  expr: {expr}"
        );
    }
}

/// The contract's reason codes (for `reason=~"a|b"` matchers that traffic here doesn't
/// produce one by one).
fn is_contract_value(label: &str, v: &str) -> bool {
    const REASONS: &[&str] = &[
        "ok",
        "missing_credentials",
        "malformed",
        "bad_signature",
        "unknown_key",
        "alg_not_allowed",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "revoked",
        "session_not_found",
        "bad_cookie_signature",
        "insufficient_role",
        "insufficient_scope",
        "csrf",
        "rate_limited",
        "store_unavailable",
        "keys_unavailable",
        "no_route",
        "upstream_error",
    ];
    match label {
        "reason" => REASONS.contains(&v),
        "outcome" => ["allowed", "denied", "error"].contains(&v),
        "method" => ["jwt", "session", "none"].contains(&v),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// promtool

fn promtool() -> Option<PathBuf> {
    let ok = Command::new("promtool")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(PathBuf::from("promtool"))
    } else {
        eprintln!(
            "\n!!! NOTE: `promtool` is not installed, so docs/alerts.yml and the dashboard's\n\
             !!! PromQL were NOT checked by promtool (apt-get install -y prometheus).\n"
        );
        None
    }
}

#[track_caller]
fn run_promtool(tool: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Grafana's variables replaced by what promtool can parse.
fn degrafana(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$route", ".*")
        .replace("$instance", ".*")
}

#[test]
fn alert_rules_and_dashboard_pass_promtool() {
    let Some(tool) = promtool() else { return };
    run_promtool(&tool, &["check", "rules", "docs/alerts.yml"]);
    run_promtool(
        &tool,
        &["test", "rules", "tests/dashboards/alerts_test.yml"],
    );
    // the dashboard's expressions, as recording rules
    let dir = temp_dir("promtool");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&degrafana(expr)).unwrap()
        ));
    }
    let file = dir.join("dashboard_rules.yml");
    fs::write(&file, rules).unwrap();
    run_promtool(&tool, &["check", "rules", file.to_str().unwrap()]);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// the traffic

fn config(redis_url: &str, jwks_url: &str, dead: &str) -> String {
    GatewayConfig::new()
        .threads(2)
        .extra(&format!(
            r#"[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[store]
kind = "redis"
url = "{redis_url}"
on_error = "deny"

[upstreams.app]
addrs = ["{{upstream}}"]

[upstreams.dead]
addrs = ["{dead}"]

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"

[issuers.remote]
issuer = "https://remote.test"
audiences = ["api"]
algorithms = ["RS256"]
jwks_url = "{jwks_url}"
jwks_min_refresh = "1s"
jwks_cooldown = "1s"

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"

[[routes]]
name = "login"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 1
window = "1m"

[[routes]]
name = "broken"
path_prefix = "/broken/"
upstream = "dead"
auth = "none"
"#
        ))
        .toml()
}

fn remote_token(sub: &str) -> String {
    sign_kid(
        Algorithm::RS256,
        &rsa_key("rsa_priv.pem"),
        "k1",
        &claims("https://remote.test", sub),
    )
}

/// Scrapes until `ready(text)` or 15 s.
fn scrape_until(gw: &Gateway, ready: impl Fn(&str) -> bool) -> String {
    poll_until(Duration::from_secs(15), || {
        let t = gw.metrics();
        ready(&t).then_some(t)
    })
    .unwrap_or_else(|| gw.metrics())
}

fn has(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    metric(text, name, labels).is_some_and(|v| v > 0.0)
}

/// Drives the traffic and returns the final `/metrics` text.
fn drive_every_metric() -> String {
    let mut redis = RedisServer::start();
    let mut jwks = JwksServer::not_started(&jwks_doc(&[rs_jwk("k1")]));
    let up = Upstream::start();
    let template = config(&redis.url(), &jwks.url(), &dead_addr()).replace("{upstream}", &up.addr);
    let gw = Gateway::start(&template, &[HS_ENV, ADMIN_ENV]);

    // the remote issuer's JWKS has never loaded: 503 keys_unavailable, refresh errors
    let rs = remote_token("carol");
    let r = gw.get_bearer("/api/remote", &rs);
    assert_error(&r, 503, "unavailable", "keys_unavailable");
    let t = scrape_until(&gw, |t| {
        has(
            t,
            "authgate_jwks_refresh_total",
            &[("issuer", "remote"), ("result", "error")],
        )
    });
    assert!(
        has(
            &t,
            "authgate_jwks_refresh_total",
            &[("issuer", "remote"), ("result", "error")]
        ),
        "{t}"
    );
    // ...until the provider answers
    jwks.restart();
    let ok = poll_until(Duration::from_secs(15), || {
        (gw.get_bearer("/api/remote", &rs).status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "the remote issuer never loaded: {}",
        gw.logs()
    );

    // JWT allowed (two cache misses: a token is cached on its second
    // verification; then a hit), denied without credentials
    let alice = hs_token(&hs_claims("alice", json!({})));
    for _ in 0..3 {
        assert_eq!(gw.get_bearer("/api/a", &alice).status, 200);
    }
    assert_eq!(gw.get("/api/a", &[]).status, 401);
    // a gRPC request refused: a gRPC status (authgate_grpc_requests_total)
    let r = request(
        &gw.proxy_addr,
        "POST",
        "/api/a",
        &[("Content-Type", "application/grpc")],
        b"",
    );
    assert_eq!(r.header("grpc-status"), Some("16"), "{r:?}");
    // a rate-limited 429
    assert_eq!(
        request(&gw.proxy_addr, "POST", "/login", &[], b"x").status,
        200
    );
    let r = request(&gw.proxy_addr, "POST", "/login", &[], b"x");
    assert_eq!(r.status, 429, "{}", r.text());
    // an unreachable upstream
    let r = gw.get("/broken/x", &[]);
    assert_error(&r, 502, "bad_gateway", "upstream_error");
    // a revocation, and the revoked token presented
    let r = gw.admin_post("/admin/revoke", ADMIN_TOKEN, r#"{"sub": "alice"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_invalid(&gw.get_bearer("/api/a", &alice), "revoked", &alice);
    // a reload that works, one that is refused
    assert_eq!(gw.reload().status, 200);
    gw.write_config("[server\n");
    assert_eq!(gw.reload().status, 422);
    gw.write_config(&template);
    assert_eq!(gw.reload().status, 200);

    // Redis goes away: a rate-limit check and a revocation fail
    redis.kill();
    let r = poll_until(Duration::from_secs(15), || {
        let r = request(&gw.proxy_addr, "POST", "/login", &[], b"x");
        (r.status == 503).then_some(r)
    })
    .expect("no 503 from the rate-limited route with Redis down");
    assert_error(&r, 503, "unavailable", "store_unavailable");
    let r = gw.admin_post("/admin/revoke", ADMIN_TOKEN, r#"{"sub": "dave"}"#);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(gw.admin_get("/readyz").status, 503);

    let text = scrape_until(&gw, |t| {
        FAMILIES.iter().all(|(n, _)| {
            metric(t, &format!("{n}_count"), &[]).is_some() || metric(t, n, &[]).is_some()
        }) && has(
            t,
            "authgate_store_errors_total",
            &[("op", "revocation_write")],
        ) && has(t, "authgate_store_errors_total", &[("op", "ratelimit")])
    });
    drop(gw);
    drop(jwks);
    text
}

#[test]
fn every_metric_on_the_dashboard_and_in_the_alerts_exists() {
    let text = drive_every_metric();
    let scrape = parse_scrape(&text);
    let fams = families(&text);

    // the contract's metrics, with their types and the label values this traffic made
    for (name, kind) in FAMILIES {
        assert_eq!(
            fams.get(*name).map(String::as_str),
            Some(*kind),
            "# TYPE {name} {kind}\n{text}"
        );
    }
    let m = "authgate_requests_total";
    for (outcome, reason) in [
        ("allowed", "ok"),
        ("denied", "missing_credentials"),
        ("denied", "rate_limited"),
        ("denied", "revoked"),
        ("error", "keys_unavailable"),
        ("error", "upstream_error"),
        ("error", "store_unavailable"),
    ] {
        assert!(
            has(&text, m, &[("outcome", outcome), ("reason", reason)]),
            "{m} {outcome}/{reason}:\n{text}"
        );
    }
    for (name, labels) in [
        ("authgate_rate_limited_total", vec![("route", "login")]),
        ("authgate_revocations_total", vec![("kind", "sub")]),
        ("authgate_store_errors_total", vec![("op", "ratelimit")]),
        (
            "authgate_store_errors_total",
            vec![("op", "revocation_write")],
        ),
        ("authgate_store_errors_total", vec![("op", "ping")]),
        (
            "authgate_jwks_refresh_total",
            vec![("issuer", "remote"), ("result", "ok")],
        ),
        (
            "authgate_jwks_refresh_total",
            vec![("issuer", "remote"), ("result", "error")],
        ),
        ("authgate_config_reloads_total", vec![("result", "ok")]),
        ("authgate_config_reloads_total", vec![("result", "error")]),
        ("authgate_token_cache_total", vec![("result", "hit")]),
        ("authgate_token_cache_total", vec![("result", "miss")]),
        ("authgate_revocation_mirror_entries", vec![("kind", "sub")]),
        (
            "authgate_auth_duration_seconds_count",
            vec![("route", "api"), ("method", "jwt")],
        ),
        (
            "authgate_auth_duration_seconds_count",
            vec![("route", "login"), ("method", "none")],
        ),
        (
            "authgate_upstream_duration_seconds_count",
            vec![("route", "api")],
        ),
    ] {
        assert!(has(&text, name, &labels), "{name} {labels:?}:\n{text}");
    }

    // the dashboard and the alerts use only what exists
    let dash = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dash.len() >= 15, "{} dashboard queries", dash.len());
    for (what, expr) in dash.iter().chain(alerts.iter()) {
        check_expr(&scrape, &fams, what, expr);
    }

    // ...and cover everything that exists
    let used: BTreeSet<String> = dash
        .iter()
        .flat_map(|(_, e)| read_expr(e).0)
        .map(|s| s.name)
        .collect();
    let ops = fs::read_to_string(root().join("docs/operations.md")).unwrap();
    for fam in fams.keys().filter(|f| f.starts_with("authgate_")) {
        let on_dash = used.iter().any(|u| {
            u == fam
                || [
                    &format!("{fam}_bucket"),
                    &format!("{fam}_sum"),
                    &format!("{fam}_count"),
                ]
                .contains(&u)
        });
        assert!(on_dash, "{fam} is exported but not on the dashboard");
        assert!(
            ops.contains(&format!("`{fam}`")),
            "{fam} is not described in docs/operations.md"
        );
    }
    // every alert has its runbook section
    for (alert, _) in &alerts {
        assert!(
            ops.lines()
                .any(|l| l.starts_with('#') && l.trim_end().ends_with(&format!("Alert {alert}"))),
            "docs/operations.md has no `### Alert {alert}` section"
        );
    }
}

#[test]
fn the_expression_reader_finds_names_labels_and_values() {
    let (sel, by) = read_expr(
        r#"sum by (route, reason) (rate(authgate_requests_total{route=~"$route", outcome="error"}[5m])) / on() group_left sum(authgate_x_bucket) "authgate_not_a_name""#,
    );
    assert_eq!(by, vec!["route".to_string(), "reason".to_string()]);
    assert_eq!(sel.len(), 2, "{sel:?}");
    assert_eq!(sel[0].name, "authgate_requests_total");
    assert_eq!(
        sel[0].matchers,
        vec![
            ("route".into(), "=~".into(), "$route".into()),
            ("outcome".into(), "=".into(), "error".into())
        ]
    );
    assert_eq!(sel[1].name, "authgate_x_bucket");
    // a wrong label value, a wrong label and a grouping label that doesn't exist fail
    let scrape = parse_scrape(
        "authgate_requests_total{route=\"api\",outcome=\"allowed\",reason=\"ok\"} 1\n",
    );
    let fams = families("# TYPE authgate_requests_total counter\n");
    let ok = r#"sum by (route) (authgate_requests_total{outcome="allowed"})"#;
    check_expr(&scrape, &fams, "ok", ok);
    for bad in [
        r#"authgate_requests_total{outcome="error"}"#,
        r#"authgate_requests_total{result="ok"}"#,
        r#"sum by (op) (authgate_requests_total)"#,
        r#"authgate_request_total"#,
        r#"authgate_requests_total{reason=~"ok|nope"}"#,
    ] {
        let r = std::panic::catch_unwind(|| check_expr(&scrape, &fams, "bad", bad));
        assert!(r.is_err(), "{bad} passed");
    }
}

// ---------------------------------------------------------------------------
// docker/: no Docker engine runs the tests, so check what can be checked here

/// `docker/gateway.toml` passes `authgate check` with the environment compose.yaml
/// passes (addresses of compose services swapped for loopback ones, the assertion
/// key generated), every `*_env` it names is set by compose.yaml, the assertion key
/// path is the compose secret's mount point, and the Dockerfile runs that config as
/// a non-root user.
#[test]
fn docker_demo_config_and_compose_agree_and_pass_check() {
    let docker = root().join("docker");
    let config = fs::read_to_string(docker.join("gateway.toml")).unwrap();
    let compose = fs::read_to_string(docker.join("compose.yaml")).unwrap();
    let dockerfile = fs::read_to_string(docker.join("Dockerfile")).unwrap();

    // every variable the config names is in the authgate service's environment
    let mut vars = Vec::new();
    for line in config.lines() {
        let line = line.split('#').next().unwrap();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim().ends_with("_env") {
            for v in value.split('"').skip(1).step_by(2) {
                vars.push(v.to_string());
            }
        }
    }
    assert!(vars.len() >= 3, "{vars:?}");
    for v in &vars {
        assert!(
            compose.contains(&format!("      {v}: ${{{v}:?")),
            "compose.yaml does not pass {v} (as `{v}: ${{{v}:?...}}`)"
        );
    }
    // the assertion key is the compose secret
    assert!(config.contains(r#"key_file = "/run/secrets/assertion_key""#));
    assert!(compose.contains("target: assertion_key"));
    assert!(compose.contains("environment: ASSERTION_KEY"));
    // the image runs this config, unprivileged
    assert!(dockerfile.contains("COPY docker/gateway.toml /etc/authgate/gateway.toml"));
    assert!(dockerfile.contains(r#"CMD ["serve", "--config", "/etc/authgate/gateway.toml"]"#));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    for port in ["8080", "9090"] {
        assert!(config.contains(&format!("0.0.0.0:{port}")), "{port}");
        assert!(
            compose.contains(&format!("\"127.0.0.1:{port}:{port}\"")),
            "{port} published on loopback"
        );
    }

    // `authgate check` with the compose environment
    let dir = temp_dir("docker-check");
    let key = dir.join("assertion_key.pem");
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let local = config
        .replace("backend:3000", "127.0.0.1:3000")
        .replace("/run/secrets/assertion_key", key.to_str().unwrap());
    assert_ne!(local, config);
    fs::write(dir.join("gateway.toml"), &local).unwrap();
    let values: Vec<(String, String)> = vars
        .iter()
        .map(|v| (v.clone(), format!("demo-value-for-{v}-0123456789abcdef")))
        .collect();
    let env: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = run_cli(&["check", "--config", "gateway.toml"], &env, &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "check failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("config ok"), "{stdout}");
    // and it is not passing by accident: without the variables it fails
    let out = run_cli(&["check", "--config", "gateway.toml"], &[], &dir);
    assert_eq!(out.status.code(), Some(2));
    let _ = fs::remove_dir_all(&dir);
}
