//! Session-cookie routes (express-session + connect-redis) against a real
//! `redis-server` that each test starts on a free loopback port: identity from
//! the stored JSON (current and previous secret, `secrets_files`, dotted paths),
//! bad signatures (no Redis lookup for them), unknown and anonymous sessions,
//! `cookie.expires`, an overwrite / `DEL` / `FLUSHDB` / key expiry seen within
//! 1 s, zero Redis commands per request at steady state, the rolling TTL and its
//! `touch_interval`, the browser login redirect, roles, CSRF, `jwt_or_session`,
//! `check` refusing sessions on the memory store, and Redis outages (killed,
//! paused, down at start-up): 503 without hanging, the gateway alive, recovery
//! without a restart.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const REQS: &str = "authgate_requests_total";
const STORE_ERRORS: &str = "authgate_store_errors_total";
/// What connect-redis sets: the key's TTL from `cookie.expires` (a day here).
const DAY_MS: i64 = 86_400_000;
/// The bound for a change in Redis to reach the gateway.
const ONE_SECOND: Duration = Duration::from_secs(1);

fn config(redis_url: &str) -> String {
    GatewayConfig::base()
        .extra(&format!(
            r#"[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"
login_redirect = "/login"

[[routes]]
name = "plain"
path_prefix = "/plain/"
upstream = "app"
auth = "session"

[[routes]]
name = "staff"
path_prefix = "/staff/"
upstream = "app"
auth = "session"
login_redirect = "/login"
require = {{ roles = ["admin"] }}

[[routes]]
name = "mixed"
path_prefix = "/mixed/"
upstream = "app"
auth = "jwt_or_session"
issuers = ["hs"]

[[routes]]
name = "login"
path = "/login"
upstream = "app"
auth = "none"

[store]
kind = "redis"
url = "{redis_url}"
on_error = "deny"

[sessions]
cookie = "sid"
secrets_env = ["SESSION_SECRET_CURRENT", "SESSION_SECRET_PREVIOUS"]
key_prefix = "sess:"
rolling = true
touch_interval = "1s"
identity = {{ subject = "userId", email = "email", roles = "role" }}
allowed_origins = ["https://app.example"]
"#
        ))
        .toml()
}

/// A gateway on a fresh Redis. Fields drop in order: the gateway goes first.
struct Env {
    gw: Gateway,
    up: Upstream,
    redis: RedisServer,
}

fn start() -> Env {
    start_with(|c| c)
}

/// Starts with `config()` passed through `edit`.
fn start_with(edit: impl FnOnce(String) -> String) -> Env {
    let redis = RedisServer::start();
    let env = [HS_ENV, SESSION_ENV[0], SESSION_ENV[1]];
    let (gw, up) = Gateway::with_upstream(&edit(config(&redis.url())), &env);
    Env { gw, up, redis }
}

impl Env {
    /// Stores a session as connect-redis does (`SET sess:<sid> <json> PX <ttl>`),
    /// `cookie.expires` a day ahead.
    fn put(&self, sid: &str, fields: Value) {
        self.put_raw(sid, &session_value(fields, DAY_MS, DAY_MS), DAY_MS);
    }

    fn put_raw(&self, sid: &str, value: &str, ttl_ms: i64) {
        let key = format!("sess:{sid}");
        let ok = self
            .redis
            .cmd(&["SET", &key, value, "PX", &ttl_ms.to_string()]);
        assert_eq!(ok, "OK");
    }

    /// A new stored session and its `Cookie` header (signed with the current secret).
    fn login(&self, tag: &str, fields: Value) -> (String, String) {
        let sid = new_sid(tag);
        self.put(&sid, fields);
        let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
        (sid, cookie)
    }

    fn get(&self, path: &str, cookie: &str) -> Response {
        self.gw.get(path, &[("Cookie", cookie)])
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        request(&self.gw.proxy_addr, method, path, headers, b"{\"x\":1}")
    }

    /// The request's own origin as the CSRF check sees it (`http://` + Host).
    fn own_origin(&self) -> String {
        format!("http://{}", self.gw.proxy_addr)
    }

    /// Sends requests with `cookie` until one is answered from the gateway's
    /// cache (no Redis GET), so the next ones hit the cache; false after 5 s.
    fn warm(&self, path: &str, cookie: &str) -> bool {
        poll_until(Duration::from_secs(5), || {
            let r = self.get(path, cookie);
            assert_eq!(r.status, 200, "{}", r.text());
            std::thread::sleep(Duration::from_millis(200));
            let before = self.redis.command_calls("get");
            let r = self.get(path, cookie);
            assert_eq!(r.status, 200, "{}", r.text());
            (self.redis.command_calls("get") == before).then_some(())
        })
        .is_some()
    }

    fn subject_seen(&self) -> Option<String> {
        self.up.last().header("x-auth-subject")
    }
}

/// Polls `/metrics` (recorded after the answer) until `name{labels}` reaches `want`.
#[track_caller]
fn assert_metric_reaches(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let mut last = None;
    let ok = poll_until(Duration::from_secs(5), || {
        last = metric(&gw.metrics(), name, labels);
        last.is_some_and(|v| v >= want).then_some(())
    });
    assert!(
        ok.is_some(),
        "{name}{labels:?} = {last:?}, expected >= {want}"
    );
}

#[test]
fn test_helper_signs_like_cookie_signature() {
    // cookie-signature's README vector: sign('hello', 'tobiiscool')
    assert_eq!(
        cookie_signature("hello", "tobiiscool"),
        "hello.DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI"
    );
    assert_eq!(
        session_cookie("hello", "tobiiscool"),
        "s%3Ahello.DGDUkGlIkCzPz%2BC0B064FNgHdEjox7ch8tOBGslZ5QI"
    );
}

