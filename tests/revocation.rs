//! Revocation (issue 4), black-box: real `authgate serve` processes and, for the
//! shared store, a real `redis-server` that each test starts on a free loopback
//! port (never the machine's 6379).
//!
//! - two instances on one Redis: a `jti`, a subject (every issuer, or narrowed to
//!   one with `iss`) and a session revoked on one instance are enforced by the
//!   other within 1 s, while unrelated tokens keep passing;
//! - a Redis outage: JWT routes keep serving from the local mirror, a revocation
//!   made meanwhile fails loudly (503), and one made after Redis returns reaches
//!   both instances within 1 s;
//! - the admin API's rules (404 without an admin token, 401, 400, 413, 200 bodies);
//! - the memory store (one instance);
//! - metrics, the `revocation` log event, and the `authgate revoke` CLI;
//! - robustness: an `exp` far in the future must not stop the mirror from
//!   loading, instances on another Redis database are not affected, and the
//!   CLI takes ids that start with `-`.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef-revocation";
const HS2_SECRET: &str = "test-hs2-secret-fedcba9876543210fedcba9876543210";
const SESSION_SECRET: &str = "revocation-session-secret-0123456789";
/// The revocation channel of database 0 (channels are per database).
const CHANNEL: &str = "authgate:{revoked}:events:0";
const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
const REVOKED_SUBS: &str = "authgate:{revoked}:sub";
const REVOCATIONS: &str = "authgate_revocations_total";
const MIRROR: &str = "authgate_revocation_mirror_entries";
/// The contract's bound for a revocation to reach another instance.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Poll interval while waiting for a propagation.
const POLL: Duration = Duration::from_millis(20);

const SESSION_EXTRA: &str = r#"
[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"

[sessions]
cookie = "sid"
secrets_env = ["SESSION_SECRET"]
identity = { subject = "userId" }
"#;

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        HS_ENV,
        ("TEST_HS2_SECRET", HS2_SECRET),
        ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SESSION_SECRET", SESSION_SECRET),
    ]
}

/// The brief's config (plus a second issuer `hs2`), `{upstream}` still to fill.
fn config(admin: bool, store: &str, extra: &str) -> String {
    let mut c = GatewayConfig::new().threads(2);
    if admin {
        c = c.admin_token_env("AUTHGATE_ADMIN_TOKEN");
    }
    c.extra(store)
        .upstream("app", &["{upstream}"])
        .issuer(
            "hs",
            "issuer = \"https://hs.test\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"",
        )
        .issuer(
            "hs2",
            "issuer = \"https://hs2.test\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS2_SECRET\"",
        )
        .route("name = \"api\"\npath_prefix = \"/api/\"\nupstream = \"app\"\nauth = \"jwt\"")
        .extra(extra)
        .toml()
}

fn redis_store(url: &str) -> String {
    format!("[store]\nkind = \"redis\"\nurl = \"{url}\"")
}

const MEMORY_STORE: &str = "[store]\nkind = \"memory\"";

// ---------------------------------------------------------------------------
// tokens

/// An `hs` token (`iat` now, `exp` now + 300) with this subject and `jti`.
fn tok(sub: &str, jti: &str) -> String {
    hs_token(&hs_claims(sub, json!({ "jti": jti })))
}

/// The same from the second issuer, `hs2`.
fn tok2(sub: &str, jti: &str) -> String {
    let claims = merge(claims("https://hs2.test", sub), json!({ "jti": jti }));
    sign(Algorithm::HS256, &hs_key(HS2_SECRET), &claims)
}

fn exp_of(token: &str) -> i64 {
    token_part(token, 1)["exp"].as_i64().unwrap()
}

// ---------------------------------------------------------------------------
// admin calls

fn admin_auth() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// `POST /admin/revoke` with the admin token and this raw body.
fn revoke_raw(gw: &Gateway, body: &[u8]) -> Response {
    let auth = admin_auth();
    request(
        &gw.admin_addr,
        "POST",
        "/admin/revoke",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

fn revoke(gw: &Gateway, body: &Value) -> Response {
    revoke_raw(gw, body.to_string().as_bytes())
}

/// A revocation that must succeed: 200 with a JSON body, which is returned.
#[track_caller]
fn revoke_ok(gw: &Gateway, body: &Value) -> Value {
    let r = revoke(gw, body);
    assert_eq!(r.status, 200, "revoke {body}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        "revoke {body}: content-type {:?}",
        r.header("content-type")
    );
    r.json()
}

// ---------------------------------------------------------------------------
// proxy checks

#[track_caller]
fn assert_passes(gw: &Gateway, token: &str, what: &str) {
    let r = gw.get_bearer("/api/x", token);
    assert_eq!(
        r.status,
        200,
        "{what} on {}: expected 200, got {}",
        gw.proxy_addr,
        r.text()
    );
}

#[track_caller]
fn assert_revoked(gw: &Gateway, token: &str) {
    assert_invalid(&gw.get_bearer("/api/x", token), "revoked", token);
}

/// Polls the gateway with `token` every 20 ms until it answers 401 `revoked`;
/// fails when no request that started within 1 s saw it. Returns the time taken.
#[track_caller]
fn wait_revoked(gw: &Gateway, token: &str, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let sent = start.elapsed();
        let r = gw.get_bearer("/api/x", token);
        match r.status {
            401 => {
                assert_invalid(&r, "revoked", token);
                eprintln!("{what}: revoked on {} after {sent:?}", gw.proxy_addr);
                return sent;
            }
            200 => {}
            other => panic!(
                "{what}: expected 200 (not yet) or 401 revoked, got {other} {}",
                r.text()
            ),
        }
        assert!(
            sent < PROPAGATION,
            "{what}: still accepted by {} {sent:?} after the revocation returned",
            gw.proxy_addr
        );
        thread::sleep(POLL);
    }
}

/// Polls `/metrics` until `name{labels} == want`; fails after `deadline`.
#[track_caller]
fn wait_metric(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64, deadline: Duration) {
    let start = Instant::now();
    loop {
        let got = metric(&gw.metrics(), name, labels);
        if got == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{name}{labels:?} on {} = {got:?}, expected {want}",
            gw.admin_addr
        );
        thread::sleep(POLL);
    }
}

