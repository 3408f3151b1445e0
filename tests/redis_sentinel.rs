//! authgate on Redis Sentinel (issue 10): a master, its replica and one
//! sentinel (`sentinel monitor mymaster 127.0.0.1 <master port> 1`,
//! `down-after-milliseconds 1000`, `failover-timeout 5000`), all on free
//! loopback ports, and `authgate serve` with `store.kind = "redis_sentinel"`.
//!
//! Before the failover, sessions, revocations and a rate-limited route work
//! through the master Sentinel names. Then a revocation is acknowledged (admin
//! 200) and replicated, and the master is killed (SIGKILL). Sentinel promotes
//! the replica, and without a restart authgate follows: the rate-limited route
//! (`on_error = "deny"`) is back to 200/429 and counts on the new master, a new
//! revocation is stored there, sessions are read from it and its `DEL`s are
//! seen within 1 s. The revocation acknowledged before the failover is still
//! enforced, by the running instance and by one started after the failover
//! (which loads it from the new master). The same failover with AUTH on the
//! data nodes (an ACL user, `[store] username` + `password_env`): authgate
//! authenticates to whichever master Sentinel names. Rate-limited requests,
//! session reads and revocations through Sentinel take well under the 40 ms
//! of a Nagle / delayed-ACK stall.

mod common;

use authgate::testing::session::sign_cookie;
use common::cluster::{subscribers, tracking_clients, SentinelSetup};
use common::*;
use serde_json::{json, Value};
use std::thread;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "sentinel-admin-token-0123456789abcdef";
const SESSION_SECRET: &str = "sentinel-session-secret-0123456789abcdef";
const CHANNEL: &str = "authgate:{revoked}:events:0";
const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
/// How long the whole failover may take, from the kill to authgate serving
/// normally again (down-after 1 s, election, promotion, reconnection).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(20);
const ONE_SECOND: Duration = Duration::from_secs(1);
const DAY_MS: i64 = 86_400_000;
const LIMIT: usize = 5;