#[test]
fn valid_cookie_maps_the_session_identity() {
    let env = start();
    let (sid, cookie) = env.login(
        "ident",
        json!({"userId": "u1", "email": "a@b.c", "role": "admin"}),
    );
    let cookie_header = format!("theme=dark; {cookie}; other=1");
    let r = env.gw.get(
        "/app/x?y=1",
        &[
            ("Cookie", &cookie_header),
            ("X-Auth-Subject", "mallory"),
            ("X-Auth-Issuer", "evil"),
            ("X-Auth-Roles", "root"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.up.last();
    assert_eq!(seen.path, "/app/x?y=1");
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some("u1"));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("session"));
    assert_eq!(seen.header("x-auth-email").as_deref(), Some("a@b.c"));
    assert_eq!(seen.header("x-auth-roles").as_deref(), Some("admin"));
    assert_eq!(seen.header("x-auth-issuer"), None);
    assert_eq!(
        seen.header("cookie").as_deref(),
        Some(cookie_header.as_str()),
        "the Cookie header is forwarded unchanged"
    );

    // the previous secret verifies too (rotation)
    let old = format!("sid={}", session_cookie(&sid, SESSION_SECRET_PREVIOUS));
    assert_ne!(old, cookie);
    let r = env.get("/app/old", &old);
    assert_eq!(r.status, 200, "previous secret: {}", r.text());
    assert_eq!(env.subject_seen().as_deref(), Some("u1"));

    // a numeric user id becomes a string, a role array is joined, no email: no header
    let (_, c2) = env.login("num", json!({"userId": 42, "role": ["admin", "dev"]}));
    let r = env.get("/app/n", &c2);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.up.last();
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some("42"));
    assert_eq!(seen.header("x-auth-roles").as_deref(), Some("admin,dev"));
    assert_eq!(seen.header("x-auth-email"), None);

    // the same session opens a jwt_or_session route and a role-restricted one
    let r = env.get("/mixed/m", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.up.last().header("x-auth-method").as_deref(),
        Some("session")
    );
    let r = env.get("/staff/s", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.hits(), 5);

    // log lines: auth=session with the subject; never the cookie, sid or secrets
    let lines = wait_request_logs(&env.gw, 5);
    let line = lines
        .iter()
        .find(|l| field_str(l, "path").as_deref() == Some("/app/x"))
        .unwrap_or_else(|| panic!("no log line for /app/x in {lines:?}"));
    assert_eq!(field_str(line, "auth").as_deref(), Some("session"));
    assert_eq!(field_str(line, "subject").as_deref(), Some("u1"));
    let all = format!("{}{}", env.gw.logs(), env.gw.stderr());
    for secret in [
        sid.as_str(),
        SESSION_SECRET_CURRENT,
        SESSION_SECRET_PREVIOUS,
        cookie.trim_start_matches("sid="),
    ] {
        assert!(!all.contains(secret), "logs contain {secret:?}");
    }
    let m = env.gw.metrics();
    assert!(
        metric(
            &m,
            "authgate_auth_duration_seconds_count",
            &[("route", "app"), ("method", "session")]
        )
        .is_some_and(|v| v >= 2.0),
        "no auth_duration sample with method=\"session\""
    );
}

#[test]
fn bad_signatures_are_rejected_without_reading_redis() {
    let env = start();
    let (sid, _) = env.login("sig", json!({"userId": "u1", "role": "admin"}));
    let good = cookie_signature(&sid, SESSION_SECRET_CURRENT);
    let sig = good.rsplit_once('.').unwrap().1.to_string();
    let flipped = {
        let mut s = sig.clone().into_bytes();
        let last = s.len() - 1;
        s[last] = if s[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(s).unwrap()
    };
    let other_sid_sig = cookie_signature("someone-else", SESSION_SECRET_CURRENT);
    let other_sig = other_sid_sig.rsplit_once('.').unwrap().1;
    let cases = [
        (
            "tampered signature",
            uri_component(&format!("s:{sid}.{flipped}")),
        ),
        (
            "another sid's signature",
            uri_component(&format!("s:{sid}.{other_sig}")),
        ),
        (
            "unknown secret",
            session_cookie(&sid, "a-secret-the-gateway-does-not-know"),
        ),
        ("unsigned", sid.clone()),
        (
            "unsigned with s: prefix",
            uri_component(&format!("s:{sid}")),
        ),
        (
            "padded signature",
            uri_component(&format!("s:{sid}.{sig}=")),
        ),
        (
            "truncated signature",
            uri_component(&format!("s:{sid}.{}", &sig[..20])),
        ),
        ("empty", String::new()),
    ];
    let gets_before = env.redis.command_calls("get");
    for (what, value) in &cases {
        let cookie = format!("sid={value}");
        let r = env.get("/app/x", &cookie);
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_invalid(&r, "bad_cookie_signature", value);
        assert!(!r.text().contains(&sid), "{what}: body leaks the sid");
    }
    assert_eq!(env.up.hits(), 0);
    assert_eq!(
        env.redis.command_calls("get"),
        gets_before,
        "a cookie whose signature does not verify must not cost a Redis lookup"
    );
    assert_metric_reaches(
        &env.gw,
        REQS,
        &[
            ("route", "app"),
            ("outcome", "denied"),
            ("reason", "bad_cookie_signature"),
        ],
        cases.len() as f64,
    );

    // no cookie, or only other cookies: missing credentials, the plain challenge
    let valid = session_cookie(&sid, SESSION_SECRET_CURRENT);
    for cookie in [None, Some(format!("connect.sid={valid}; theme=dark"))] {
        let r = match &cookie {
            Some(c) => env.get("/app/x", c),
            None => env.gw.get("/app/x", &[]),
        };
        assert_error(&r, 401, "unauthorized", "missing_credentials");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="authgate""#),
            "{cookie:?}"
        );
    }
    assert_eq!(env.up.hits(), 0);
}

