//! Hot reload: `POST /admin/reload` (admin token; 200 `{"reloaded":true,"summary"}`;
//! an invalid file is 422 `{"error":"invalid_config","message":"FILE:LINE:COL: ..."}`
//! and the old config keeps serving) and SIGHUP; `authgate_config_reloads_total`;
//! 20 reloads (valid and invalid alternately) under continuous keep-alive and
//! new-connection traffic with no failure other than what the config in force
//! implies; a changed `[server] listen` keeps the old listener (warning) while the
//! rest applies; a changed `[store]` or an added `[sessions]` is refused.

mod common;

use common::ops::*;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const RELOADS: &str = "authgate_config_reloads_total";

/// The base config plus the admin token and an open route.
fn base() -> String {
    GatewayConfig::base()
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .open_route("open", "/open/")
        .toml()
}

const NEW_ROUTE: &str = r#"
[[routes]]
name = "new"
path_prefix = "/new/"
upstream = "app"
auth = "jwt"
"#;

fn reloads(gw: &Gateway, result: &str) -> f64 {
    metric(&gw.metrics(), RELOADS, &[("result", result)]).unwrap_or(0.0)
}

/// The `FILE:LINE:COL: message` lines of a 422 message for `file`.
fn positions(message: &str, file: &str) -> Vec<(usize, usize, String)> {
    message
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let mut p = rest.splitn(3, ':');
            Some((
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
                p.next()?.trim().to_string(),
            ))
        })
        .collect()
}

fn start() -> (Gateway, Upstream) {
    Gateway::with_upstream(&base(), &[HS_ENV, ADMIN_ENV])
}

/// Rewrites the config with `{upstream}` filled in.
fn write(gw: &Gateway, up: &Upstream, template: &str) {
    gw.write_config(&template.replace("{upstream}", &up.addr));
}

#[test]
fn admin_reload_applies_a_valid_file_and_keeps_serving_on_an_invalid_one() {
    let (gw, up) = start();
    let tok = hs_token(&hs_claims("alice", json!({})));
    assert_error(&gw.get_bearer("/new/x", &tok), 404, "not_found", "no_route");

    // the admin token is required
    let r = gw.admin_post("/admin/reload", "", "");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = gw.admin_post("/admin/reload", "wrong-token", "");
    assert_eq!(r.status, 401, "{}", r.text());

    // unchanged file: a valid reload
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["reloaded"], json!(true), "{body}");
    assert!(
        body["summary"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );

    // a new route appears
    write(&gw, &up, &format!("{}{NEW_ROUTE}", base()));
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["summary"]
            .as_str()
            .unwrap_or("")
            .contains("3 routes"),
        "summary should describe the new config: {}",
        r.text()
    );
    assert_eq!(gw.get_bearer("/new/x", &tok).status, 200);

    // an invalid file: 422 with FILE:LINE:COL, and nothing changes
    let bad = format!(
        "{}{NEW_ROUTE}\n[[routes]]\nname = \"broken\"\npath_prefix = \"/broken/\"\nupstream = \"nowhere\"\n",
        base()
    )
    .replace("{upstream}", &up.addr);
    gw.write_config(&bad);
    let r = gw.reload();
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], json!("invalid_config"), "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    let file = gw.config_path.to_str().unwrap();
    let at = positions(msg, file);
    let line = line_of(&bad, "\"nowhere\"");
    assert!(
        at.iter()
            .any(|(l, c, m)| *l == line && *c >= 1 && m.contains("nowhere")),
        "expected `{file}:{line}:COL: ...nowhere...` in {msg:?}"
    );
    assert_eq!(
        gw.get_bearer("/new/x", &tok).status,
        200,
        "old config serves"
    );
    assert_error(&gw.get("/broken/x", &[]), 404, "not_found", "no_route");

    // a TOML syntax error, and an unknown key: same
    for (what, text) in [
        ("syntax", format!("{}\n[[routes]\nname = ", base())),
        (
            "unknown key",
            format!("{}\ncolour = \"blue\"\n", base()).replace("{upstream}", &up.addr),
        ),
    ] {
        gw.write_config(&text);
        let r = gw.reload();
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            !positions(&msg, file).is_empty(),
            "{what}: no FILE:LINE:COL line in {msg:?}"
        );
        assert_eq!(gw.get_bearer("/new/x", &tok).status, 200, "{what}");
    }
    assert_eq!(gw.get("/open/x", &[]).status, 200);
    assert_eq!(reloads(&gw, "ok"), 2.0);
    assert_eq!(reloads(&gw, "error"), 3.0);

    // removing the route takes effect too
    write(&gw, &up, &base());
    assert_eq!(gw.reload().status, 200);
    assert_error(&gw.get_bearer("/new/x", &tok), 404, "not_found", "no_route");
    assert_eq!(reloads(&gw, "ok"), 3.0);
}