fn config(sentinel_url: &str, master: &str) -> String {
    GatewayConfig::base()
        .extra(&format!(
            r#"[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"

[[routes]]
name = "limited"
path = "/limited"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "header:X-Client"
limit = {LIMIT}
window = "1m"
count = "all"

[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[store]
kind = "redis_sentinel"
sentinels = ["{sentinel_url}"]
master = "{master}"
on_error = "deny"

[sessions]
cookie = "sid"
secrets_env = ["SESSION_SECRET"]
identity = {{ subject = "userId" }}
"#
        ))
        .toml()
}

fn env() -> [(&'static str, &'static str); 3] {
    [
        HS_ENV,
        ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SESSION_SECRET", SESSION_SECRET),
    ]
}

fn tok(sub: &str, jti: &str) -> String {
    hs_token(&hs_claims(sub, json!({ "jti": jti })))
}

fn exp_of(token: &str) -> i64 {
    token_part(token, 1)["exp"].as_i64().unwrap()
}

fn revoke(gw: &Gateway, body: &Value) -> Response {
    gw.admin_post("/admin/revoke", ADMIN_TOKEN, &body.to_string())
}

fn revoked(r: &Response) -> bool {
    r.status == 401 && r.json() == json!({"error": "invalid_token", "reason": "revoked"})
}

#[track_caller]
fn assert_passes(gw: &Gateway, token: &str, what: &str) {
    let r = gw.get_bearer("/api/x", token);
    assert_eq!(r.status, 200, "{what} on {}: {}", gw.proxy_addr, r.text());
}

#[track_caller]
fn assert_revoked(gw: &Gateway, token: &str, what: &str) {
    let r = gw.get_bearer("/api/x", token);
    assert!(
        revoked(&r),
        "{what}: expected 401 revoked, got {} {}",
        r.status,
        r.text()
    );
}

fn limited(gw: &Gateway, client: &str) -> Response {
    gw.get("/limited", &[("X-Client", client)])
}

/// `LIMIT + 3` requests of a fresh client: exactly the first `LIMIT` pass.
#[track_caller]
fn assert_limit_enforced(gw: &Gateway, client: &str, what: &str) {
    let statuses: Vec<u16> = (0..LIMIT + 3).map(|_| limited(gw, client).status).collect();
    let mut want = vec![200; LIMIT];
    want.extend([429; 3]);
    assert_eq!(statuses, want, "{what}: client {client}");
}

#[track_caller]
fn wait_ready(gw: &Gateway, within: Duration) {
    let ready = poll_until(within, || {
        let r = gw.admin_get("/readyz");
        (r.status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "{} not ready within {within:?}: {}\n--- stderr:\n{}\n--- stdout:\n{}",
        gw.admin_addr,
        gw.admin_get("/readyz").text(),
        gw.stderr(),
        gw.logs()
    );
}

#[test]
fn failover_authgate_follows_the_promoted_replica_and_keeps_acknowledged_revocations() {
    let mut s = SentinelSetup::start("mymaster");
    let up = Upstream::start();
    let toml = config(&s.sentinel_url(), &s.name).replace("{upstream}", &up.addr);
    let gw = Gateway::start(&toml, &env());
    wait_ready(&gw, Duration::from_secs(15));
    let master = s.master.addr();
    let diag = |s: &SentinelSetup, gw: &Gateway| {
        format!(
            "{}\n--- authgate stderr:\n{}\n--- authgate stdout:\n{}",
            s.logs(),
            gw.stderr(),
            gw.logs()
        )
    };

    // --- before: everything goes to the master Sentinel names.
    let sid = new_sid("sentinel");
    let key = format!("sess:{sid}");
    let cookie = format!("sid={}", sign_cookie(&sid, SESSION_SECRET.as_bytes()));
    let value = session_value(json!({"userId": "sam"}), DAY_MS, DAY_MS);
    assert_eq!(
        s.master
            .cmd(&["SET", &key, &value, "PX", &DAY_MS.to_string()]),
        "OK"
    );
    let r = gw.get("/app/x", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "session before the failover: {}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("sam"));
    assert_limit_enforced(&gw, "before", "rate limit on the first master");

    let t1 = tok("alice", "j1");
    let t2 = tok("alice", "j2");
    let t3 = tok("bob", "j3");
    for t in [&t1, &t2, &t3] {
        assert_passes(&gw, t, "before any revocation");
    }
    let r = revoke(&gw, &json!({"jti": "j1", "exp": exp_of(&t1)}));
    assert_eq!(r.status, 200, "revoke j1: {}", r.text());
    assert_revoked(&gw, &t1, "j1 right after its revocation");
    assert_eq!(
        s.master.cmd(&["ZSCORE", REVOKED_JTIS, "j1"]),
        exp_of(&t1).to_string()
    );
    // Replication is asynchronous: wait until the replica has the revocation
    // (and the session) before the master dies. Only then is it promised.
    let replicated = poll_until(Duration::from_secs(5), || {
        let score = s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "j1"]);
        let session = s.replica.cmd(&["EXISTS", &key]);
        (score == exp_of(&t1).to_string() && session == "1").then_some(())
    });
    assert!(
        replicated.is_some(),
        "not replicated in 5 s:\n{}",
        diag(&s, &gw)
    );

    // --- the master dies.
    s.master.kill();
    let killed = Instant::now();
    let new_master = s.replica.addr();
    let promoted = poll_until(FAILOVER_DEADLINE, || {
        (s.master_addr().as_deref() == Some(new_master.as_str())).then_some(killed.elapsed())
    })
    .unwrap_or_else(|| {
        panic!(
            "sentinel did not promote {new_master} within {FAILOVER_DEADLINE:?} \
             (it names {:?}):\n{}",
            s.master_addr(),
            diag(&s, &gw)
        )
    });
    assert_eq!(
        s.replica.info_field("replication", "role").as_deref(),
        Some("master")
    );

    // --- authgate follows, without a restart: the rate-limited route is back
    // to normal operation (200 or 429; 503 only while it cannot reach a master).
    let mut seen = Vec::new();
    let recovered = poll_until(FAILOVER_DEADLINE.saturating_sub(killed.elapsed()), || {
        let r = limited(&gw, "probe");
        seen.push(r.status);
        match r.status {
            200 | 429 => Some(killed.elapsed()),
            503 => {
                assert_error(&r, 503, "unavailable", "store_unavailable");
                None
            }
            other => panic!(
                "rate-limited route during the failover: {other} {}",
                r.text()
            ),
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "the rate-limited route did not recover within {FAILOVER_DEADLINE:?} of the kill \
             (statuses {seen:?}; sentinel names {:?}):\n{}",
            s.master_addr(),
            diag(&s, &gw)
        )
    });
    show(&format!(
        "failover: sentinel named {new_master} {promoted:?} after the kill of {master}; \
         authgate served the rate-limited route again after {recovered:?} \
         ({} requests answered 503 meanwhile)",
        seen.iter().filter(|s| **s == 503).count()
    ));
    // Normal operation, counted on the new master.
    assert_limit_enforced(&gw, "after", "rate limit on the promoted master");
    let rl_keys = s.replica.cmd(&["KEYS", "authgate:rl:*"]);
    assert!(
        rl_keys.lines().count() >= 2,
        "rate-limit keys on the new master: {rl_keys:?}"
    );

    // The revocation acknowledged before the failover: still enforced (the
    // mirror), and still stored on the new master.
    assert_revoked(&gw, &t1, "j1 after the failover");
    assert_eq!(
        s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "j1"]),
        exp_of(&t1).to_string()
    );
    // A new revocation succeeds and is stored on the new master.
    let r = revoke(&gw, &json!({"jti": "j2", "exp": exp_of(&t2)}));
    assert_eq!(r.status, 200, "revoke j2 after the failover: {}", r.text());
    assert_revoked(&gw, &t2, "j2 right after its revocation");
    assert_eq!(
        s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "j2"]),
        exp_of(&t2).to_string()
    );
    assert_passes(&gw, &t3, "bob's token after the failover");

    // Sessions come from the new master, and once the instance tracks it
    // again, a DEL there is seen within 1 s.
    let r = gw.get("/app/x", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "session after the failover: {}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("sam"));
    let tracking = poll_until(Duration::from_secs(10), || {
        (tracking_clients(&new_master) >= 1 && subscribers(&new_master, CHANNEL) >= 1).then_some(())
    });
    assert!(
        tracking.is_some(),
        "authgate never re-opened its tracking and revocation connections on {new_master}:\n{}",
        diag(&s, &gw)
    );
    let warm = poll_until(Duration::from_secs(5), || {
        assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 200);
        thread::sleep(Duration::from_millis(100));
        let before = s.replica.command_calls("get");
        assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 200);
        (s.replica.command_calls("get") == before).then_some(())
    });
    assert!(
        warm.is_some(),
        "the session is never cached after the failover"
    );
    assert_eq!(s.replica.cmd(&["DEL", &key]), "1");
    let deleted = Instant::now();
    let gone = poll_until(ONE_SECOND, || {
        let r = gw.get("/app/x", &[("Cookie", &cookie)]);
        (r.status != 200).then_some(r)
    })
    .expect("a session deleted on the new master was still accepted 1 s later");
    assert_eq!(
        gone.json(),
        json!({"error": "invalid_token", "reason": "session_not_found"}),
        "after {:?}",
        deleted.elapsed()
    );

    // --- an instance restarted after the failover loads the revocations
    // from the new master.
    drop(gw);
    let gw2 = Gateway::start(&toml, &env());
    wait_ready(&gw2, Duration::from_secs(15));
    assert_revoked(
        &gw2,
        &t1,
        "j1 (before the failover) on a restarted instance",
    );
    assert_revoked(&gw2, &t2, "j2 (after the failover) on a restarted instance");
    assert_passes(&gw2, &t3, "bob's token on a restarted instance");
}