#[test]
fn unknown_and_anonymous_sessions_are_session_not_found() {
    let env = start();
    // a correctly signed cookie for a sid that Redis does not have
    let cookie = format!(
        "sid={}",
        session_cookie(&new_sid("ghost"), SESSION_SECRET_CURRENT)
    );
    let r = env.get("/app/x", &cookie);
    assert_invalid(&r, "session_not_found", &cookie);

    // express-session's saveUninitialized sessions carry no user
    for fields in [
        json!({}),
        json!({"userId": null}),
        json!({"email": "a@b.c", "role": "admin"}),
    ] {
        let (_, cookie) = env.login("anon", fields.clone());
        let r = env.get("/app/x", &cookie);
        assert_invalid(&r, "session_not_found", &cookie);
        // ... and a jwt_or_session route without a Bearer says the same
        let r = env.get("/mixed/x", &cookie);
        assert_invalid(&r, "session_not_found", &cookie);
    }
    assert_eq!(env.up.hits(), 0);
    assert_metric_reaches(
        &env.gw,
        REQS,
        &[("route", "app"), ("reason", "session_not_found")],
        4.0,
    );
}

#[test]
fn expired_sessions_are_rejected() {
    let env = start();
    // cookie.expires already passed (Redis still has the key)
    let sid = new_sid("past");
    env.put_raw(
        &sid,
        &session_value(json!({"userId": "u1"}), DAY_MS, -1000),
        DAY_MS,
    );
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = env.get("/app/x", &cookie);
    assert_invalid(&r, "expired", &cookie);

    // cookie.expires passes while the session is in use (and cached)
    let sid = new_sid("soon");
    let expires_at = now_ms() + 2000;
    let value = json!({
        "cookie": {"originalMaxAge": 2000, "expires": iso_ms(expires_at), "httpOnly": true, "path": "/"},
        "userId": "u2"
    })
    .to_string();
    env.put_raw(&sid, &value, DAY_MS);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = env.get("/plain/x", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = env.get("/plain/x", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    let wait = expires_at - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
    let denied = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/x", &cookie);
        (r.status != 200).then_some(r)
    })
    .expect("a session whose cookie.expires passed was still accepted 1 s later");
    assert_invalid(&denied, "expired", &cookie);

    // the key itself expires in Redis (connect-redis's TTL)
    // (a browser-session cookie, no maxAge: connect-redis's default TTL, no rolling)
    let sid = new_sid("ttl");
    let value = json!({
        "cookie": {"originalMaxAge": null, "expires": null, "httpOnly": true, "path": "/"},
        "userId": "u3"
    })
    .to_string();
    env.put_raw(&sid, &value, 1500);
    let gone_at = Instant::now() + Duration::from_millis(1500);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    for _ in 0..2 {
        let r = env.get("/plain/y", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    std::thread::sleep(gone_at.saturating_duration_since(Instant::now()));
    let denied = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/y", &cookie);
        (r.status != 200).then_some(r)
    })
    .expect("a session whose Redis key expired was still accepted 1 s later");
    assert_invalid(&denied, "session_not_found", &cookie);
}

/// Commands a session lookup or touch could use (background work such as the
/// readiness PING, the tracking keep-alive or a revocation sync is not counted).
const SESSION_COMMANDS: &[&str] = &[
    "get",
    "getex",
    "mget",
    "pttl",
    "ttl",
    "exists",
    "pexpire",
    "expire",
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// `INFO commandstats` calls of the [`SESSION_COMMANDS`].
fn command_counts(redis: &RedisServer) -> std::collections::BTreeMap<String, u64> {
    redis
        .cmd(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .filter(|(name, _)| SESSION_COMMANDS.contains(&name.as_str()))
        .collect()
}

/// The commands Redis ran while `f` ran: name -> calls, only those that changed.
fn commands_during(redis: &RedisServer, f: impl FnOnce()) -> Vec<(String, u64)> {
    let before = command_counts(redis);
    f();
    command_counts(redis)
        .into_iter()
        .filter_map(|(name, n)| {
            let d = n - before.get(&name).copied().unwrap_or(0);
            (d > 0).then_some((name, d))
        })
        .collect()
}

/// 50 requests on one session, after the first ones filled the cache, cost Redis
/// nothing at all (no GET, no PTTL, no PEXPIRE).
fn steady_state_costs_no_redis_commands(edit: impl FnOnce(String) -> String) {
    let env = start_with(edit);
    let (_, cookie) = env.login("steady", json!({"userId": "u1", "role": "admin"}));
    // warm up: until one request runs no command (at most 5 s)
    let _ = poll_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(200));
        let cmds = commands_during(&env.redis, || {
            assert_eq!(env.get("/plain/x", &cookie).status, 200);
        });
        cmds.is_empty().then_some(())
    });
    let cmds = commands_during(&env.redis, || {
        for _ in 0..50 {
            let r = env.get("/plain/x", &cookie);
            assert_eq!(r.status, 200, "{}", r.text());
        }
    });
    assert!(
        cmds.is_empty(),
        "Redis commands run for 50 requests on one cached session: {cmds:?}"
    );
}

#[test]
fn steady_state_costs_no_redis_commands_without_rolling() {
    steady_state_costs_no_redis_commands(|c| c.replace("rolling = true", "rolling = false"));
}