/// The `"message":"revocation"` log events of a gateway.
fn revocation_events(gw: &Gateway) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| field_str(v, "message").as_deref() == Some("revocation"))
        .collect()
}

/// Waits (up to 5 s: stdout is written asynchronously) for the `n`-th revocation event.
fn wait_revocation_events(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = revocation_events(gw);
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Neither the payload nor the signature of `token` appears in the gateway's output.
#[track_caller]
fn assert_not_logged(gw: &Gateway, token: &str) {
    let out = format!("{}{}", gw.logs(), gw.stderr());
    for part in token.split('.').skip(1) {
        assert!(
            !out.contains(part),
            "the gateway logged a token part {part}"
        );
    }
}

// ---------------------------------------------------------------------------
// two instances on one Redis

/// Two gateways (same config) on one Redis. Fields drop in order: gateways first.
struct Pair {
    a: Gateway,
    b: Gateway,
    up: Upstream,
    redis: RedisServer,
}

impl Pair {
    fn start(extra: &str) -> Pair {
        let redis = RedisServer::start();
        let up = Upstream::start();
        let toml = config(true, &redis_store(&redis.url()), extra).replace("{upstream}", &up.addr);
        let a = Gateway::start(&toml, &env());
        let b = Gateway::start(&toml, &env());
        let p = Pair { a, b, up, redis };
        // Both mirrors follow the channel before anything is revoked: the 1 s
        // bound is about propagation, not about start-up.
        p.wait_subscribers(2, Duration::from_secs(10));
        p
    }

    fn subscribers(&self) -> Option<i64> {
        match redis_query(&self.redis.addr(), &["PUBSUB", "NUMSUB", CHANNEL]).ok()? {
            Resp::Array(Some(items)) => match items.get(1) {
                Some(Resp::Int(n)) => Some(*n),
                _ => None,
            },
            _ => None,
        }
    }

    #[track_caller]
    fn wait_subscribers(&self, n: i64, deadline: Duration) {
        let start = Instant::now();
        loop {
            let got = self.subscribers();
            if got == Some(n) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "{n} subscribers to {CHANNEL} expected, {got:?} after {deadline:?}\n--- A:\n{}\n--- B:\n{}",
                self.a.logs(),
                self.b.logs()
            );
            thread::sleep(POLL);
        }
    }

    fn both(&self) -> [(&'static str, &Gateway); 2] {
        [("A", &self.a), ("B", &self.b)]
    }
}

#[test]
fn jti_revoked_on_one_instance_is_rejected_by_the_other_within_1s() {
    let p = Pair::start("");
    let t1 = tok("alice", "j1");
    let t2 = tok("alice", "j2");
    let t3 = tok("bob", "j3");
    // Three times each: a token is cached on its second verification, so
    // the revocation below must reach tokens served from the token cache.
    for (name, gw) in p.both() {
        for t in [&t1, &t2, &t3] {
            for _ in 0..3 {
                assert_passes(gw, t, &format!("before any revocation, on {name}"));
            }
        }
        let hits = metric(
            &gw.metrics(),
            "authgate_token_cache_total",
            &[("result", "hit")],
        );
        assert_eq!(hits, Some(3.0), "the tokens are not cached on {name}");
    }
    assert_eq!(
        metric(&p.b.metrics(), MIRROR, &[("kind", "jti")]).unwrap_or(0.0),
        0.0
    );

    let exp = exp_of(&t1);
    let out = revoke_ok(&p.a, &json!({"jti": "j1", "exp": exp}));
    assert_eq!(out, json!({"revoked": "jti", "jti": "j1", "exp": exp}));
    // The instance that took the call enforces it at once ...
    assert_revoked(&p.a, &t1);
    // ... the other within 1 s.
    wait_revoked(&p.b, &t1, "jti j1 revoked on A");
    // Another token of the same subject still passes, on both.
    for (name, gw) in p.both() {
        assert_passes(gw, &t2, &format!("alice's other token on {name}"));
        assert_passes(gw, &t3, &format!("bob's token on {name}"));
    }
    // Stored as the contract's layout says: the ZSET scored by exp.
    assert_eq!(
        p.redis.cmd(&["ZSCORE", REVOKED_JTIS, "j1"]),
        exp.to_string()
    );

    // The other direction: revoked on B, enforced by A.
    let out = revoke_ok(&p.b, &json!({"jti": "j3", "exp": exp_of(&t3)}));
    assert_eq!(out["revoked"], "jti");
    assert_revoked(&p.b, &t3);
    wait_revoked(&p.a, &t3, "jti j3 revoked on B");
    // Revoking again is harmless.
    revoke_ok(&p.a, &json!({"jti": "j1", "exp": exp}));
    assert_revoked(&p.b, &t1);

    // Metrics: accepted revocations counted where they were made; both
    // mirrors hold the two jtis.
    assert_eq!(
        metric(&p.a.metrics(), REVOCATIONS, &[("kind", "jti")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&p.b.metrics(), REVOCATIONS, &[("kind", "jti")]),
        Some(1.0)
    );
    for (_, gw) in p.both() {
        wait_metric(gw, MIRROR, &[("kind", "jti")], 2.0, PROPAGATION);
    }
    assert!(
        metric(
            &p.b.metrics(),
            "authgate_requests_total",
            &[("outcome", "denied"), ("reason", "revoked")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // The log event: kind, jti, exp, by (the admin client's IP), never a token.
    let events = wait_revocation_events(&p.a, 2);
    let e = events
        .first()
        .unwrap_or_else(|| panic!("no revocation event in A's log:\n{}", p.a.logs()));
    assert_eq!(field_str(e, "kind").as_deref(), Some("jti"), "{e}");
    assert_eq!(field_str(e, "jti").as_deref(), Some("j1"), "{e}");
    assert_eq!(field_str(e, "by").as_deref(), Some("127.0.0.1"), "{e}");
    assert_eq!(field(e, "exp"), Some(&json!(exp)), "{e}");
    let b_events = wait_revocation_events(&p.b, 1);
    assert_eq!(
        b_events
            .first()
            .and_then(|e| field_str(e, "jti"))
            .as_deref(),
        Some("j3"),
        "B's revocation event: {b_events:?}"
    );
    for (name, gw) in p.both() {
        for t in [&t1, &t2, &t3] {
            assert_not_logged(gw, t);
        }
        let out = format!("{}{}", gw.logs(), gw.stderr());
        assert!(!out.contains(ADMIN_TOKEN), "{name} logged the admin token");
    }
}

#[test]
fn subject_revocation_covers_every_issuer_and_spares_later_tokens() {
    let p = Pair::start("");
    let old_hs = tok("alice", "a1");
    let old_hs2 = tok2("alice", "a2");
    let no_iat = hs_token(&hs_claims("alice", json!({"jti": "a3", "iat": null})));
    let bob = tok("bob", "b1");
    for (name, gw) in p.both() {
        for t in [&old_hs, &old_hs2, &no_iat, &bob] {
            assert_passes(gw, t, &format!("before the revocation, on {name}"));
        }
    }

    let t0 = now();
    let out = revoke_ok(&p.b, &json!({"sub": "alice"}));
    let revoked_at = Instant::now();
    let before = out["before"]
        .as_i64()
        .unwrap_or_else(|| panic!("no numeric `before` in {out}"));
    assert_eq!(
        out,
        json!({"revoked": "sub", "sub": "alice", "iss": null, "before": before})
    );
    assert!(
        (t0..=now()).contains(&before),
        "before = {before}, the call ran in [{t0}, {}]",
        now()
    );

    // B (where it was made) at once; A within 1 s; then every old token of
    // alice, from either issuer and without `iat`, on both.
    assert_revoked(&p.b, &old_hs);
    wait_revoked(&p.a, &old_hs, "sub alice revoked on B");
    let at_cutoff = hs_token(&hs_claims("alice", json!({"jti": "a4", "iat": before})));
    for (name, gw) in p.both() {
        for t in [&old_hs, &old_hs2, &no_iat, &at_cutoff] {
            assert_revoked(gw, t);
        }
        assert_passes(gw, &bob, &format!("bob on {name}"));
    }
    assert_eq!(
        p.redis.cmd(&["HGET", REVOKED_SUBS, "*\nalice"]),
        before.to_string()
    );

    // A token issued after the cutoff second passes (iat has one-second
    // resolution; iat == before is revoked by design).
    let wait = Duration::from_millis(1100).saturating_sub(revoked_at.elapsed());
    thread::sleep(wait);
    let new_hs = tok("alice", "a5");
    let new_hs2 = tok2("alice", "a6");
    assert!(token_part(&new_hs, 1)["iat"].as_i64().unwrap() > before);
    for (name, gw) in p.both() {
        assert_passes(gw, &new_hs, &format!("alice's new hs token on {name}"));
        assert_passes(gw, &new_hs2, &format!("alice's new hs2 token on {name}"));
    }

    assert_eq!(
        metric(&p.b.metrics(), REVOCATIONS, &[("kind", "sub")]),
        Some(1.0)
    );
    for (_, gw) in p.both() {
        wait_metric(gw, MIRROR, &[("kind", "sub")], 1.0, PROPAGATION);
    }
    let events = wait_revocation_events(&p.b, 1);
    let e = events
        .first()
        .unwrap_or_else(|| panic!("no revocation event in B's log:\n{}", p.b.logs()));
    assert_eq!(field_str(e, "kind").as_deref(), Some("sub"), "{e}");
    assert_eq!(field_str(e, "sub").as_deref(), Some("alice"), "{e}");
    assert_eq!(field_str(e, "by").as_deref(), Some("127.0.0.1"), "{e}");
}

#[test]
fn subject_revocation_with_iss_narrows_to_that_issuer() {
    let p = Pair::start("");
    let carol_hs = tok("carol", "c1");
    let carol_hs2 = tok2("carol", "c2");
    for (name, gw) in p.both() {
        assert_passes(gw, &carol_hs, &format!("carol/hs on {name}"));
        assert_passes(gw, &carol_hs2, &format!("carol/hs2 on {name}"));
    }

    let out = revoke_ok(&p.a, &json!({"sub": "carol", "iss": "hs"}));
    let before = out["before"].as_i64().unwrap();
    assert_eq!(
        out,
        json!({"revoked": "sub", "sub": "carol", "iss": "hs", "before": before})
    );
    assert_revoked(&p.a, &carol_hs);
    wait_revoked(&p.b, &carol_hs, "sub carol/hs revoked on A");
    for (name, gw) in p.both() {
        assert_passes(gw, &carol_hs2, &format!("carol's hs2 token on {name}"));
    }
    assert_eq!(
        p.redis.cmd(&["HGET", REVOKED_SUBS, "hs\ncarol"]),
        before.to_string()
    );
    assert_eq!(p.redis.cmd(&["HEXISTS", REVOKED_SUBS, "*\ncarol"]), "0");

    // Then the other issuer too.
    revoke_ok(&p.a, &json!({"sub": "carol", "iss": "hs2"}));
    assert_revoked(&p.a, &carol_hs2);
    wait_revoked(&p.b, &carol_hs2, "sub carol/hs2 revoked on A");
    assert_revoked(&p.b, &carol_hs);
}

#[test]
fn session_revocation_destroys_the_session_on_both_instances() {
    let p = Pair::start(SESSION_EXTRA);
    let sid = new_sid("revoke");
    let value = r#"{"cookie":{"originalMaxAge":3600000,"expires":"2030-01-01T00:00:00.000Z"},"userId":"u1"}"#;
    assert_eq!(p.redis.cmd(&["SET", &format!("sess:{sid}"), value]), "OK");
    let signed = session_cookie(&sid, SESSION_SECRET);
    assert_eq!(
        authgate::testing::session::sign_cookie(&sid, SESSION_SECRET.as_bytes()),
        signed,
        "the lib's sign_cookie and the test's express-session signature differ"
    );
    let cookie = format!("sid={signed}");
    for (name, gw) in p.both() {
        // Twice: the second one may come from the instance's session cache.
        for _ in 0..2 {
            let r = gw.get("/app/x", &[("Cookie", &cookie)]);
            assert_eq!(r.status, 200, "session on {name}: {}", r.text());
            assert_eq!(p.up.last().header("x-auth-subject").as_deref(), Some("u1"));
        }
    }

    let out = revoke_ok(&p.a, &json!({"session": sid}));
    assert_eq!(out, json!({"revoked": "session", "session": sid}));
    assert_eq!(p.redis.cmd(&["EXISTS", &format!("sess:{sid}")]), "0");

    let check = |gw: &Gateway, r: &Response| {
        assert_eq!(r.status, 401, "{}: {}", gw.proxy_addr, r.text());
        let body = r.json();
        assert_eq!(body["error"], "invalid_token", "{body}");
        assert!(
            matches!(
                body["reason"].as_str(),
                Some("session_not_found" | "revoked")
            ),
            "{body}"
        );
        assert!(!r.text().contains(&sid));
    };
    let r = p.a.get("/app/x", &[("Cookie", &cookie)]);
    check(&p.a, &r);
    let start = Instant::now();
    loop {
        let sent = start.elapsed();
        let r = p.b.get("/app/x", &[("Cookie", &cookie)]);
        if r.status != 200 {
            check(&p.b, &r);
            eprintln!("session revoked on B after {sent:?}");
            break;
        }
        assert!(
            sent < PROPAGATION,
            "the revoked session still passes on B {sent:?} after the revocation"
        );
        thread::sleep(POLL);
    }

    assert_eq!(
        metric(&p.a.metrics(), REVOCATIONS, &[("kind", "session")]),
        Some(1.0)
    );
    // The log names a digest of the session id, never the id or the cookie.
    let events = wait_revocation_events(&p.a, 1);
    let e = events
        .first()
        .unwrap_or_else(|| panic!("no revocation event in A's log:\n{}", p.a.logs()));
    assert_eq!(field_str(e, "kind").as_deref(), Some("session"), "{e}");
    assert_eq!(field_str(e, "by").as_deref(), Some("127.0.0.1"), "{e}");
    let digest = field_str(e, "session_sha256")
        .unwrap_or_else(|| panic!("no session_sha256 in the event {e}"));
    assert!(
        digest.len() >= 16 && sha256_hex(sid.as_bytes()).starts_with(&digest),
        "session_sha256 {digest:?} is not (a prefix of) SHA-256 of the sid"
    );
    for (name, gw) in p.both() {
        let out = format!("{}{}", gw.logs(), gw.stderr());
        assert!(!out.contains(&sid), "{name} logged the session id");
        assert!(!out.contains(&signed), "{name} logged the cookie");
    }
}

#[test]
fn redis_outage_keeps_the_mirror_and_fails_new_revocations_loudly() {
    let mut p = Pair::start("");
    let t1 = tok("alice", "o1");
    let t2 = tok("alice", "o2");
    revoke_ok(&p.a, &json!({"jti": "o1", "exp": exp_of(&t1)}));
    wait_revoked(&p.b, &t1, "jti o1 revoked on A (before the outage)");

    p.redis.kill();
    // JWT routes keep serving from the mirror, before and after the instances
    // notice the outage (a few rounds over ~2 s).
    for round in 0..5 {
        for (name, gw) in p.both() {
            assert_revoked(gw, &t1);
            assert_passes(
                gw,
                &t2,
                &format!("good token on {name}, Redis down, round {round}"),
            );
        }
        thread::sleep(Duration::from_millis(400));
    }
    for (name, gw) in p.both() {
        let r = gw.admin_get("/readyz");
        assert_eq!(
            r.status,
            503,
            "/readyz on {name} with Redis down: {}",
            r.text()
        );
    }

    // A revocation while Redis is down is refused loudly, on either instance.
    let t3 = tok("alice", "o3");
    let r = revoke(&p.a, &json!({"jti": "o3", "exp": exp_of(&t3)}));
    assert_eq!(
        r.status,
        503,
        "jti revocation with Redis down: {}",
        r.text()
    );
    let body = r.json();
    assert_eq!(body["error"], "unavailable", "{body}");
    assert_eq!(body["reason"], "store_unavailable", "{body}");
    let r = revoke(&p.b, &json!({"sub": "bob"}));
    assert_eq!(
        r.status,
        503,
        "sub revocation with Redis down: {}",
        r.text()
    );
    assert_eq!(r.json()["reason"], "store_unavailable");
    assert_eq!(
        metric(&p.a.metrics(), REVOCATIONS, &[("kind", "jti")]),
        Some(1.0),
        "a failed revocation is not counted"
    );
    assert!(
        metric(
            &p.a.metrics(),
            "authgate_store_errors_total",
            &[("op", "revocation_write")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    // Redis returns (empty: no persistence). Let both instances reconnect,
    // retry the admin call until it is stored, then 1 s to reach the other.
    p.redis.restart();
    p.wait_subscribers(2, Duration::from_secs(15));
    let t4 = tok("alice", "o4");
    let body = json!({"jti": "o4", "exp": exp_of(&t4)});
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = revoke(&p.a, &body);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "while reconnecting: {}", r.text());
        assert!(
            Instant::now() < deadline,
            "revocations still refused 15 s after Redis returned: {}",
            r.text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_revoked(&p.a, &t4);
    wait_revoked(&p.b, &t4, "jti o4 revoked on A after Redis returned");
    // The revocation made before the outage is still enforced (mirrors merge;
    // they never forget a revocation because Redis came back empty).
    for (name, gw) in p.both() {
        assert_revoked(gw, &t1);
        assert_passes(gw, &t2, &format!("good token on {name} after the outage"));
        let ready = poll_until(Duration::from_secs(10), || {
            (gw.admin_get("/readyz").status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "/readyz on {name} not 200 after Redis returned"
        );
    }
}

/// An `exp` far in the future is still a positive unix time the admin API may
/// take; whatever it answers, it must not stop other revocations from reaching
/// every instance, including one started afterwards (which loads the store).
#[test]
fn a_far_future_exp_does_not_break_the_mirror_for_other_revocations() {
    let p = Pair::start("");
    let far: i64 = 100_000_000_000_000_000; // year ~3e9: still an i64, > 2^53
    let poison = tok("mallory", "far-future");
    let r = revoke(&p.a, &json!({"jti": "far-future", "exp": far}));
    assert!(
        r.status == 200 || r.status == 400,
        "exp {far}: {} {}",
        r.status,
        r.text()
    );
    let t1 = tok("alice", "after-far");
    revoke_ok(&p.a, &json!({"jti": "after-far", "exp": exp_of(&t1)}));
    wait_revoked(&p.b, &t1, "jti after-far revoked on A");
    if r.status == 200 {
        assert_revoked(&p.b, &poison);
    }

    // A third instance started now loads both from Redis.
    let toml = config(true, &redis_store(&p.redis.url()), "").replace("{upstream}", &p.up.addr);
    let c = Gateway::start(&toml, &env());
    let loaded = poll_until(Duration::from_secs(5), || {
        let r = c.get_bearer("/api/x", &t1);
        (r.status == 401).then_some(())
    });
    assert!(
        loaded.is_some(),
        "an instance started after exp {far} was revoked never loaded the other revocation \
         (answered {}); its last revocation log line:\n{}",
        c.get_bearer("/api/x", &t1).status,
        c.logs()
            .lines()
            .rfind(|l| l.contains("revocation"))
            .unwrap_or("(no revocation log line)")
    );
    assert_revoked(&c, &t1);
}

/// Instances on another database of the same Redis server share nothing with
/// these (the URL's `/N` selects a separate keyspace): a revocation made here
/// is not enforced there. (Redis pub/sub channels are server-wide, not per
/// database.)
#[test]
fn revocations_stay_within_their_redis_database() {
    let p = Pair::start("");
    let other_url = format!("redis://127.0.0.1:{}/1", p.redis.port);
    let toml = config(true, &redis_store(&other_url), "").replace("{upstream}", &p.up.addr);
    let other = Gateway::start(&toml, &env());
    // Channels are per database: the db 1 instance listens on its own.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = match redis_query(
            &p.redis.addr(),
            &["PUBSUB", "NUMSUB", "authgate:{revoked}:events:1"],
        ) {
            Ok(Resp::Array(Some(items))) => match items.get(1) {
                Some(Resp::Int(n)) => *n,
                _ => 0,
            },
            _ => 0,
        };
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the db 1 instance never subscribed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let jti_tok = tok("alice", "db-j1");
    let sub_tok = tok("dave", "db-d1");
    assert_passes(&other, &jti_tok, "db 1, before");
    assert_passes(&other, &sub_tok, "db 1, before");
    revoke_ok(&p.a, &json!({"jti": "db-j1", "exp": exp_of(&jti_tok)}));
    revoke_ok(&p.a, &json!({"sub": "dave"}));
    wait_revoked(&p.b, &jti_tok, "jti db-j1 revoked on A (db 0)");
    wait_revoked(&p.b, &sub_tok, "sub dave revoked on A (db 0)");
    // Give a stray announcement the same second to arrive.
    thread::sleep(PROPAGATION);
    assert_passes(&other, &jti_tok, "db 1 after a jti revocation in db 0");
    assert_passes(&other, &sub_tok, "db 1 after a sub revocation in db 0");
    assert_eq!(
        metric(&other.metrics(), MIRROR, &[("kind", "jti")]).unwrap_or(0.0),
        0.0,
        "db 1's mirror holds db 0's revocations"
    );
}

#[test]
fn memory_store_revokes_jti_and_subject_on_one_instance() {
    let (gw, _up) = Gateway::with_upstream(&config(true, MEMORY_STORE, ""), &env());
    let j1 = tok("alice", "m1");
    let j2 = tok("alice", "m2");
    let bob = tok("bob", "m3");
    let bob_no_iat = hs_token(&hs_claims("bob", json!({"jti": "m4", "iat": null})));
    for t in [&j1, &j2, &bob, &bob_no_iat] {
        assert_passes(&gw, t, "before any revocation");
    }

    let out = revoke_ok(&gw, &json!({"jti": "m1", "exp": exp_of(&j1)}));
    assert_eq!(
        out,
        json!({"revoked": "jti", "jti": "m1", "exp": exp_of(&j1)})
    );
    assert_revoked(&gw, &j1);
    assert_passes(&gw, &j2, "alice's other token");

    let out = revoke_ok(&gw, &json!({"sub": "bob"}));
    assert_eq!(out["revoked"], "sub");
    assert_eq!(out["iss"], Value::Null);
    let revoked_at = Instant::now();
    assert_revoked(&gw, &bob);
    assert_revoked(&gw, &bob_no_iat);
    assert_passes(&gw, &j2, "alice after bob's revocation");
    thread::sleep(Duration::from_millis(1100).saturating_sub(revoked_at.elapsed()));
    assert_passes(
        &gw,
        &tok("bob", "m5"),
        "bob's token issued after the cutoff",
    );

    let m = gw.metrics();
    assert_eq!(metric(&m, REVOCATIONS, &[("kind", "jti")]), Some(1.0));
    assert_eq!(metric(&m, REVOCATIONS, &[("kind", "sub")]), Some(1.0));
    assert_eq!(metric(&m, MIRROR, &[("kind", "jti")]), Some(1.0));
    assert_eq!(metric(&m, MIRROR, &[("kind", "sub")]), Some(1.0));
}

// ---------------------------------------------------------------------------
// admin API rules

/// Sends raw bytes (a whole request with `Connection: close`) and returns the
/// status and body.
fn raw_exchange(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn admin_revoke_is_404_without_an_admin_token() {
    let (gw, _up) = Gateway::with_upstream(&config(false, MEMORY_STORE, ""), &env());
    let t = tok("alice", "n1");
    let body = json!({"jti": "n1", "exp": exp_of(&t)}).to_string();
    for auth in [None, Some(admin_auth()), Some("Bearer ".to_string())] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let r = request(
            &gw.admin_addr,
            "POST",
            "/admin/revoke",
            &headers,
            body.as_bytes(),
        );
        assert_eq!(
            r.status,
            404,
            "no [admin] token, auth {auth:?}: {}",
            r.text()
        );
    }
    assert_passes(&gw, &t, "the token after the refused calls");
    // /metrics still needs no token.
    assert_eq!(gw.admin_get("/metrics").status, 200);
}

#[test]
fn admin_revoke_rules() {
    let (gw, _up) = Gateway::with_upstream(&config(true, MEMORY_STORE, ""), &env());
    let t = tok("alice", "r1");
    let exp = exp_of(&t);
    let good = json!({"jti": "r1", "exp": exp}).to_string();

    // Missing or wrong token: 401, and nothing is revoked.
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let prefix = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let basic = format!("Basic {ADMIN_TOKEN}");
    let no_scheme = ADMIN_TOKEN.to_string();
    for auth in [
        None,
        Some(&wrong),
        Some(&prefix),
        Some(&basic),
        Some(&no_scheme),
    ] {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = auth {
            headers.push(("Authorization", a.as_str()));
        }
        let r = request(
            &gw.admin_addr,
            "POST",
            "/admin/revoke",
            &headers,
            good.as_bytes(),
        );
        assert_eq!(r.status, 401, "auth {auth:?}: {}", r.text());
        assert!(r.json().is_object(), "401 body: {}", r.text());
    }
    assert_passes(&gw, &t, "the token after unauthorized revoke calls");

    // Bad bodies: 400 with a JSON body, never a 5xx.
    let future = now() + 300;
    let bad_400: Vec<(&str, String)> = vec![
        ("not JSON", "this is not json".into()),
        ("empty body", String::new()),
        ("truncated JSON", r#"{"jti": "x", "exp": "#.into()),
        (
            "unknown field",
            json!({"jti": "x", "exp": future, "reason": "leak"}).to_string(),
        ),
        ("jti without exp", json!({"jti": "x"}).to_string()),
        (
            "jti and sub",
            json!({"jti": "x", "exp": future, "sub": "alice"}).to_string(),
        ),
        (
            "sub and session",
            json!({"sub": "alice", "session": "s1"}).to_string(),
        ),
        (
            "jti and session",
            json!({"jti": "x", "exp": future, "session": "s1"}).to_string(),
        ),
        (
            "all three",
            json!({"jti": "x", "exp": future, "sub": "a", "session": "s"}).to_string(),
        ),
        (
            "unknown issuer",
            json!({"sub": "alice", "iss": "nope"}).to_string(),
        ),
        (
            "iss by its URL, not its config name",
            json!({"sub": "alice", "iss": "https://hs.test"}).to_string(),
        ),
        ("nothing", "{}".into()),
    ];
    // Hostile or odd bodies: some 4xx with a JSON body, never a 5xx.
    let bad_4xx: Vec<(&str, String)> = vec![
        ("array", "[]".into()),
        ("null", "null".into()),
        ("string", "\"jti\"".into()),
        ("exp alone", json!({"exp": future}).to_string()),
        ("iss alone", json!({"iss": "hs"}).to_string()),
        ("exp as a string", r#"{"jti":"x","exp":"soon"}"#.into()),
        ("exp as a float", r#"{"jti":"x","exp":1.5e9}"#.into()),
        ("exp overflowing i64", r#"{"jti":"x","exp":1e400}"#.into()),
        ("empty jti", json!({"jti": "", "exp": future}).to_string()),
        ("empty sub", json!({"sub": ""}).to_string()),
        (
            "jti as a number",
            json!({"jti": 5, "exp": future}).to_string(),
        ),
        ("duplicate key", r#"{"sub":"a","sub":"b"}"#.into()),
        (
            "session without [sessions]",
            json!({"session": "s1"}).to_string(),
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        ),
    ];
    for (what, body) in bad_400.iter().chain(bad_4xx.iter()) {
        let r = revoke_raw(&gw, body.as_bytes());
        let strict = bad_400.iter().any(|(w, _)| w == what);
        if strict {
            assert_eq!(r.status, 400, "{what}: {}", r.text());
        } else {
            assert!(
                (400..500).contains(&r.status),
                "{what}: {} {}",
                r.status,
                r.text()
            );
        }
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
            panic!("{what}: {} body is not JSON ({e}): {}", r.status, r.text())
        });
        assert!(v.get("error").is_some(), "{what}: {v}");
    }
    // Invalid UTF-8 inside a JSON string.
    let r = revoke_raw(&gw, b"{\"sub\":\"\xff\xfe\"}");
    assert!(
        (400..500).contains(&r.status),
        "invalid UTF-8: {}",
        r.status
    );
    assert!(serde_json::from_slice::<Value>(&r.body).is_ok());
    assert_passes(&gw, &t, "the token after bad revoke calls");
    let m = gw.metrics();
    for kind in ["jti", "sub", "session"] {
        assert_eq!(
            metric(&m, REVOCATIONS, &[("kind", kind)]).unwrap_or(0.0),
            0.0,
            "a refused call was counted as a {kind} revocation"
        );
    }

    // Size: up to 16 KiB is read, more is 413.
    let pad = |total: usize| {
        let core = json!({"sub": "padded"}).to_string();
        let mut s = String::from("{");
        s.push_str(&" ".repeat(total - core.len()));
        s.push_str(&core[1..]);
        assert_eq!(s.len(), total);
        s
    };
    let r = revoke_raw(&gw, pad(16 * 1024).as_bytes());
    assert_eq!(r.status, 200, "a 16 KiB body: {}", r.text());
    for size in [16 * 1024 + 1, 64 * 1024, 1024 * 1024] {
        let r = revoke_raw(&gw, pad(size).as_bytes());
        assert_eq!(r.status, 413, "a {size}-byte body: {}", r.text());
    }
    // The same over chunked transfer encoding (no Content-Length to check).
    let big = pad(20 * 1024);
    let mut req = format!(
        "POST /admin/revoke HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        gw.admin_addr,
        admin_auth()
    )
    .into_bytes();
    for chunk in big.as_bytes().chunks(4096) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_exchange(&gw.admin_addr, &req);
    assert_eq!(status, 413, "a 20 KiB chunked body: {body}");

    // Success bodies.
    let out = revoke_ok(&gw, &json!({"jti": "r1", "exp": exp}));
    assert_eq!(out, json!({"revoked": "jti", "jti": "r1", "exp": exp}));
    assert_revoked(&gw, &t);
    let out = revoke_ok(&gw, &json!({"sub": "alice", "iss": "hs"}));
    let before = out["before"].as_i64().unwrap();
    assert_eq!(
        out,
        json!({"revoked": "sub", "sub": "alice", "iss": "hs", "before": before})
    );
    assert_eq!(gw.admin_get("/healthz").status, 200);
}

// ---------------------------------------------------------------------------
// CLI

#[test]
fn cli_revoke_jti_sub_and_session() {
    let redis = RedisServer::start();
    let (gw, _up) = Gateway::with_upstream(
        &config(true, &redis_store(&redis.url()), SESSION_EXTRA),
        &env(),
    );
    let dir = temp_dir("revoke-cli");
    let url = format!("http://{}", gw.admin_addr);
    let no_env: [(&str, &str); 0] = [];

    // --jti/--exp with --admin-url and --token.
    let t = tok("alice", "cli-1");
    let exp = exp_of(&t).to_string();
    let out = run_cli(
        &[
            "revoke",
            "--jti",
            "cli-1",
            "--exp",
            &exp,
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        &no_env,
        &dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "revoke --jti: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("revoke --jti printed no JSON ({e}): {stdout:?}"));
    assert_eq!(
        printed,
        json!({"revoked": "jti", "jti": "cli-1", "exp": exp_of(&t)})
    );
    assert_revoked(&gw, &t);

    // --sub/--iss with the URL and token from the environment.
    let bob = tok("bob", "cli-2");
    let bob2 = tok2("bob", "cli-3");
    let out = run_cli(
        &["revoke", "--sub", "bob", "--iss", "hs"],
        &[
            ("AUTHGATE_ADMIN_URL", &url),
            ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
        &dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "revoke --sub (env): {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(printed["revoked"], "sub");
    assert_eq!(printed["sub"], "bob");
    assert_eq!(printed["iss"], "hs");
    assert!(printed["before"].is_i64(), "{printed}");
    assert_revoked(&gw, &bob);
    assert_passes(&gw, &bob2, "bob's hs2 token after --sub bob --iss hs");

    // --session.
    // (Not starting with '-': see cli_revoke_takes_ids_that_start_with_a_hyphen.)
    let sid = format!("cli{}", new_sid("cli"));
    let value = r#"{"cookie":{"originalMaxAge":3600000,"expires":"2030-01-01T00:00:00.000Z"},"userId":"u1"}"#;
    redis.cmd(&["SET", &format!("sess:{sid}"), value]);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET));
    assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 200);
    let out = run_cli(
        &[
            "revoke",
            "--session",
            &sid,
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        &no_env,
        &dir,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "revoke --session: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap(),
        json!({"revoked": "session", "session": sid})
    );
    assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 401);

    // Failures: non-zero, the status on stderr, and nothing revoked.
    let c = tok("carol", "cli-4");
    let c_exp = exp_of(&c).to_string();
    let wrong = "not-the-admin-token";
    let out = run_cli(
        &[
            "revoke",
            "--jti",
            "cli-4",
            "--exp",
            &c_exp,
            "--admin-url",
            &url,
            "--token",
            wrong,
        ],
        &no_env,
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "wrong token: {stderr}");
    assert!(stderr.contains("401"), "wrong token, stderr: {stderr}");
    assert!(
        !stderr.contains(wrong),
        "stderr shows the admin token: {stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_passes(&gw, &c, "carol after a refused CLI revoke");

    let out = run_cli(
        &[
            "revoke",
            "--sub",
            "carol",
            "--iss",
            "nope",
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        &no_env,
        &dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "unknown issuer accepted");
    assert!(stderr.contains("400"), "unknown issuer, stderr: {stderr}");

    let dead = format!("http://{}", dead_addr());
    let out = run_cli(
        &[
            "revoke",
            "--sub",
            "carol",
            "--admin-url",
            &dead,
            "--token",
            ADMIN_TOKEN,
        ],
        &no_env,
        &dir,
    );
    assert!(!out.status.success(), "unreachable admin API: exit 0");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(ADMIN_TOKEN));

    // Usage errors never reach the admin API.
    for args in [
        vec![
            "revoke",
            "--jti",
            "cli-5",
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        vec![
            "revoke",
            "--iss",
            "hs",
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        vec![
            "revoke",
            "--jti",
            "cli-5",
            "--exp",
            "1",
            "--sub",
            "x",
            "--admin-url",
            &url,
            "--token",
            ADMIN_TOKEN,
        ],
        vec!["revoke", "--admin-url", &url, "--token", ADMIN_TOKEN],
    ] {
        let out = run_cli(&args, &no_env, &dir);
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    assert_passes(&gw, &c, "carol after the CLI failures");
    let m = gw.metrics();
    assert_eq!(metric(&m, REVOCATIONS, &[("kind", "jti")]), Some(1.0));
    assert_eq!(metric(&m, REVOCATIONS, &[("kind", "sub")]), Some(1.0));
    assert_eq!(metric(&m, REVOCATIONS, &[("kind", "session")]), Some(1.0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// express-session ids are base64url (uid-safe), so about one in 64 starts with
/// `-`; jtis and subjects may too. `authgate revoke --session <sid>` must take
/// them as values, not as flags.
#[test]
fn cli_revoke_takes_ids_that_start_with_a_hyphen() {
    let redis = RedisServer::start();
    let (gw, _up) = Gateway::with_upstream(
        &config(true, &redis_store(&redis.url()), SESSION_EXTRA),
        &env(),
    );
    let dir = temp_dir("revoke-cli-hyphen");
    let url = format!("http://{}", gw.admin_addr);
    let no_env: [(&str, &str); 0] = [];
    let t = tok("alice", "-j1");
    let exp = exp_of(&t).to_string();
    let sid = "-Abc_def-0123456789abcdefghijklm";
    for args in [
        vec!["revoke", "--jti", "-j1", "--exp", &exp],
        vec!["revoke", "--sub", "-alice"],
        vec!["revoke", "--session", sid],
    ] {
        let mut args = args;
        args.extend(["--admin-url", &url, "--token", ADMIN_TOKEN]);
        let out = run_cli(&args, &no_env, &dir);
        assert!(
            out.status.success(),
            "{args:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_revoked(&gw, &t);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Redis loses its revocations (`FLUSHALL`); the running instances keep
/// enforcing them from their mirrors, and their next re-read writes them
/// back (counted, logged), so an instance started afterwards on the same
/// Redis refuses the token too, and Redis holds the jti and the subject
/// cutoff again. Before the write-back, that fresh instance answered 200.
#[test]
fn revocations_lost_from_redis_are_written_back_by_the_mirrors() {
    let p = Pair::start("");
    let by_jti = tok("alice", "wb-1");
    revoke_ok(&p.a, &json!({"jti": "wb-1", "exp": exp_of(&by_jti)}));
    // issued before the cutoff, so the cutoff covers it
    let by_sub = tok("mallory", "wb-2");
    revoke_ok(&p.a, &json!({"sub": "mallory"}));
    for (_, gw) in p.both() {
        wait_revoked(gw, &by_jti, "jti wb-1 before the flush");
        assert_revoked(gw, &by_sub);
    }
    assert_eq!(p.redis.cmd(&["FLUSHALL"]), "OK");
    assert_eq!(
        p.redis.query(&["EXISTS", "authgate:{revoked}:jti"]),
        Resp::Int(0)
    );
    // the mirrors still enforce both
    for (_, gw) in p.both() {
        assert_revoked(gw, &by_jti);
        assert_revoked(gw, &by_sub);
    }
    // one re-read (every 30 s) later, Redis has them back: written by
    // whichever instance re-reads first (the other then finds them there)
    let restored = |kind: &str| -> f64 {
        [&p.a, &p.b]
            .iter()
            .filter_map(|gw| {
                metric(
                    &gw.metrics(),
                    "authgate_revocations_restored_total",
                    &[("kind", kind)],
                )
            })
            .sum()
    };
    let start = Instant::now();
    while restored("jti") < 1.0 || restored("sub") < 1.0 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "nothing written back: jti {}, sub {}",
            restored("jti"),
            restored("sub")
        );
        thread::sleep(Duration::from_millis(200));
    }
    match p.redis.query(&["ZSCORE", "authgate:{revoked}:jti", "wb-1"]) {
        Resp::Bulk(Some(_)) => {}
        other => panic!("wb-1 not written back: {other:?}"),
    }
    match p
        .redis
        .query(&["HGET", "authgate:{revoked}:sub", "*\nmallory"])
    {
        Resp::Bulk(Some(_)) => {}
        other => panic!("the mallory cutoff not written back: {other:?}"),
    }
    // logged after it is counted, through the log writer's thread
    let logged = poll_until(Duration::from_secs(5), || {
        (p.a.logs().contains("written back") || p.b.logs().contains("written back")).then_some(())
    });
    assert!(logged.is_some(), "the write-back is not logged");
    // a fresh instance on the same Redis refuses both
    let toml = config(true, &redis_store(&p.redis.url()), "").replace("{upstream}", &p.up.addr);
    let c = Gateway::start(&toml, &env());
    let start = Instant::now();
    while c.admin_get("/readyz").status != 200 {
        assert!(start.elapsed() < Duration::from_secs(10), "C never ready");
        thread::sleep(POLL);
    }
    assert_revoked(&c, &by_jti);
    assert_revoked(&c, &by_sub);
}