/// What Redis's asynchronous replication cannot promise: a revocation
/// acknowledged (admin 200) but not yet on the replica when the master dies
/// is gone from the promoted master. The instances that were running keep
/// enforcing it from their mirrors, and the re-read after they reconnect
/// to the new master writes it back, so an instance started afterwards
/// enforces it too (before the write-back, it answered that token 200).
#[test]
fn a_revocation_the_replica_never_received_is_written_back_after_the_failover() {
    let mut s = SentinelSetup::start("mymaster");
    let up = Upstream::start();
    let toml = config(&s.sentinel_url(), &s.name).replace("{upstream}", &up.addr);
    let a = Gateway::start(&toml, &env());
    let b = Gateway::start(&toml, &env());
    for gw in [&a, &b] {
        wait_ready(gw, Duration::from_secs(15));
    }
    let master = s.master.addr();
    let subscribed = poll_until(Duration::from_secs(10), || {
        (subscribers(&master, CHANNEL) == 2).then_some(())
    });
    assert!(
        subscribed.is_some(),
        "both instances subscribed on {master}"
    );

    let kept = tok("alice", "kept");
    let lost = tok("alice", "lost");
    let r = revoke(&a, &json!({"jti": "kept", "exp": exp_of(&kept)}));
    assert_eq!(r.status, 200, "revoke kept: {}", r.text());
    let replicated = poll_until(Duration::from_secs(5), || {
        (!s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "kept"]).is_empty()).then_some(())
    });
    assert!(replicated.is_some(), "`kept` never reached the replica");

    // The replica stops receiving the master's writes (it is pointed at a
    // port where nothing listens, and stays a replica): what a replication
    // lag or a network cut between the two looks like at the moment of a crash.
    let nowhere = dead_addr();
    let (host, port) = nowhere.split_once(':').unwrap();
    assert_eq!(s.replica.cmd(&["REPLICAOF", host, port]), "OK");
    // Acknowledged: authgate does not wait for replicas (no WAIT).
    let r = revoke(&a, &json!({"jti": "lost", "exp": exp_of(&lost)}));
    assert_eq!(r.status, 200, "revoke lost: {}", r.text());
    for gw in [&a, &b] {
        let seen = poll_until(ONE_SECOND, || {
            revoked(&gw.get_bearer("/api/x", &lost)).then_some(())
        });
        assert!(
            seen.is_some(),
            "`lost` not enforced by {} within 1 s",
            gw.proxy_addr
        );
    }
    assert!(!s.master.cmd(&["ZSCORE", REVOKED_JTIS, "lost"]).is_empty());
    assert_eq!(s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "lost"]), "");

    s.master.kill();
    let new_master = s.replica.addr();
    let promoted = poll_until(FAILOVER_DEADLINE, || {
        (s.master_addr().as_deref() == Some(new_master.as_str())).then_some(())
    });
    assert!(
        promoted.is_some(),
        "sentinel did not promote {new_master}:\n{}",
        s.logs()
    );
    // Both instances follow, and re-subscribe (which re-reads the whole set).
    let followed = poll_until(FAILOVER_DEADLINE, || {
        let ready = [&a, &b]
            .iter()
            .all(|gw| gw.admin_get("/readyz").status == 200);
        (ready && subscribers(&new_master, CHANNEL) == 2).then_some(())
    });
    assert!(
        followed.is_some(),
        "the instances did not re-subscribe on {new_master}:\n{}\n--- A:\n{}",
        s.logs(),
        a.logs()
    );

    // The promoted master had lost the acknowledged revocation; the
    // instances' re-read after reconnecting writes it back.
    let back = poll_until(Duration::from_secs(5), || {
        (!s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "lost"]).is_empty()).then_some(())
    });
    assert!(
        back.is_some(),
        "`lost` was not written back to the promoted master"
    );
    assert!(!s.replica.cmd(&["ZSCORE", REVOKED_JTIS, "kept"]).is_empty());
    let restored: f64 = [&a, &b]
        .iter()
        .filter_map(|gw| {
            metric(
                &gw.metrics(),
                "authgate_revocations_restored_total",
                &[("kind", "jti")],
            )
        })
        .sum();
    assert!(restored >= 1.0, "the write-back is counted: {restored}");
    for gw in [&a, &b] {
        assert_revoked(gw, &lost, "`lost` on an instance that was running");
        assert_revoked(gw, &kept, "`kept` on an instance that was running");
    }
    // An instance started now finds both on the new master.
    let c = Gateway::start(&toml, &env());
    wait_ready(&c, Duration::from_secs(15));
    assert_revoked(
        &c,
        &kept,
        "`kept` on an instance started after the failover",
    );
    assert_revoked(
        &c,
        &lost,
        "`lost` on an instance started after the failover",
    );
}

