//! Interop with the real libraries: the Express app in `tests/express/`
//! (express 4, express-session 1.18, connect-redis 7 on the `redis` v4 client,
//! pinned by its package-lock.json) logs users in through authgate; its
//! Set-Cookie opens a session route with `X-Auth-Subject` = the app's user id,
//! a cookie signed by an app instance still on the previous secret verifies,
//! and the app's logout (`req.session.destroy()`) closes the session within 1 s.
//!
//! Runs `tests/express/setup.sh` (npm ci, quick when already installed) itself.
//! Skips, loudly, only when `node` is not installed at all.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn express_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/express")
}

/// False (after a loud message) when `node` is not installed at all; otherwise
/// runs setup.sh once per process and panics if it fails.
fn node_ready() -> bool {
    if Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! SKIPPED: `node` is not installed, so the express-session interop\n\
             !!! test (tests/session_express.rs) did NOT run. Install Node.js >= 18\n\
             !!! and npm (CI must have them).\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return false;
    }
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let result = SETUP.get_or_init(|| {
        let out = Command::new("bash")
            .arg(express_dir().join("setup.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run setup.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/express/setup.sh failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    true
}

/// `node server.js` on a free port.
struct ExpressApp {
    addr: String,
    log: PathBuf,
    child: Child,
}

impl ExpressApp {
    /// Starts the app signing with `current` (and accepting `previous`), waits for `/health`.
    fn start(redis_url: &str, current: &str, previous: &str) -> ExpressApp {
        let port = free_port();
        let log = temp_dir("express").join("express.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("node")
            .arg("server.js")
            .current_dir(express_dir())
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .env("SESSION_SECRET_CURRENT", current)
            .env("SESSION_SECRET_PREVIOUS", previous)
            .env("NODE_ENV", "production")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn node");
        let mut app = ExpressApp {
            addr: format!("127.0.0.1:{port}"),
            log,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = app.child.try_wait().unwrap() {
                panic!("the express app exited ({status}):\n{}", app.logs());
            }
            if try_request(&app.addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200) {
                return app;
            }
            assert!(
                Instant::now() < deadline,
                "the express app did not answer /health within 20 s:\n{}",
                app.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ExpressApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("express app log:\n{}", self.logs());
        }
    }
}

fn config(redis_url: &str, express: &str) -> String {
    GatewayConfig::new()
        .threads(2)
        .extra(&format!(
            r#"[store]
kind = "redis"
url = "{redis_url}"
on_error = "deny"

[upstreams.app]
addrs = ["{{upstream}}"]

[upstreams.express]
addrs = ["{express}"]

[sessions]
cookie = "sid"
secrets_env = ["SESSION_SECRET_CURRENT", "SESSION_SECRET_PREVIOUS"]
key_prefix = "sess:"
rolling = false
identity = {{ subject = "userId", roles = "role" }}

[[routes]]
name = "login"
path = "/login"
upstream = "express"
auth = "none"

[[routes]]
name = "logout"
path = "/logout"
upstream = "express"
auth = "none"

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"
login_redirect = "/login"
require = {{ roles = ["admin"] }}
"#
        ))
        .toml()
}

/// The `sid=<value>` pair of the response's Set-Cookie for `sid`, and its attributes.
fn set_cookie(r: &Response) -> (String, String) {
    let line = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .find(|v| v.starts_with("sid="))
        .unwrap_or_else(|| panic!("no Set-Cookie: sid=... in {:?}", r.headers));
    let (pair, attrs) = line.split_once(';').unwrap_or((&line, ""));
    (pair.to_string(), attrs.to_string())
}

/// The session id inside an express-session cookie value.
fn sid_of(pair: &str) -> String {
    let value = pair.strip_prefix("sid=").unwrap();
    let decoded = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .unwrap();
    let signed = decoded.strip_prefix("s:").expect("a signed cookie");
    signed.rsplit_once('.').unwrap().0.to_string()
}

fn login(addr: &str, content_type: &str, body: &str) -> (Response, String) {
    let r = request(
        addr,
        "POST",
        "/login",
        &[("Content-Type", content_type)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "login {body}: {}", r.text());
    let (pair, _) = set_cookie(&r);
    (r, pair)
}

#[test]
fn express_session_login_and_logout_through_the_gateway() {
    if !node_ready() {
        return;
    }
    let redis = RedisServer::start();
    let app = ExpressApp::start(
        &redis.url(),
        SESSION_SECRET_CURRENT,
        SESSION_SECRET_PREVIOUS,
    );
    let env = [SESSION_ENV[0], SESSION_ENV[1]];
    let (gw, up) = Gateway::with_upstream(&config(&redis.url(), &app.addr), &env);

    // log in through the gateway (JSON body)
    let (r, alice) = login(&gw.proxy_addr, "application/json", r#"{"user":"alice"}"#);
    let (_, attrs) = set_cookie(&r);
    assert!(attrs.contains("HttpOnly"), "{attrs}");
    let sid = sid_of(&alice);
    assert_eq!(r.json()["sid"], json!(sid));
    assert_eq!(
        alice,
        format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT)),
        "express-session signs differently from cookie-signature as the tests compute it"
    );

    // what connect-redis stored
    let key = format!("sess:{sid}");
    let stored: Value = serde_json::from_str(&redis.cmd(&["GET", &key])).unwrap();
    eprintln!("connect-redis stored {key} = {stored}");
    assert_eq!(stored["userId"], json!("alice"));
    assert_eq!(stored["role"], json!("admin"));
    // express-session stores `expires - Date.now()` at save time: the
    // configured hour, or a millisecond under it when the clock ticked
    let max_age = stored["cookie"]["originalMaxAge"].as_i64().unwrap_or(0);
    assert!(
        (3_599_000..=3_600_000).contains(&max_age),
        "originalMaxAge {max_age}"
    );
    assert_eq!(stored["cookie"]["httpOnly"], json!(true));
    assert_eq!(stored["cookie"]["path"], json!("/"));
    assert!(stored["cookie"]["expires"].is_string(), "{stored}");
    let ttl: i64 = redis.cmd(&["TTL", &key]).parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL {ttl}");

    // the Set-Cookie opens the session route
    let r = gw.get("/app/x", &[("Cookie", &alice)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("session"));
    assert_eq!(seen.header("x-auth-roles").as_deref(), Some("admin"));
    assert_eq!(seen.header("cookie").as_deref(), Some(alice.as_str()));

    // a form login, and a numeric user id (stored as a JSON number)
    let (_, bob) = login(
        &gw.proxy_addr,
        "application/x-www-form-urlencoded",
        "user=bob",
    );
    let r = gw.get("/app/b", &[("Cookie", &bob)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("bob"));
    let (_, num) = login(&gw.proxy_addr, "application/json", r#"{"user":42}"#);
    let stored: Value =
        serde_json::from_str(&redis.cmd(&["GET", &format!("sess:{}", sid_of(&num))])).unwrap();
    assert_eq!(stored["userId"], json!(42), "{stored}");
    let r = gw.get("/app/n", &[("Cookie", &num)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("42"));

    // an app instance not rotated yet signs with what the gateway calls the previous secret
    let old_app = ExpressApp::start(
        &redis.url(),
        SESSION_SECRET_PREVIOUS,
        SESSION_SECRET_CURRENT,
    );
    let (_, carol) = login(&old_app.addr, "application/json", r#"{"user":"carol"}"#);
    assert_eq!(
        carol,
        format!(
            "sid={}",
            session_cookie(&sid_of(&carol), SESSION_SECRET_PREVIOUS)
        )
    );
    let r = gw.get("/app/c", &[("Cookie", &carol)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("carol"));
    drop(old_app);

    // the gateway serves alice from its cache now (so the logout tests invalidation)
    let cached = poll_until(Duration::from_secs(5), || {
        assert_eq!(gw.get("/app/x", &[("Cookie", &alice)]).status, 200);
        std::thread::sleep(Duration::from_millis(200));
        let before = redis.command_calls("get");
        assert_eq!(gw.get("/app/x", &[("Cookie", &alice)]).status, 200);
        (redis.command_calls("get") == before).then_some(())
    });
    assert!(
        cached.is_some(),
        "alice's session is never served from cache"
    );

    // logout through the gateway (auth = "none", same-origin)
    let origin = format!("http://{}", gw.proxy_addr);
    let r = request(
        &gw.proxy_addr,
        "POST",
        "/logout",
        &[("Cookie", &alice), ("Origin", &origin)],
        b"",
    );
    assert_eq!(r.status, 200, "logout: {}", r.text());
    assert_eq!(r.json()["sid"], json!(sid));
    assert_eq!(redis.cmd(&["EXISTS", &key]), "0", "destroy left the key");
    let denied = poll_until(Duration::from_secs(1), || {
        let r = gw.get("/app/x", &[("Cookie", &alice)]);
        (r.status != 200).then_some(r)
    })
    .expect("alice's session still opened /app/ 1 s after the app's logout");
    assert_invalid(&denied, "session_not_found", &alice);
    // a browser is sent to log in again
    let r = gw.get("/app/x", &[("Cookie", &alice), ("Accept", "text/html")]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/login?return_to=%2Fapp%2Fx"));
    // the other sessions are untouched
    let r = gw.get("/app/b", &[("Cookie", &bob)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("bob"));
    drop(gw);
    drop(app);
}