#[test]
fn reload_changes_require_and_the_admin_token() {
    let (gw, up) = start();
    let dir = temp_dir("reload-token");
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, "first-admin-token\n").unwrap();
    let tmpl = base()
        .replace(
            "token_env = \"AUTHGATE_ADMIN_TOKEN\"",
            &format!("token_file = \"{}\"", token_file.display()),
        )
        .replace("issuers = [\"hs\"]", "issuers = [\"hs\"]\n{require}");
    write(&gw, &up, &tmpl.replace("{require}", ""));
    assert_eq!(gw.reload().status, 200);
    // from now on the token comes from the file
    assert_eq!(gw.reload().status, 401, "the env token no longer works");
    let r = gw.admin_post("/admin/reload", "first-admin-token", "");
    assert_eq!(r.status, 200, "{}", r.text());

    let user = hs_token(&hs_claims("u", json!({"roles": ["user"]})));
    let admin = hs_token(&hs_claims("a", json!({"roles": ["admin"]})));
    assert_eq!(gw.get_bearer("/api/x", &user).status, 200);
    write(
        &gw,
        &up,
        &tmpl.replace("{require}", "require = { roles = [\"admin\"] }"),
    );
    std::fs::write(&token_file, "second-admin-token\n").unwrap();
    let r = gw.admin_post("/admin/reload", "first-admin-token", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.get_bearer("/api/x", &user);
    assert_error(&r, 403, "forbidden", "insufficient_role");
    assert_eq!(gw.get_bearer("/api/x", &admin).status, 200);
    assert_eq!(
        gw.admin_post("/admin/reload", "first-admin-token", "")
            .status,
        401
    );
    assert_eq!(
        gw.admin_post("/admin/reload", "second-admin-token", "")
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_admin_token_means_no_admin_reload() {
    let (gw, _up) = GatewayConfig::base().with_upstream(&[HS_ENV]);
    let r = gw.admin_post("/admin/reload", "anything", "");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_process_and_config() {
    let (mut gw, up) = start();
    let tok = hs_token(&hs_claims("alice", json!({})));
    write(&gw, &up, &format!("{}{NEW_ROUTE}", base()));
    gw.signal("-HUP");
    let ok = poll_until(Duration::from_secs(5), || {
        (gw.get_bearer("/new/x", &tok).status == 200).then_some(())
    });
    assert!(
        ok.is_some(),
        "route not applied after SIGHUP (alive: {})\n{}\n{}",
        gw.alive(),
        gw.stderr(),
        gw.logs()
    );
    assert!(gw.alive());
    let ok = poll_until(Duration::from_secs(5), || {
        (reloads(&gw, "ok") == 1.0).then_some(())
    });
    assert!(ok.is_some(), "{}", gw.metrics());

    gw.write_config("[server]\nlisten = ");
    gw.signal("-HUP");
    let ok = poll_until(Duration::from_secs(5), || {
        (reloads(&gw, "error") == 1.0).then_some(())
    });
    assert!(
        ok.is_some(),
        "invalid file + SIGHUP not counted\n{}",
        gw.logs()
    );
    assert!(
        gw.alive(),
        "SIGHUP with an invalid file must not stop the gateway"
    );
    assert_eq!(gw.get_bearer("/new/x", &tok).status, 200);
    assert_eq!(gw.get_bearer("/api/x", &tok).status, 200);
    // the metric is counted before the line is logged, and lines reach
    // stdout through the log writer's thread: wait for it
    let logged = poll_until(Duration::from_secs(5), || {
        let n = gw
            .log_events("config reload rejected; the running config is kept")
            .len();
        (n >= 1).then_some(n)
    });
    assert_eq!(logged, Some(1), "{}", gw.logs());

    // several SIGHUPs in a row: still alive, still serving
    write(&gw, &up, &base());
    for _ in 0..3 {
        gw.signal("-HUP");
    }
    let ok = poll_until(Duration::from_secs(5), || {
        (gw.get_bearer("/new/x", &tok).status == 404).then_some(())
    });
    assert!(ok.is_some());
    assert!(gw.alive());
    assert_eq!(gw.get_bearer("/api/x", &tok).status, 200);
}

/// What the client saw: (start, end, path, status or error).
type Seen = (Instant, Instant, &'static str, Result<u16, String>);

/// Config states of the reload-under-load test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    /// `/api/` requires role admin, no `/new/` route.
    A,
    /// `/api/` has no require, `/new/` exists.
    B,
}

fn expected(state: St, path: &str) -> u16 {
    match (state, path) {
        (_, "/open/x") => 200,
        (St::A, "/api/x") => 403,
        (St::B, "/api/x") => 200,
        (St::A, "/new/x") => 404,
        (St::B, "/new/x") => 200,
        _ => unreachable!(),
    }
}

fn state_config(state: St) -> String {
    match state {
        St::A => base().replace(
            "issuers = [\"hs\"]",
            "issuers = [\"hs\"]\nrequire = { roles = [\"admin\"] }",
        ),
        St::B => format!("{}{NEW_ROUTE}", base()),
    }
}

#[test]
fn twenty_reloads_under_load_fail_no_request() {
    let (gw, up) = Gateway::with_upstream(&state_config(St::A), &[HS_ENV, ADMIN_ENV]);
    let tok = hs_token(&hs_claims(
        "loader",
        json!({"roles": ["user"], "exp": now() + 600}),
    ));
    let auth = format!("Bearer {tok}");
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let paths: [&'static str; 3] = ["/api/x", "/new/x", "/open/x"];

    let mut clients = Vec::new();
    for keepalive in [true, false, true, false] {
        let (addr, auth, stop, seen) = (
            gw.proxy_addr.clone(),
            auth.clone(),
            stop.clone(),
            seen.clone(),
        );
        clients.push(thread::spawn(move || {
            let mut ka = KeepAlive::new(&addr);
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let path = paths[i % paths.len()];
                i += 1;
                let t0 = Instant::now();
                let headers = [("Authorization", auth.as_str())];
                let result = if keepalive {
                    ka.get(path, &headers)
                } else {
                    try_request(&addr, "GET", path, &headers, b"")
                };
                let t1 = Instant::now();
                seen.lock().unwrap().push((
                    t0,
                    t1,
                    path,
                    result.map(|r| r.status).map_err(|e| e.to_string()),
                ));
            }
            ka.connects
        }));
    }

    // (sent, returned, state) of every valid reload; the first is the start-up config
    let t_start = Instant::now();
    let mut applied: Vec<(Instant, Instant, St)> = vec![(t_start, t_start, St::A)];
    let mut state = St::A;
    let file = gw.config_path.to_str().unwrap().to_string();
    for n in 0..20 {
        thread::sleep(Duration::from_millis(120));
        let next = if state == St::A { St::B } else { St::A };
        let valid = n % 2 == 0;
        let text = if valid {
            state_config(next)
        } else {
            // the other state, plus an error: must change nothing
            let broken = match n % 6 {
                1 => "\ncolour = \"blue\"\n".to_string(),
                3 => "\n[[routes]]\nname = \"x\"\npath_prefix = \"/x/\"\nupstream = \"nowhere\"\n"
                    .to_string(),
                _ => "\n[[routes]\n".to_string(),
            };
            format!("{}{broken}", state_config(next))
        };
        write(&gw, &up, &text);
        let sent = Instant::now();
        let r = gw.reload();
        let returned = Instant::now();
        if valid {
            assert_eq!(r.status, 200, "reload {n}: {}", r.text());
            state = next;
            applied.push((sent, returned, state));
        } else {
            assert_eq!(r.status, 422, "reload {n}: {}", r.text());
            let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
            assert!(!positions(&msg, &file).is_empty(), "reload {n}: {msg}");
        }
        // the config in force right after the answer
        for path in paths {
            let r = gw.get_bearer(path, &tok);
            assert_eq!(
                r.status,
                expected(state, path),
                "after reload {n} ({state:?}) {path}: {}",
                r.text()
            );
        }
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let connects: Vec<usize> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let seen = seen.lock().unwrap();
    let mut failures = Vec::new();
    let mut by_status = std::collections::BTreeMap::new();
    for (s, e, path, result) in seen.iter() {
        // configs possibly in force during [s, e]: config k from its reload's start
        // until the next valid reload's answer
        let allowed: Vec<u16> = applied
            .iter()
            .enumerate()
            .filter(|(k, (sent, _, _))| {
                let until = applied.get(k + 1).map(|(_, ret, _)| *ret);
                (*k == 0 || *sent <= *e) && until.is_none_or(|u| *s <= u)
            })
            .map(|(_, (_, _, st))| expected(*st, path))
            .collect();
        match result {
            Ok(status) => {
                *by_status.entry((*path, *status)).or_insert(0usize) += 1;
                if !allowed.contains(status) {
                    failures.push(format!("{path}: {status}, allowed {allowed:?}"));
                }
            }
            Err(err) => failures.push(format!("{path}: {err}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        seen.len(),
        &failures[..failures.len().min(20)]
    );
    eprintln!(
        "{} requests, connections opened by each client: {connects:?}; {by_status:?}",
        seen.len()
    );
    // both states were seen by the clients, keep-alive was used
    for key in [
        ("/new/x", 200),
        ("/new/x", 404),
        ("/api/x", 200),
        ("/api/x", 403),
    ] {
        assert!(
            by_status.contains_key(&key),
            "{key:?} never seen: {by_status:?}"
        );
    }
    for c in [connects[0], connects[2]] {
        assert!(
            c < seen.len() / 8,
            "a keep-alive client opened {c} connections"
        );
    }
    assert_eq!(reloads(&gw, "ok"), 10.0);
    assert_eq!(reloads(&gw, "error"), 10.0);
    let text = gw.metrics();
    let errors = metric(&text, "authgate_requests_total", &[("outcome", "error")]);
    assert_eq!(errors, None, "no request may end in an error: {text}");
}

#[test]
fn a_changed_listen_keeps_the_old_listener_and_applies_the_rest() {
    let (gw, up) = start();
    let tok = hs_token(&hs_claims("alice", json!({})));
    let new_listen = format!("127.0.0.1:{}", free_port());
    let text = format!("{}{NEW_ROUTE}", base()).replace(
        "listen = \"{proxy}\"",
        &format!("listen = \"{new_listen}\""),
    );
    assert!(text.contains(&new_listen));
    write(&gw, &up, &text);
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let summary = r.json()["summary"].as_str().unwrap_or_default().to_string();
    assert!(
        !summary.contains(&new_listen),
        "the summary describes the running config, which keeps the old listener: {summary}"
    );
    assert_eq!(
        gw.get_bearer("/new/x", &tok).status,
        200,
        "the rest applies"
    );
    assert_eq!(gw.get_bearer("/api/x", &tok).status, 200);
    assert!(
        std::net::TcpStream::connect(&new_listen).is_err(),
        "nothing should listen on the new address"
    );
    let warned = poll_until(Duration::from_secs(5), || {
        gw.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                field_str(v, "level").as_deref() == Some("WARN")
                    && field_str(v, "setting").as_deref() == Some("server.listen")
            })
    });
    assert!(
        warned.is_some(),
        "no warning naming server.listen:\n{}",
        gw.logs()
    );
    assert_eq!(reloads(&gw, "ok"), 1.0);
}

#[test]
fn a_changed_store_is_refused_and_changes_nothing() {
    let (gw, up) = start();
    let tok = hs_token(&hs_claims("alice", json!({})));
    let text = format!(
        "{}{NEW_ROUTE}\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\n",
        base(),
        free_port()
    );
    write(&gw, &up, &text);
    let r = gw.reload();
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], json!("invalid_config"), "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("store"),
        "{body}"
    );
    assert_error(&gw.get_bearer("/new/x", &tok), 404, "not_found", "no_route");
    assert_eq!(
        gw.admin_get("/readyz").status,
        200,
        "still the memory store"
    );
    assert_eq!(reloads(&gw, "error"), 1.0);
    assert_eq!(reloads(&gw, "ok"), 0.0);
}

#[test]
fn adding_sessions_is_refused_and_changes_nothing() {
    let redis = RedisServer::start();
    let with_store = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        base(),
        redis.url()
    );
    let mut env = vec![HS_ENV, ADMIN_ENV];
    env.extend(SESSION_ENV);
    let (gw, up) = Gateway::with_upstream(&with_store, &env);
    let tok = hs_token(&hs_claims("alice", json!({})));
    let text = format!(
        "{with_store}{NEW_ROUTE}
[sessions]
cookie = \"sessionId\"
secrets_env = [\"SESSION_SECRET_CURRENT\"]
identity = {{ subject = \"userId\" }}

[[routes]]
name = \"app\"
path_prefix = \"/app/\"
upstream = \"app\"
auth = \"session\"
"
    );
    write(&gw, &up, &text);
    let r = gw.reload();
    assert_eq!(r.status, 422, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], json!("invalid_config"), "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("sessions"),
        "{body}"
    );
    assert_error(&gw.get_bearer("/new/x", &tok), 404, "not_found", "no_route");
    assert_error(&gw.get("/app/x", &[]), 404, "not_found", "no_route");
    assert_eq!(gw.get_bearer("/api/x", &tok).status, 200);
    assert_eq!(reloads(&gw, "error"), 1.0);
}