/// The data nodes require AUTH (an ACL user; the `default` user may still
/// ping, replicate and be driven by Sentinel, but read, write and run
/// scripts on nothing): authgate authenticates to the master Sentinel names
/// with `[store] username` + `password_env`, before and after a failover.
/// The requests that reach the master Sentinel names do not stall either
/// (the cluster's 40 ms question, asked of Sentinel): rate-limited requests
/// (allowed and refused), session reads on a cache miss, and revocations.
#[test]
fn requests_through_sentinel_do_not_stall() {
    let s = SentinelSetup::start("mymaster");
    let up = Upstream::start();
    let toml = config(&s.sentinel_url(), &s.name).replace("{upstream}", &up.addr);
    let gw = Gateway::start(&toml, &env());
    wait_ready(&gw, Duration::from_secs(15));
    limited(&gw, "warm-up");
    let mut by_status: std::collections::BTreeMap<u16, Latencies> = Default::default();
    for i in 0..30 {
        let mut took = Latencies::default();
        let r = took.time(|| limited(&gw, &format!("c{}", i / 10)));
        by_status.entry(r.status).or_default().ms.extend(took.ms);
    }
    assert_eq!(by_status.keys().copied().collect::<Vec<_>>(), [200, 429]);
    for (status, lat) in &mut by_status {
        lat.assert_no_stall(&format!("rate-limited {status}"));
    }
    let mut reads = Latencies::default();
    for i in 0..30 {
        let sid = new_sid("nostall");
        let value = session_value(json!({"userId": format!("u{i}")}), DAY_MS, DAY_MS);
        s.master.cmd(&[
            "SET",
            &format!("sess:{sid}"),
            &value,
            "PX",
            &DAY_MS.to_string(),
        ]);
        let cookie = format!("sid={}", sign_cookie(&sid, SESSION_SECRET.as_bytes()));
        let r = reads.time(|| gw.get("/app/x", &[("Cookie", &cookie)]));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    reads.assert_no_stall("session read on a cache miss");
    let mut revokes = Latencies::default();
    for i in 0..10 {
        let t = tok("mallory", &format!("nostall-{i}"));
        let r = revokes.time(|| {
            revoke(
                &gw,
                &json!({"jti": format!("nostall-{i}"), "exp": exp_of(&t)}),
            )
        });
        assert_eq!(r.status, 200, "{}", r.text());
    }
    revokes.assert_no_stall("POST /admin/revoke");
}

#[test]
fn failover_with_acl_authentication_on_the_data_nodes() {
    const PW: &str = "gate-pw-0123456789";
    let acl = [
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-@read",
        "-@write",
        "-@scripting",
        "--user",
        "gate",
        "on",
        ">gate-pw-0123456789",
        "~*",
        "&*",
        "+@all",
    ];
    let mut s = SentinelSetup::start_with("mymaster", &acl);
    let as_gate = |addr: &str, args: &[&str]| -> Resp {
        let mut r = redis_pipeline(addr, &[&["AUTH", "gate", PW], args]).unwrap();
        r.pop().unwrap()
    };
    // Without credentials the data is out of reach.
    match s.master.query(&["ZCARD", REVOKED_JTIS]) {
        Resp::Error(e) => assert!(e.starts_with("NOPERM"), "{e}"),
        other => panic!("an unauthenticated ZCARD answered {other:?}"),
    }
    let up = Upstream::start();
    let toml = config(&s.sentinel_url(), &s.name)
        .replace(
            "on_error = \"deny\"",
            "on_error = \"deny\"\nusername = \"gate\"\npassword_env = \"REDIS_PASSWORD\"",
        )
        .replace("{upstream}", &up.addr);
    let mut e = env().to_vec();
    e.push(("REDIS_PASSWORD", PW));
    let gw = Gateway::start(&toml, &e);
    wait_ready(&gw, Duration::from_secs(15));

    let t1 = tok("alice", "a1");
    let t2 = tok("alice", "a2");
    let r = revoke(&gw, &json!({"jti": "a1", "exp": exp_of(&t1)}));
    assert_eq!(r.status, 200, "revoke a1: {}", r.text());
    assert_revoked(&gw, &t1, "a1");
    assert_limit_enforced(&gw, "acl-before", "rate limit as the ACL user");
    assert_eq!(
        as_gate(&s.master.addr(), &["ZSCORE", REVOKED_JTIS, "a1"]).text(),
        exp_of(&t1).to_string()
    );
    let replicated = poll_until(Duration::from_secs(5), || {
        (as_gate(&s.replica.addr(), &["ZSCORE", REVOKED_JTIS, "a1"]).text()
            == exp_of(&t1).to_string())
        .then_some(())
    });
    assert!(replicated.is_some(), "a1 not replicated:\n{}", s.logs());

    s.master.kill();
    let new_master = s.replica.addr();
    let promoted = poll_until(FAILOVER_DEADLINE, || {
        (s.master_addr().as_deref() == Some(new_master.as_str())).then_some(())
    });
    assert!(promoted.is_some(), "no promotion:\n{}", s.logs());
    // authgate re-resolves the master and authenticates to it
    let written = poll_until(FAILOVER_DEADLINE, || {
        let r = revoke(&gw, &json!({"jti": "a2", "exp": exp_of(&t2)}));
        (r.status == 200).then_some(())
    });
    assert!(
        written.is_some(),
        "no revocation accepted after the failover:\n{}\n{}",
        s.logs(),
        gw.stderr()
    );
    assert_revoked(&gw, &t1, "a1 after the failover");
    assert_revoked(&gw, &t2, "a2 after the failover");
    assert_eq!(
        as_gate(&new_master, &["ZSCORE", REVOKED_JTIS, "a2"]).text(),
        exp_of(&t2).to_string()
    );
    assert!(
        !format!("{}{}", gw.logs(), gw.stderr()).contains(PW),
        "the password was logged"
    );
}