/// With `rolling`, the one touch per `touch_interval` (an hour here, so that none
/// falls inside the measured window) must not cost a lookup per request either.
#[test]
fn steady_state_costs_no_redis_commands_with_rolling() {
    steady_state_costs_no_redis_commands(|c| {
        c.replace(r#"touch_interval = "1s""#, r#"touch_interval = "1h""#)
    });
}

/// An overwrite (SET) and a DEL by the application reach a cached session within 1 s.
fn del_and_overwrite_are_seen_within_a_second(rolling: bool) {
    let env = start_with(|c| c.replace("rolling = true", &format!("rolling = {rolling}")));
    let (sid, cookie) = env.login("del", json!({"userId": "u1", "role": "admin"}));
    let key = format!("sess:{sid}");
    let warm = |what: &str, cookie: &str| {
        if rolling {
            // (with rolling the cache may be defeated: the steady-state test says so)
            for _ in 0..3 {
                assert_eq!(env.get("/plain/x", cookie).status, 200);
                std::thread::sleep(Duration::from_millis(100));
            }
        } else {
            assert!(
                env.warm("/plain/x", cookie),
                "{what}: every request still reads Redis after 5 s: no local cache"
            );
        }
    };

    warm("before the SET", &cookie);
    env.put(&sid, json!({"userId": "u2", "role": "admin"}));
    let seen = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
        (env.subject_seen().as_deref() == Some("u2")).then_some(())
    });
    assert!(
        seen.is_some(),
        "the overwritten session still mapped to u1 after 1 s"
    );

    warm("before the DEL", &cookie);
    assert_eq!(env.redis.cmd(&["DEL", &key]), "1");
    let denied = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/x", &cookie);
        (r.status != 200).then_some(r)
    })
    .expect("a session deleted in Redis was still accepted 1 s later");
    assert_invalid(&denied, "session_not_found", &cookie);
    // and it stays rejected
    let r = env.get("/plain/x", &cookie);
    assert_invalid(&r, "session_not_found", &cookie);

    // FLUSHDB (an invalidation of everything) as well
    let (_, cookie) = env.login("flush", json!({"userId": "u3"}));
    warm("before FLUSHDB", &cookie);
    let r = env.get("/plain/x", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.redis.cmd(&["FLUSHDB"]), "OK");
    let denied = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/x", &cookie);
        (r.status != 200).then_some(r)
    })
    .expect("a session flushed from Redis was still accepted 1 s later");
    assert_invalid(&denied, "session_not_found", &cookie);
}

#[test]
fn del_and_overwrite_are_seen_within_a_second_without_rolling() {
    del_and_overwrite_are_seen_within_a_second(false);
}

#[test]
fn del_and_overwrite_are_seen_within_a_second_with_rolling() {
    del_and_overwrite_are_seen_within_a_second(true);
}

#[test]
fn rolling_rearms_the_ttl_to_original_max_age() {
    let env = start();
    let sid = new_sid("roll");
    let key = format!("sess:{sid}");
    env.put_raw(
        &sid,
        &session_value(json!({"userId": "u1"}), DAY_MS, DAY_MS),
        30_000,
    );
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = env.get("/plain/x", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut pttl = 0;
    let rearmed = poll_until(Duration::from_secs(5), || {
        pttl = env.redis.cmd(&["PTTL", &key]).parse::<i64>().unwrap();
        (pttl > 30_000).then_some(())
    });
    assert!(rearmed.is_some(), "PTTL still {pttl} ms after a request");
    assert!(
        pttl > DAY_MS - 60_000 && pttl <= DAY_MS,
        "PTTL {pttl} ms, expected cookie.originalMaxAge ({DAY_MS} ms)"
    );
}

#[test]
fn rolling_touches_at_most_once_per_touch_interval() {
    let env = start_with(|c| c.replace(r#"touch_interval = "1s""#, r#"touch_interval = "1h""#));
    // A TTL well below originalMaxAge: the session was last armed long ago,
    // so the first request re-arms it, and no other within the hour does.
    let sid = new_sid("touch");
    env.put_raw(
        &sid,
        &session_value(json!({"userId": "u1"}), DAY_MS, DAY_MS),
        30_000,
    );
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let before = env.redis.command_calls("pexpire");
    for _ in 0..20 {
        let r = env.get("/plain/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300)); // touches run in the background
    let touches = env.redis.command_calls("pexpire") - before;
    assert_eq!(
        touches, 1,
        "PEXPIRE calls for 20 requests of one session within touch_interval = 1h"
    );
}

#[test]
fn a_freshly_armed_session_is_not_touched_again_within_the_interval() {
    let env = start_with(|c| c.replace(r#"touch_interval = "1s""#, r#"touch_interval = "1h""#));
    let (_, cookie) = env.login("fresh", json!({"userId": "u1"}));
    let before = env.redis.command_calls("pexpire");
    for _ in 0..5 {
        let r = env.get("/plain/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        env.redis.command_calls("pexpire") - before,
        0,
        "a session whose TTL is already at originalMaxAge was re-armed"
    );
}

#[test]
fn without_rolling_the_ttl_is_left_alone() {
    let env = start_with(|c| c.replace("rolling = true", "rolling = false"));
    let sid = new_sid("still");
    let key = format!("sess:{sid}");
    env.put_raw(
        &sid,
        &session_value(json!({"userId": "u1"}), DAY_MS, DAY_MS),
        30_000,
    );
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    for _ in 0..3 {
        let r = env.get("/plain/x", &cookie);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    std::thread::sleep(Duration::from_millis(1500));
    let pttl: i64 = env.redis.cmd(&["PTTL", &key]).parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 30_000,
        "rolling = false changed the TTL: {pttl}"
    );
    assert_eq!(env.redis.command_calls("pexpire"), 0);
}

#[test]
fn browsers_are_redirected_to_the_login_page() {
    let env = start();
    let html = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let r = env.gw.get("/app/x?a=1", &[("Accept", html)]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/login?return_to=%2Fapp%2Fx%3Fa%3D1")
    );
    // every byte but [A-Za-z0-9] is encoded, '%' of the original included
    let r = env
        .gw
        .get("/app/a-b.c~d?q=%20x&y=1", &[("Accept", "text/html")]);
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/login?return_to=%2Fapp%2Fa%2Db%2Ec%7Ed%3Fq%3D%2520x%26y%3D1")
    );
    let r = request(
        &env.gw.proxy_addr,
        "HEAD",
        "/app/h",
        &[("Accept", "text/html")],
        b"",
    );
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/login?return_to=%2Fapp%2Fh"));

    // any "no valid session" answer becomes the redirect for a browser
    let (sid, _) = env.login("browser", json!({"userId": "u1", "role": "user"}));
    let expired = new_sid("browser-exp");
    env.put_raw(
        &expired,
        &session_value(json!({"userId": "u1"}), DAY_MS, -1000),
        DAY_MS,
    );
    for (what, cookie) in [
        (
            "bad signature",
            format!("sid={}", session_cookie(&sid, "wrong-secret")),
        ),
        (
            "unknown sid",
            format!(
                "sid={}",
                session_cookie(&new_sid("none"), SESSION_SECRET_CURRENT)
            ),
        ),
        (
            "expired",
            format!("sid={}", session_cookie(&expired, SESSION_SECRET_CURRENT)),
        ),
    ] {
        let r = env
            .gw
            .get("/app/p", &[("Accept", "text/html"), ("Cookie", &cookie)]);
        assert_eq!(r.status, 302, "{what}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some("/login?return_to=%2Fapp%2Fp"),
            "{what}"
        );
    }
    assert_eq!(env.up.hits(), 0);

    // not a browser navigation: the JSON 401
    let r = env.gw.get("/app/x", &[("Accept", "application/json")]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    let r = request(
        &env.gw.proxy_addr,
        "POST",
        "/app/x",
        &[("Accept", "text/html")],
        b"a=1",
    );
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    // a route without login_redirect
    let r = env.gw.get("/plain/x", &[("Accept", "text/html")]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    // a valid session lacking the role: 403, not a redirect
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = env
        .gw
        .get("/staff/x", &[("Accept", "text/html"), ("Cookie", &cookie)]);
    assert_error(&r, 403, "forbidden", "insufficient_role");
    // and a valid one goes through
    let r = env
        .gw
        .get("/app/x", &[("Accept", "text/html"), ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.up.hits(), 1);
}

#[test]
fn required_roles_apply_to_sessions() {
    let env = start();
    for (fields, want) in [
        (json!({"userId": "u1", "role": "user"}), 403),
        (json!({"userId": "u1"}), 403),
        (json!({"userId": "u1", "role": ["dev", "admin"]}), 200),
        (json!({"userId": "u1", "role": "admin"}), 200),
    ] {
        let (_, cookie) = env.login("roles", fields.clone());
        let r = env.get("/staff/x", &cookie);
        if want == 403 {
            assert_error(&r, 403, "forbidden", "insufficient_role");
            let www = r.header("www-authenticate").unwrap_or_default();
            assert!(
                www.contains(r#"error="insufficient_scope""#),
                "{fields}: WWW-Authenticate {www:?}"
            );
        } else {
            assert_eq!(r.status, 200, "{fields}: {}", r.text());
        }
    }
    assert_eq!(env.up.hits(), 2);
}

#[test]
fn cross_site_unsafe_requests_are_csrf() {
    let env = start();
    let (_, cookie) = env.login("csrf", json!({"userId": "u1", "role": "admin"}));
    let own = env.own_origin();
    let other_port = format!("http://127.0.0.1:{}", free_port());
    let https_own = format!("https://{}", env.gw.proxy_addr);
    let own_page = format!("{own}/app/page?x=1");
    let c = cookie.as_str();

    let denied: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("POST", vec![("Sec-Fetch-Site", "cross-site")]),
        (
            "POST",
            vec![("Sec-Fetch-Site", "cross-site"), ("Origin", &own)],
        ),
        ("POST", vec![("Origin", "https://evil.example")]),
        ("POST", vec![("Origin", "null")]),
        ("POST", vec![("Origin", &other_port)]),
        ("POST", vec![("Origin", &https_own)]),
        ("POST", vec![("Referer", "https://evil.example/form")]),
        ("PUT", vec![("Origin", "https://evil.example")]),
        ("PATCH", vec![("Origin", "https://evil.example")]),
        ("DELETE", vec![("Origin", "https://evil.example")]),
    ];
    for (method, headers) in &denied {
        let mut h = headers.clone();
        h.push(("Cookie", c));
        let r = env.request(method, "/app/x", &h);
        assert_error(&r, 403, "forbidden", "csrf");
        assert_eq!(
            r.header("www-authenticate"),
            None,
            "{method} {headers:?}: a CSRF 403 has no challenge"
        );
    }
    // cookie-authenticated on a jwt_or_session route too
    let r = env.request(
        "POST",
        "/mixed/x",
        &[("Cookie", c), ("Origin", "https://evil.example")],
    );
    assert_error(&r, 403, "forbidden", "csrf");
    assert_eq!(env.up.hits(), 0, "a CSRF request reached the upstream");
    assert_metric_reaches(
        &env.gw,
        REQS,
        &[("route", "app"), ("outcome", "denied"), ("reason", "csrf")],
        denied.len() as f64,
    );

    let allowed: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("POST", vec![("Origin", &own)]),
        (
            "POST",
            vec![("Origin", &own), ("Sec-Fetch-Site", "same-origin")],
        ),
        ("POST", vec![("Referer", &own_page)]),
        ("POST", vec![("Origin", "https://app.example")]),
        ("POST", vec![]), // no Origin, no Referer: not a browser
        ("PUT", vec![("Origin", &own)]),
        ("DELETE", vec![("Sec-Fetch-Site", "same-origin")]),
        // safe methods are never CSRF-checked
        (
            "GET",
            vec![
                ("Origin", "https://evil.example"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        ),
        // the request's own origin is scheme + its Host header
        (
            "POST",
            vec![("Host", "gw.example"), ("Origin", "http://gw.example")],
        ),
    ];
    for (i, (method, headers)) in allowed.iter().enumerate() {
        let mut h = headers.clone();
        h.push(("Cookie", c));
        let r = env.request(method, "/app/x", &h);
        assert_eq!(r.status, 200, "{method} {headers:?}: {}", r.text());
        assert_eq!(env.up.hits(), i + 1);
        assert_eq!(env.up.last().method, *method);
    }

    // a Bearer-authenticated request on jwt_or_session is never CSRF-checked
    let token = hs_token(&hs_claims("alice", json!({})));
    let auth = format!("Bearer {token}");
    let r = env.request(
        "POST",
        "/mixed/x",
        &[
            ("Authorization", &auth),
            ("Origin", "https://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.up.last().header("x-auth-method").as_deref(),
        Some("jwt")
    );
}

#[test]
fn jwt_or_session_lets_a_bearer_token_decide_alone() {
    let env = start();
    let (_, cookie) = env.login("mixed", json!({"userId": "u1", "role": "admin"}));
    let good = hs_token(&hs_claims("alice", json!({})));
    let forged = sign(
        jsonwebtoken::Algorithm::HS256,
        &hs_key("not-the-secret-not-the-secret-not-the-secret"),
        &hs_claims("alice", json!({})),
    );

    let r = env.gw.get_bearer("/mixed/x", &good);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = env.up.last();
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("jwt"));
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some("alice"));
    assert_eq!(seen.header("x-auth-issuer").as_deref(), Some("hs"));

    // a valid Bearer wins over a valid cookie
    let auth = format!("Bearer {good}");
    let r = env
        .gw
        .get("/mixed/x", &[("Authorization", &auth), ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.subject_seen().as_deref(), Some("alice"));
    assert_eq!(
        env.up.last().header("x-auth-method").as_deref(),
        Some("jwt")
    );

    // an invalid Bearer is not rescued by a valid cookie
    let auth = format!("Bearer {forged}");
    let r = env
        .gw
        .get("/mixed/x", &[("Authorization", &auth), ("Cookie", &cookie)]);
    assert_invalid(&r, "bad_signature", &forged);

    // no Bearer: the cookie (a non-Bearer Authorization counts as none)
    let r = env.get("/mixed/x", &cookie);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.subject_seen().as_deref(), Some("u1"));
    let r = env.gw.get(
        "/mixed/x",
        &[("Authorization", "Basic dTE6cHc="), ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        env.up.last().header("x-auth-method").as_deref(),
        Some("session")
    );

    let r = env.gw.get("/mixed/x", &[]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    assert_eq!(env.up.hits(), 4);
}

#[test]
fn secrets_files_default_cookie_name_prefix_db_and_dotted_identity() {
    let redis = RedisServer::start();
    let dir = temp_dir("sess-files");
    let (cur, prev) = (dir.join("current.secret"), dir.join("previous.secret"));
    // *_file secrets lose one trailing newline
    std::fs::write(&cur, format!("{SESSION_SECRET_CURRENT}\n")).unwrap();
    std::fs::write(&prev, SESSION_SECRET_PREVIOUS).unwrap();
    let url = format!("redis://127.0.0.1:{}/3", redis.port);
    let cfg = GatewayConfig::base()
        .extra(&format!(
            r#"[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"

[store]
kind = "redis"
url = "{url}"

[sessions]
secrets_files = ["{}", "{}"]
key_prefix = "myapp:sess:"
identity = {{ subject = "user.id", email = "user.email", roles = "user.roles" }}
"#,
            cur.display(),
            prev.display()
        ))
        .toml();
    let (gw, up) = Gateway::with_upstream(&cfg, &[HS_ENV]);
    let sid = new_sid("files");
    let key = format!("myapp:sess:{sid}");
    let value = session_value(
        json!({"user": {"id": 7, "email": "u7@x.test", "roles": ["a", "b"]}}),
        DAY_MS,
        DAY_MS,
    );
    // SELECT is per connection: both commands on one
    let reply = redis.pipeline(&[&["SELECT", "3"], &["SET", &key, &value]]);
    assert_eq!(reply, ["OK", "OK"]);

    for secret in [SESSION_SECRET_CURRENT, SESSION_SECRET_PREVIOUS] {
        let cookie = format!("connect.sid={}", session_cookie(&sid, secret));
        let r = gw.get("/app/x", &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = up.last();
        assert_eq!(seen.header("x-auth-subject").as_deref(), Some("7"));
        assert_eq!(seen.header("x-auth-email").as_deref(), Some("u7@x.test"));
        assert_eq!(seen.header("x-auth-roles").as_deref(), Some("a,b"));
    }
    // the configured (default) cookie name only
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = gw.get("/app/x", &[("Cookie", &cookie)]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    // a secret file read with its newline would sign differently
    let cookie = format!(
        "connect.sid={}",
        session_cookie(&sid, &format!("{SESSION_SECRET_CURRENT}\n"))
    );
    let r = gw.get("/app/x", &[("Cookie", &cookie)]);
    assert_invalid(&r, "bad_cookie_signature", &cookie);

    // invalidation works under a custom prefix in another database
    let cookie = format!(
        "connect.sid={}",
        session_cookie(&sid, SESSION_SECRET_CURRENT)
    );
    for _ in 0..3 {
        assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = redis.pipeline(&[&["SELECT", "3"], &["DEL", &key]]);
    assert_eq!(reply, ["OK", "1"]);
    let denied = poll_until(ONE_SECOND, || {
        let r = gw.get("/app/x", &[("Cookie", &cookie)]);
        (r.status != 200).then_some(r)
    })
    .expect("a session deleted in Redis db 3 was still accepted 1 s later");
    assert_invalid(&denied, "session_not_found", &cookie);
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_sessions_on_the_memory_store() {
    let cfg = config("redis://127.0.0.1:1/0").replace(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\non_error = \"deny\"\n",
        "",
    );
    assert!(!cfg.contains("[store]"));
    let cfg =
        render(&cfg, "127.0.0.1:18080", "127.0.0.1:19090").replace("{upstream}", "127.0.0.1:3000");
    let env = [HS_ENV, SESSION_ENV[0], SESSION_ENV[1]];
    for text in [cfg.clone(), format!("{cfg}\n[store]\nkind = \"memory\"\n")] {
        let dir = temp_dir("sess-check");
        std::fs::write(dir.join("gateway.toml"), &text).unwrap();
        let o = run_cli(&["check", "--config", "gateway.toml"], &env, &dir);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("redis"))
            .unwrap_or_else(|| panic!("no error mentions redis:\n{stderr}"));
        let mut parts = line.splitn(4, ':');
        assert_eq!(parts.next(), Some("gateway.toml"), "{line}");
        let l: usize = parts.next().unwrap_or_default().parse().unwrap_or(0);
        let c: usize = parts.next().unwrap_or_default().parse().unwrap_or(0);
        assert!(l >= 1 && c >= 1, "not FILE:LINE:COL: {line}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // the same config on Redis passes; with a secret variable unset it does not
    let good = format!("{cfg}\n[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:1/0\"\n");
    let dir = temp_dir("sess-check");
    std::fs::write(dir.join("gateway.toml"), &good).unwrap();
    let o = run_cli(&["check", "--config", "gateway.toml"], &env, &dir);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run_cli(
        &["check", "--config", "gateway.toml"],
        &[HS_ENV, SESSION_ENV[0]],
        &dir,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SESSION_SECRET_PREVIOUS"),
        "the missing variable is not named: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redis_outage_is_503_and_recovers_without_a_restart() {
    // rolling off, so that the session cache is surely in play (see the steady-state tests)
    let mut env = start_with(|c| c.replace("rolling = true", "rolling = false"));
    let (sid_a, cookie_a) = env.login("outage-a", json!({"userId": "ua", "role": "admin"}));
    let (sid_b, cookie_b) = env.login("outage-b", json!({"userId": "ub", "role": "admin"}));
    assert!(env.warm("/plain/x", &cookie_a), "no cache hit within 5 s");
    let errors_before = metric(&env.gw.metrics(), STORE_ERRORS, &[("op", "session_get")]);

    env.redis.kill();
    let killed = Instant::now();

    // a session not in the cache: 503 at once, answered (not hung)
    let r = env.get("/plain/x", &cookie_b);
    assert_error(&r, 503, "unavailable", "store_unavailable");
    // a cached one stops being trusted as soon as invalidations cannot flow
    let r = poll_until(Duration::from_secs(2), || {
        let r = env.get("/plain/x", &cookie_a);
        (r.status != 200).then_some(r)
    })
    .expect("a cached session was still served 2 s after Redis died");
    assert_error(&r, 503, "unavailable", "store_unavailable");
    eprintln!(
        "cached session refused {:?} after the kill",
        killed.elapsed()
    );
    let hits = env.up.hits();
    // a browser is not sent to log in again because the store is down
    let r = env
        .gw
        .get("/app/x", &[("Accept", "text/html"), ("Cookie", &cookie_b)]);
    assert_error(&r, 503, "unavailable", "store_unavailable");
    // what needs no store still answers as usual
    let forged = format!("sid={}", session_cookie(&sid_b, "wrong-secret"));
    let r = env.get("/plain/x", &forged);
    assert_invalid(&r, "bad_cookie_signature", &forged);
    let r = env.gw.get("/plain/x", &[]);
    assert_error(&r, 401, "unauthorized", "missing_credentials");
    // the gateway is alive, not ready
    assert_eq!(env.gw.admin_get("/healthz").status, 200);
    let r = poll_until(Duration::from_secs(5), || {
        let r = env.gw.admin_get("/readyz");
        (r.status == 503).then_some(r)
    });
    assert!(r.is_some(), "/readyz is not 503 while Redis is down");
    for _ in 0..3 {
        let r = env.get("/plain/x", &cookie_b);
        assert_error(&r, 503, "unavailable", "store_unavailable");
    }
    let want = errors_before.unwrap_or(0.0) + 1.0;
    assert_metric_reaches(&env.gw, STORE_ERRORS, &[("op", "session_get")], want);
    assert_eq!(
        env.up.hits(),
        hits,
        "a request reached the upstream during the outage"
    );

    // Redis comes back empty on the same port; the application writes sessions again
    env.redis.restart();
    env.put(&sid_a, json!({"userId": "ua", "role": "admin"}));
    env.put(&sid_b, json!({"userId": "ub", "role": "admin"}));
    let back = poll_until(Duration::from_secs(10), || {
        let r = env.get("/plain/x", &cookie_a);
        (r.status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "sessions still fail 10 s after Redis came back"
    );
    assert_eq!(env.subject_seen().as_deref(), Some("ua"));
    let r = env.get("/plain/x", &cookie_b);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(env.subject_seen().as_deref(), Some("ub"));
    let ready = poll_until(Duration::from_secs(10), || {
        (env.gw.admin_get("/readyz").status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "/readyz still not 200 after Redis came back"
    );

    // the invalidation channel is back too: cache hits again, and a DEL within 1 s
    assert!(
        env.warm("/plain/x", &cookie_b),
        "after the Redis restart, no cache hit within 10 s: tracking not re-established"
    );
    assert_eq!(env.redis.cmd(&["DEL", &format!("sess:{sid_b}")]), "1");
    let denied = poll_until(ONE_SECOND, || {
        let r = env.get("/plain/x", &cookie_b);
        (r.status != 200).then_some(r)
    })
    .expect("after the Redis restart a DEL was not seen within 1 s");
    assert_invalid(&denied, "session_not_found", &cookie_b);
}

#[test]
fn on_error_allow_still_answers_503_for_sessions() {
    let mut env = start_with(|c| c.replace(r#"on_error = "deny""#, r#"on_error = "allow""#));
    let (_, cookie) = env.login("allow", json!({"userId": "u1", "role": "admin"}));
    env.redis.kill();
    let r = env.get("/plain/x", &cookie);
    assert_error(&r, 503, "unavailable", "store_unavailable");
    assert_eq!(env.up.hits(), 0);
    assert_eq!(env.gw.admin_get("/healthz").status, 200);
}

#[test]
fn paused_redis_answers_503_without_hanging_then_recovers() {
    let env = start_with(|c| c.replace("rolling = true", "rolling = false"));
    let (_, cached) = env.login("pause-a", json!({"userId": "ua"}));
    let (_, fresh) = env.login("pause-b", json!({"userId": "ub"}));
    assert!(env.warm("/plain/x", &cached), "no cache hit within 5 s");

    env.redis.pause();
    // each request is answered (the harness gives up after 10 s), with a 503
    let r = env.get("/plain/x", &fresh);
    assert_error(&r, 503, "unavailable", "store_unavailable");
    let r = poll_until(Duration::from_secs(5), || {
        let r = env.get("/plain/x", &cached);
        (r.status != 200).then_some(r)
    })
    .expect("a cached session was still served 5 s after Redis stopped answering");
    assert_error(&r, 503, "unavailable", "store_unavailable");
    assert_eq!(env.gw.admin_get("/healthz").status, 200);
    let r = env.gw.admin_get("/readyz");
    assert_eq!(
        r.status,
        503,
        "/readyz while Redis does not answer: {}",
        r.text()
    );

    env.redis.resume();
    let back = poll_until(Duration::from_secs(10), || {
        (env.get("/plain/x", &fresh).status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "sessions still fail 10 s after Redis resumed"
    );
    assert_eq!(env.subject_seen().as_deref(), Some("ub"));
}

#[test]
fn gateway_started_while_redis_is_down_serves_sessions_once_it_is_up() {
    let mut redis = RedisServer::not_started();
    let cfg = config(&redis.url()).replace("rolling = true", "rolling = false");
    let env = [HS_ENV, SESSION_ENV[0], SESSION_ENV[1]];
    let (gw, up) = Gateway::with_upstream(&cfg, &env);
    let sid = new_sid("late");
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = gw.get("/plain/x", &[("Cookie", &cookie)]);
    assert_error(&r, 503, "unavailable", "store_unavailable");
    assert_eq!(gw.admin_get("/readyz").status, 503);

    redis.restart();
    let value = session_value(json!({"userId": "late"}), DAY_MS, DAY_MS);
    assert_eq!(redis.cmd(&["SET", &format!("sess:{sid}"), &value]), "OK");
    let back = poll_until(Duration::from_secs(10), || {
        (gw.get("/plain/x", &[("Cookie", &cookie)]).status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "sessions still fail 10 s after Redis came up"
    );
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("late"));
    let ready = poll_until(Duration::from_secs(10), || {
        (gw.admin_get("/readyz").status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "/readyz still not 200 10 s after Redis came up"
    );

    // invalidations flow: a DEL is seen within 1 s
    for _ in 0..3 {
        assert_eq!(gw.get("/plain/x", &[("Cookie", &cookie)]).status, 200);
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(redis.cmd(&["DEL", &format!("sess:{sid}")]), "1");
    let denied = poll_until(ONE_SECOND, || {
        let r = gw.get("/plain/x", &[("Cookie", &cookie)]);
        (r.status != 200).then_some(r)
    })
    .expect("a DEL was not seen within 1 s");
    assert_invalid(&denied, "session_not_found", &cookie);
}

#[test]
fn odd_cookies_and_stored_values_get_4xx() {
    let env = start();
    // a huge cookie: a 4xx, never a dropped connection or a 5xx
    let huge = format!("sid=s%3A{}.{}", "a".repeat(9000), "b".repeat(43));
    let r = env.get("/plain/x", &huge);
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.text());
    // the session cookie split over two Cookie headers (as HTTP/2 clients send it)
    let (_, cookie) = env.login("split", json!({"userId": "u1"}));
    let r = env
        .gw
        .get("/plain/x", &[("Cookie", "theme=dark"), ("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    // a value that is not connect-redis JSON: rejected as a credential problem
    let sid = new_sid("garbage");
    env.put_raw(&sid, "this is not json", DAY_MS);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = env.get("/plain/x", &cookie);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], json!("invalid_token"));
    assert_eq!(env.up.hits(), 1);
    assert_eq!(env.gw.admin_get("/healthz").status, 200);
}

/// Two gateways sharing one Redis (as instances behind a load balancer), with
/// rolling on: one instance's touch must not keep evicting the other's cache,
/// so that alternating requests still cost no Redis lookup and each instance
/// touches a session at most once per `touch_interval`.
#[test]
fn two_gateways_on_one_redis_keep_their_caches_with_rolling() {
    let env = start_with(|c| c.replace(r#"touch_interval = "1s""#, r#"touch_interval = "1h""#));
    let cfg = config(&env.redis.url())
        .replace(r#"touch_interval = "1s""#, r#"touch_interval = "1h""#)
        .replace("{upstream}", &env.up.addr);
    let other = Gateway::start(&cfg, &[HS_ENV, SESSION_ENV[0], SESSION_ENV[1]]);
    let (_, cookie) = env.login("pair", json!({"userId": "u1"}));
    let both = |n: usize| {
        for _ in 0..n {
            for gw in [&env.gw, &other] {
                let r = gw.get("/plain/x", &[("Cookie", &cookie)]);
                assert_eq!(r.status, 200, "{}", r.text());
            }
        }
    };
    let touches_before = env.redis.command_calls("pexpire");
    // warm up: until a round on both instances runs no session command (at most 5 s)
    let _ = poll_until(Duration::from_secs(5), || {
        std::thread::sleep(Duration::from_millis(200));
        commands_during(&env.redis, || both(1))
            .is_empty()
            .then_some(())
    });
    let cmds = commands_during(&env.redis, || both(20));
    let touches = env.redis.command_calls("pexpire") - touches_before;
    assert!(
        cmds.is_empty(),
        "Redis commands for 40 requests alternating between two gateways on one cached session: {cmds:?}"
    );
    assert!(
        touches <= 2,
        "{touches} PEXPIREs: more than one per instance within touch_interval = 1h"
    );
}
