//! authgate on a real Redis Cluster (issue 10): every test starts three
//! cluster-enabled `redis-server`s on free loopback ports, joins them with
//! `redis-cli --cluster create` (three masters, no replicas), and runs two
//! `authgate serve` instances with `store.kind = "redis_cluster"` and two of
//! the three nodes as seeds.
//!
//! - sessions stored on every master validate on both instances, are served
//!   from their caches, and a `DEL` made with `redis-cli -c` is seen by both
//!   within 1 s (per-master client tracking);
//! - a revocation (jti, subject, session) made on one instance is enforced by
//!   the other within 1 s, and by an instance started afterwards; also while
//!   the revocation keys' slot is being migrated (`ASK`) and after it moved
//!   to another master (`MOVED`);
//! - a shared rate limit of 10 over 50 requests alternating between the two
//!   instances lets exactly 10 through; 30 users' budgets spread over the
//!   masters while one user's stays exact; a route limited by user and IP
//!   (two slots) refunds the budget that passed when the other refuses;
//! - the sessions of 100 users spread over all three masters (the spread is
//!   printed) and all validate;
//! - a session whose slot is being migrated to another master validates
//!   through `ASK`; once the slot has moved, through `MOVED`, and its changes
//!   are still seen within 1 s.

mod common;

use authgate::testing::session::sign_cookie;
use common::cluster::{subscribers, tracking_clients, RedisCluster};
use common::*;
use serde_json::{json, Value};
use std::thread;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "cluster-admin-token-0123456789abcdef";
const SESSION_SECRET: &str = "cluster-session-secret-0123456789abcdef";
/// The revocation channel of database 0 (a cluster has only database 0).
const CHANNEL: &str = "authgate:{revoked}:events:0";
const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
const REVOKED_SUBS: &str = "authgate:{revoked}:sub";
/// The contract's bound for a change to reach every instance.
const ONE_SECOND: Duration = Duration::from_secs(1);
const DAY_MS: i64 = 86_400_000;

fn config(seeds: &[String]) -> String {
    let urls = seeds
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    GatewayConfig::base()
        .extra(&format!(
            r#"[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"

[[routes]]
name = "login"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 10
window = "1m"
count = "all"

[[routes]]
name = "signin"
path = "/signin"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "json:username"
limit = 3
window = "1m"
count = "all"

[[routes]]
name = "signin-ip"
path = "/signin-ip"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "json:username"
limit = 2
window = "1m"
count = "all"

[[routes.rate_limits]]
key = "ip"
limit = 5
window = "1m"
count = "all"

[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[store]
kind = "redis_cluster"
urls = [{urls}]
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

/// A session of the test: its id, key, `Cookie` header and user.
#[derive(Clone, Debug)]
struct Session {
    sid: String,
    key: String,
    cookie: String,
    user: String,
}

impl Session {
    fn new(tag: &str, user: &str) -> Session {
        let sid = new_sid(tag);
        let signed = sign_cookie(&sid, SESSION_SECRET.as_bytes());
        Session {
            key: format!("sess:{sid}"),
            cookie: format!("sid={signed}"),
            user: user.to_string(),
            sid,
        }
    }
}

/// Two gateways on one three-master cluster. Fields drop in order: the
/// gateways go first, the cluster last.
struct Fleet {
    a: Gateway,
    b: Gateway,
    up: Upstream,
    cluster: RedisCluster,
    toml: String,
}

impl Fleet {
    fn start() -> Fleet {
        let cluster = RedisCluster::start(3);
        let up = Upstream::start();
        let toml = config(&cluster.seed_urls(2)).replace("{upstream}", &up.addr);
        let a = Gateway::start(&toml, &env());
        let b = Gateway::start(&toml, &env());
        let f = Fleet {
            a,
            b,
            up,
            cluster,
            toml,
        };
        // Ready (revocation mirror synced, store answering), subscribed, and
        // tracking on every master: the 1 s bounds are about propagation, not
        // about start-up.
        for (_, gw) in f.both() {
            wait_ready(gw);
        }
        f.wait_until(
            "both instances subscribed to the revocation channel",
            || {
                f.cluster
                    .nodes
                    .iter()
                    .map(|n| subscribers(&n.addr(), CHANNEL))
                    .sum::<i64>()
                    == 2
            },
        );
        f.wait_until("both instances tracking every master", || {
            f.cluster
                .nodes
                .iter()
                .all(|n| tracking_clients(&n.addr()) == 2)
        });
        f
    }

    /// Rate-limit keys per master.
    fn rate_limit_keys(&self) -> Vec<(String, usize)> {
        self.cluster
            .nodes
            .iter()
            .map(|n| {
                let keys = n.cmd(&["KEYS", "authgate:rl:*"]);
                (n.addr(), keys.lines().filter(|l| !l.is_empty()).count())
            })
            .collect()
    }

    fn both(&self) -> [(&'static str, &Gateway); 2] {
        [("A", &self.a), ("B", &self.b)]
    }

    #[track_caller]
    fn wait_until(&self, what: &str, mut ok: impl FnMut() -> bool) {
        if poll_until(Duration::from_secs(15), || ok().then_some(())).is_none() {
            panic!(
                "not reached within 15 s: {what}\n--- A:\n{}{}\n--- B:\n{}{}",
                self.a.stderr(),
                self.a.logs(),
                self.b.stderr(),
                self.b.logs()
            );
        }
    }

    /// Stores a session as connect-redis does (`SET sess:<sid> <json> PX <a day>`),
    /// through the cluster (following `MOVED`).
    fn put(&self, s: &Session) {
        let value = session_value(json!({ "userId": s.user }), DAY_MS, DAY_MS);
        let ok = self
            .cluster
            .cmd(&["SET", &s.key, &value, "PX", &DAY_MS.to_string()]);
        assert_eq!(ok, "OK");
    }

    /// New stored sessions until every master holds one: one per master, in node order.
    fn one_session_per_master(&self, tag: &str) -> Vec<Session> {
        let mut out: Vec<Option<Session>> = vec![None; self.cluster.nodes.len()];
        for i in 0..1000 {
            if out.iter().all(Option::is_some) {
                break;
            }
            let s = Session::new(tag, &format!("{tag}-user-{i}"));
            let port = self.cluster.owner(&s.key).port;
            let idx = self
                .cluster
                .nodes
                .iter()
                .position(|n| n.port == port)
                .unwrap();
            if out[idx].is_none() {
                self.put(&s);
                out[idx] = Some(s);
            }
        }
        out.into_iter()
            .map(|s| s.expect("no session id hashed to some master in 1000 tries"))
            .collect()
    }

    fn owner(&self, s: &Session) -> &RedisServer {
        self.cluster.owner(&s.key)
    }

    /// Sends requests with the session to `gw` until one is answered from its
    /// cache (no `GET` on the session's master), so later ones hit the cache.
    #[track_caller]
    fn warm(&self, gw: &Gateway, s: &Session) {
        let owner = self.owner(s);
        let warm = poll_until(Duration::from_secs(5), || {
            assert_session_ok(gw, &self.up, s);
            thread::sleep(Duration::from_millis(100));
            let before = owner.command_calls("get");
            assert_session_ok(gw, &self.up, s);
            (owner.command_calls("get") == before).then_some(())
        });
        assert!(
            warm.is_some(),
            "{} never served session {} from its cache within 5 s",
            gw.proxy_addr,
            s.sid
        );
    }
}

#[track_caller]
fn wait_ready(gw: &Gateway) {
    let ready = poll_until(Duration::from_secs(15), || {
        let r = gw.admin_get("/readyz");
        (r.status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "{} not ready within 15 s: {}\n--- stderr:\n{}\n--- stdout:\n{}",
        gw.admin_addr,
        gw.admin_get("/readyz").text(),
        gw.stderr(),
        gw.logs()
    );
}

fn app_get(gw: &Gateway, s: &Session) -> Response {
    gw.get("/app/x", &[("Cookie", &s.cookie)])
}

/// 200, and the upstream saw the session's user as `X-Auth-Subject`.
#[track_caller]
fn assert_session_ok(gw: &Gateway, up: &Upstream, s: &Session) {
    let r = app_get(gw, s);
    assert_eq!(
        r.status,
        200,
        "session {} ({}) on {}: {}",
        s.sid,
        s.user,
        gw.proxy_addr,
        r.text()
    );
    assert_eq!(
        up.last().header("x-auth-subject").as_deref(),
        Some(s.user.as_str()),
        "subject of session {}",
        s.sid
    );
}

/// Polls every gateway of `gws` until each has answered `done`-true at least
/// once; every request that saw the old state must have started within 1 s
/// of `since`. Anything else than `done` or `still_old` fails at once.
#[track_caller]
fn wait_all_within_1s(
    gws: &[(&str, &Gateway)],
    since: Instant,
    what: &str,
    mut send: impl FnMut(&Gateway) -> Response,
    done: impl Fn(&Response) -> bool,
    still_old: impl Fn(&Response) -> bool,
) {
    let mut pending: Vec<(&str, &Gateway)> = gws.to_vec();
    while !pending.is_empty() {
        let mut next = Vec::new();
        for (name, gw) in pending {
            let sent = since.elapsed();
            let r = send(gw);
            if done(&r) {
                show(&format!("{what}: seen by {name} after {sent:?}"));
                continue;
            }
            assert!(
                still_old(&r),
                "{what}: unexpected answer from {name}: {} {}",
                r.status,
                r.text()
            );
            assert!(
                sent < ONE_SECOND,
                "{what}: {name} still answered {} {sent:?} after the change",
                r.status
            );
            next.push((name, gw));
        }
        pending = next;
        thread::sleep(Duration::from_millis(20));
    }
}

fn session_gone(r: &Response) -> bool {
    r.status == 401 && r.json() == json!({"error": "invalid_token", "reason": "session_not_found"})
}

// ---------------------------------------------------------------------------
// sessions

#[test]
fn sessions_on_every_master_validate_and_a_del_is_seen_within_1s_on_both() {
    let f = Fleet::start();
    let sessions = f.one_session_per_master("del");
    for s in &sessions {
        for (_, gw) in f.both() {
            assert_session_ok(gw, &f.up, s);
        }
    }
    // Cached on both: from here on only an invalidation pushed by the key's
    // master can make an instance notice the DEL.
    for s in &sessions {
        for (_, gw) in f.both() {
            f.warm(gw, s);
        }
    }
    for s in &sessions {
        let owner = f.owner(s).addr();
        // redis-cli -c talks to the first node and follows MOVED to the owner.
        assert_eq!(f.cluster.cli(&["DEL", &s.key]), "1", "DEL {}", s.key);
        let deleted = Instant::now();
        wait_all_within_1s(
            &f.both(),
            deleted,
            &format!("DEL of a session on master {owner}"),
            |gw| app_get(gw, s),
            session_gone,
            |r| r.status == 200,
        );
        for (name, gw) in f.both() {
            assert!(
                session_gone(&app_get(gw, s)),
                "{name} accepts a deleted session again"
            );
        }
    }
    // The other sessions were not disturbed: a fresh one on every master works.
    for s in &f.one_session_per_master("after") {
        for (_, gw) in f.both() {
            assert_session_ok(gw, &f.up, s);
        }
    }
}

#[test]
fn sessions_of_many_users_spread_over_every_master() {
    let f = Fleet::start();
    let users: Vec<Session> = (0..100)
        .map(|i| Session::new("spread", &format!("user-{i:03}")))
        .collect();
    for s in &users {
        f.put(s);
    }
    let gets_before: Vec<u64> = f
        .cluster
        .nodes
        .iter()
        .map(|n| n.command_calls("get"))
        .collect();
    for (i, s) in users.iter().enumerate() {
        let gw = if i % 2 == 0 { &f.a } else { &f.b };
        assert_session_ok(gw, &f.up, s);
    }
    let sizes = f.cluster.dbsizes();
    let gets: Vec<u64> = f
        .cluster
        .nodes
        .iter()
        .zip(&gets_before)
        .map(|(n, before)| n.command_calls("get") - before)
        .collect();
    let spread = sizes
        .iter()
        .zip(&gets)
        .map(|((addr, n), g)| format!("{addr}: {n} keys, {g} GETs"))
        .collect::<Vec<_>>()
        .join("; ");
    show(&format!(
        "sessions of {} users over {} masters: {spread}",
        users.len(),
        sizes.len()
    ));
    assert_eq!(
        sizes.iter().map(|(_, n)| n).sum::<i64>(),
        users.len() as i64,
        "only the sessions are stored: {spread}"
    );
    for ((addr, n), g) in sizes.iter().zip(&gets) {
        assert!(*n > 0, "master {addr} holds no session: {spread}");
        assert!(*g > 0, "no instance read a session from {addr}: {spread}");
    }
    // Each key is on the master that owns its slot (not merely somewhere).
    for s in users.iter().step_by(10) {
        assert_eq!(f.owner(s).cmd(&["EXISTS", &s.key]), "1", "{}", s.key);
    }
}

/// A warm session on the first master, and the master it will move to.
fn migration_setup(f: &Fleet) -> (Session, u16, &RedisServer) {
    let s = f.one_session_per_master("mig").remove(0);
    for (_, gw) in f.both() {
        f.warm(gw, &s);
    }
    let from = f.owner(&s).port;
    let to = f.cluster.nodes.iter().find(|n| n.port != from).unwrap();
    let slot = f.cluster.slot(&s.key);
    (s, slot, to)
}

#[test]
fn a_session_in_a_slot_being_migrated_validates_through_ask() {
    let f = Fleet::start();
    let (s, slot, to) = migration_setup(&f);
    // The key moved, the slot not yet: the old owner answers ASK for it, the
    // new one MOVED unless asked with ASKING. MIGRATE deleted the key on the
    // old owner, so both caches drop it and must read it again through ASK.
    let asking_before = to.command_calls("asking");
    f.cluster.begin_migration(slot, to);
    let direct = to.query(&["EXISTS", &s.key]);
    assert!(
        matches!(&direct, Resp::Error(e) if e.starts_with("MOVED")),
        "the importing node answers MOVED without ASKING: {direct:?}"
    );
    assert_eq!(
        f.cluster.cmd(&["EXISTS", &s.key]),
        "1",
        "EXISTS through ASK"
    );
    let migrated = Instant::now();
    let followed = poll_until(Duration::from_secs(2), || {
        for (_, gw) in f.both() {
            assert_session_ok(gw, &f.up, &s);
        }
        (to.command_calls("asking") >= asking_before + 3).then_some(())
    });
    assert!(
        followed.is_some(),
        "the instances never read the migrating session with ASKING on {} \
         ({} ASKING calls there besides the test's; {:?} since MIGRATE)",
        to.addr(),
        to.command_calls("asking") - asking_before - 1,
        migrated.elapsed()
    );
    // A DEL there (through ASK) is seen within 1 s: the new owner's tracking.
    assert_eq!(f.cluster.cmd(&["DEL", &s.key]), "1");
    let deleted = Instant::now();
    wait_all_within_1s(
        &f.both(),
        deleted,
        "DEL of a session in a migrating slot",
        |gw| app_get(gw, &s),
        session_gone,
        |r| r.status == 200,
    );
    f.cluster.end_migration(slot, to);
}

#[test]
fn a_session_whose_slot_moved_validates_through_moved_and_changes_are_seen_within_1s() {
    let f = Fleet::start();
    let (s, slot, to) = migration_setup(&f);
    // The whole slot moves: every instance's slot map is stale (MOVED), and
    // MIGRATE deleted the key on the old owner, so both caches drop it.
    f.cluster.begin_migration(slot, to);
    f.cluster.end_migration(slot, to);
    assert_eq!(f.cluster.owner(&s.key).port, to.port);
    let gets_before = to.command_calls("get");
    for (_, gw) in f.both() {
        assert_session_ok(gw, &f.up, &s);
    }
    assert!(
        to.command_calls("get") > gets_before,
        "the session was not read from its new master {}",
        to.addr()
    );
    // An overwrite by the application on the new master (another user now)
    // reaches both caches within 1 s.
    for (_, gw) in f.both() {
        f.warm(gw, &s);
    }
    let changed = Session {
        user: format!("{}-changed", s.user),
        ..s.clone()
    };
    f.put(&changed);
    let written = Instant::now();
    let up = &f.up;
    wait_all_within_1s(
        &f.both(),
        written,
        "an overwrite of a moved session",
        |gw| app_get(gw, &s),
        |r| {
            r.status == 200
                && up.last().header("x-auth-subject").as_deref() == Some(changed.user.as_str())
        },
        |r| r.status == 200,
    );
    for (_, gw) in f.both() {
        f.warm(gw, &changed);
    }
    assert_eq!(f.cluster.cli(&["DEL", &s.key]), "1");
    let deleted = Instant::now();
    wait_all_within_1s(
        &f.both(),
        deleted,
        "DEL of a moved session",
        |gw| app_get(gw, &s),
        session_gone,
        |r| r.status == 200,
    );
}

// ---------------------------------------------------------------------------
// revocation

fn tok(sub: &str, jti: &str) -> String {
    hs_token(&hs_claims(sub, json!({ "jti": jti })))
}

fn revoke(gw: &Gateway, body: &Value) -> Response {
    gw.admin_post("/admin/revoke", ADMIN_TOKEN, &body.to_string())
}

#[track_caller]
fn revoke_ok(gw: &Gateway, body: &Value) {
    let r = revoke(gw, body);
    assert_eq!(
        r.status,
        200,
        "revoke {body} on {}: {}",
        gw.admin_addr,
        r.text()
    );
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
        "{what} on {}: expected 401 revoked, got {} {}",
        gw.proxy_addr,
        r.status,
        r.text()
    );
}

#[test]
fn a_revocation_on_one_instance_is_enforced_by_the_other_within_1s() {
    let f = Fleet::start();
    // The revocation keys and the channel share one slot (one atomic step).
    let slot = f.cluster.slot(REVOKED_JTIS);
    assert_eq!(f.cluster.slot(REVOKED_SUBS), slot);
    assert_eq!(f.cluster.slot(CHANNEL), slot);
    let revocation_master = f.cluster.slot_owner(slot).port;

    let t1 = tok("alice", "j1");
    let t2 = tok("bob", "j2");
    let t3 = tok("carol", "j3");
    for (name, gw) in f.both() {
        for t in [&t1, &t2, &t3] {
            assert_passes(gw, t, &format!("before any revocation, on {name}"));
        }
    }

    // jti, on A: A at once, B within 1 s.
    let exp = token_part(&t1, 1)["exp"].as_i64().unwrap();
    revoke_ok(&f.a, &json!({"jti": "j1", "exp": exp}));
    let done = Instant::now();
    assert_revoked(&f.a, &t1, "jti j1 on the instance that revoked it");
    wait_all_within_1s(
        &[("B", &f.b)],
        done,
        "jti j1 revoked on A",
        |gw| gw.get_bearer("/api/x", &t1),
        revoked,
        |r| r.status == 200,
    );
    assert_eq!(
        f.cluster.cmd(&["ZSCORE", REVOKED_JTIS, "j1"]),
        exp.to_string()
    );

    // subject, on B: A within 1 s.
    revoke_ok(&f.b, &json!({"sub": "bob"}));
    let done = Instant::now();
    assert_revoked(&f.b, &t2, "subject bob on the instance that revoked it");
    wait_all_within_1s(
        &[("A", &f.a)],
        done,
        "subject bob revoked on B",
        |gw| gw.get_bearer("/api/x", &t2),
        revoked,
        |r| r.status == 200,
    );
    assert_eq!(f.cluster.cmd(&["HLEN", REVOKED_SUBS]), "1");

    // session, on A, stored on a master other than the revocation keys' one:
    // deleted there, announced on the channel; B within 1 s.
    let s = f
        .one_session_per_master("rev")
        .into_iter()
        .find(|s| f.owner(s).port != revocation_master)
        .unwrap();
    for (_, gw) in f.both() {
        f.warm(gw, &s);
    }
    revoke_ok(&f.a, &json!({"session": s.sid}));
    let done = Instant::now();
    assert_eq!(
        f.cluster.cmd(&["EXISTS", &s.key]),
        "0",
        "session key deleted"
    );
    wait_all_within_1s(
        &f.both(),
        done,
        "session revoked on A",
        |gw| app_get(gw, &s),
        session_gone,
        |r| r.status == 200,
    );

    // Nothing else was caught, on either instance.
    for (name, gw) in f.both() {
        assert_passes(gw, &t3, &format!("carol's token on {name}"));
        assert_passes(
            gw,
            &tok("alice", "j1b"),
            &format!("alice's other token on {name}"),
        );
    }

    // An instance started now loads everything from the cluster.
    let c = Gateway::start(&f.toml, &env());
    wait_ready(&c);
    assert_revoked(&c, &t1, "jti j1 on an instance started later");
    assert_revoked(&c, &t2, "subject bob on an instance started later");
    assert_passes(&c, &t3, "carol's token on an instance started later");
    assert!(session_gone(&app_get(&c, &s)), "revoked session on C");
}

/// Revokes `jti` on `on` (200) and waits until `other` rejects its token within 1 s.
#[track_caller]
fn revoke_jti_and_propagate(f: &Fleet, on: &str, jti: &str, what: &str) {
    let (gw, other) = match on {
        "A" => (&f.a, ("B", &f.b)),
        _ => (&f.b, ("A", &f.a)),
    };
    let t = tok("dave", jti);
    assert_passes(other.1, &t, &format!("{jti} before its revocation"));
    revoke_ok(gw, &json!({"jti": jti, "exp": token_part(&t, 1)["exp"]}));
    let done = Instant::now();
    wait_all_within_1s(
        &[other],
        done,
        &format!("{what}: jti {jti} revoked on {on}"),
        |gw| gw.get_bearer("/api/x", &t),
        revoked,
        |r| r.status == 200,
    );
    assert!(
        !f.cluster.cmd(&["ZSCORE", REVOKED_JTIS, jti]).is_empty(),
        "{jti} stored"
    );
}

/// The master the revocation slot moves to, and the slot.
fn revocation_migration(f: &Fleet) -> (u16, &RedisServer) {
    let slot = f.cluster.slot(REVOKED_JTIS);
    let from = f.cluster.slot_owner(slot).port;
    (
        slot,
        f.cluster.nodes.iter().find(|n| n.port != from).unwrap(),
    )
}

#[test]
fn revocations_keep_working_while_their_slot_is_being_migrated() {
    let f = Fleet::start();
    revoke_jti_and_propagate(&f, "A", "m1", "before the migration");
    let (slot, to) = revocation_migration(&f);
    // The keys moved, the slot not yet: the old owner answers ASK.
    f.cluster.begin_migration(slot, to);
    revoke_jti_and_propagate(&f, "B", "m2", "while the slot migrates (ASK)");
    // An instance started now can load the mirror through ASK.
    let c = Gateway::start(&f.toml, &env());
    wait_ready(&c);
    for j in ["m1", "m2"] {
        assert_revoked(
            &c,
            &tok("dave", j),
            &format!("{j} on an instance started mid-migration"),
        );
    }
    f.cluster.end_migration(slot, to);
}

#[test]
fn revocations_keep_working_after_their_slot_moved_to_another_master() {
    let f = Fleet::start();
    revoke_jti_and_propagate(&f, "A", "m1", "before the move");
    let (slot, to) = revocation_migration(&f);
    f.cluster.begin_migration(slot, to);
    f.cluster.end_migration(slot, to);
    assert_eq!(f.cluster.slot_owner(slot).port, to.port);
    // Every running instance's slot map is stale now (MOVED).
    revoke_jti_and_propagate(&f, "A", "m2", "after the move (MOVED)");
    revoke_jti_and_propagate(&f, "B", "m3", "after the move (MOVED)");
    revoke_ok(&f.a, &json!({"sub": "erin"}));
    assert_eq!(f.cluster.cmd(&["HLEN", REVOKED_SUBS]), "1");
    assert_eq!(
        to.cmd(&["ZCARD", REVOKED_JTIS]),
        "3",
        "all on the new owner"
    );
}

// ---------------------------------------------------------------------------
// rate limits

#[test]
fn a_shared_rate_limit_of_10_lets_exactly_10_of_50_through_across_both() {
    let f = Fleet::start();
    let started = Instant::now();
    let statuses: Vec<u16> = (0..50)
        .map(|i| {
            let gw = if i % 2 == 0 { &f.a } else { &f.b };
            let r = gw.get("/login", &[]);
            if r.status == 429 {
                assert_error(&r, 429, "rate_limited", "rate_limited");
                assert!(r.header("Retry-After").is_some(), "429 without Retry-After");
            }
            r.status
        })
        .collect();
    let elapsed = started.elapsed();
    let passed = statuses.iter().filter(|s| **s == 200).count();
    // One more passes every 6 s: this holds as long as the 50 requests take less.
    assert_eq!(
        passed, 10,
        "statuses {statuses:?} (50 requests in {elapsed:?}; one would refill after 6 s)"
    );
    assert!(
        statuses[..10].iter().all(|s| *s == 200) && statuses[10..].iter().all(|s| *s == 429),
        "statuses {statuses:?}"
    );
    assert_eq!(f.up.hits(), 10);
    // The budget is one key, on one master.
    let holders = f.rate_limit_keys();
    assert_eq!(
        holders.iter().filter(|(_, n)| *n > 0).count(),
        1,
        "rate-limit keys per master: {holders:?}"
    );
    assert_eq!(
        holders.iter().map(|(_, n)| n).sum::<usize>(),
        1,
        "{holders:?}"
    );
}

fn signin(gw: &Gateway, path: &str, user: &str) -> Response {
    let body = json!({ "username": user, "password": "x" }).to_string();
    let r = request(
        &gw.proxy_addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    if r.status == 429 {
        assert_error(&r, 429, "rate_limited", "rate_limited");
    }
    r
}

/// A login route limited by user name: each user's budget is its own key,
/// hash-tagged by route and user, so 30 users spread over the masters (not
/// all on the one that owns the route), and one user's budget of 3 is still
/// exact over 10 attempts alternating between the two instances.
#[test]
fn many_users_rate_limits_spread_over_the_masters_and_stay_exact() {
    let f = Fleet::start();
    for i in 0..30 {
        let r = signin(
            if i % 2 == 0 { &f.a } else { &f.b },
            "/signin",
            &format!("user-{i}"),
        );
        assert_eq!(r.status, 200, "user-{i}: {}", r.text());
    }
    let holders = f.rate_limit_keys();
    println!("30 users' rate-limit keys per master: {holders:?}");
    assert_eq!(
        holders.iter().map(|(_, n)| n).sum::<usize>(),
        30,
        "{holders:?}"
    );
    assert!(
        holders.iter().filter(|(_, n)| *n > 0).count() >= 2,
        "every user's budget on one master: {holders:?}"
    );
    let statuses: Vec<u16> = (0..10)
        .map(|i| signin(if i % 2 == 0 { &f.a } else { &f.b }, "/signin", "Victim").status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429, 429, 429],
        "one user's budget of 3 across both instances"
    );
    // Case variants share the budget; another user still has its own.
    assert_eq!(signin(&f.b, "/signin", "victim").status, 429);
    assert_eq!(signin(&f.a, "/signin", "someone-else").status, 200);
}

/// A route limited by user name (2) and by IP (5): the two budgets live in
/// different slots, checked at once, and a request one of them refuses
/// costs the other nothing. Refused by its user's budget, a request gives
/// its IP budget back, so the IP's 5 go to 5 passing requests; refused by
/// the IP budget, it gives its user's back (that user holds no key).
#[test]
fn a_request_refused_by_one_slot_costs_the_other_slot_nothing() {
    let f = Fleet::start();
    let mut statuses = Vec::new();
    for (i, user) in ["u1", "u1", "u1", "u1", "u2", "u2", "u3", "u3", "u4"]
        .iter()
        .enumerate()
    {
        let gw = if i % 2 == 0 { &f.a } else { &f.b };
        statuses.push((*user, signin(gw, "/signin-ip", user).status));
    }
    assert_eq!(
        statuses,
        [
            ("u1", 200),
            ("u1", 200),
            ("u1", 429),
            ("u1", 429),
            ("u2", 200),
            ("u2", 200),
            ("u3", 200),
            ("u3", 429),
            ("u4", 429),
        ],
        "the IP budget of 5 went to the 5 passing requests"
    );
    assert_eq!(f.up.hits(), 5);
    // The IP key and the keys of u1, u2, u3; u4's refunded key is gone (the
    // refund is made before the answer).
    let holders = f.rate_limit_keys();
    assert_eq!(
        holders.iter().map(|(_, n)| n).sum::<usize>(),
        4,
        "{holders:?}"
    );
}

/// The revocation keys are lost on the cluster (deleted, as a failover to a
/// replica that missed writes or a flush would lose them): the instances
/// keep enforcing them and their next re-read writes them back, so an
/// instance started afterwards refuses the tokens too.
#[test]
fn revocations_lost_from_the_cluster_are_written_back() {
    let f = Fleet::start();
    let t1 = tok("alice", "wb-c1");
    let exp = token_part(&t1, 1)["exp"].as_i64().unwrap();
    revoke_ok(&f.a, &json!({"jti": "wb-c1", "exp": exp}));
    let t2 = tok("bob", "wb-c2");
    revoke_ok(&f.b, &json!({"sub": "bob"}));
    for (name, gw) in f.both() {
        let start = Instant::now();
        while !revoked(&gw.get_bearer("/api/x", &t1)) || !revoked(&gw.get_bearer("/api/x", &t2)) {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "revocations on {name}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(f.cluster.cli(&["DEL", REVOKED_JTIS]), "1");
    assert_eq!(f.cluster.cli(&["DEL", REVOKED_SUBS]), "1");
    for (_, gw) in f.both() {
        assert_revoked(gw, &t1, "jti after the loss, from the mirror");
        assert_revoked(gw, &t2, "bob after the loss, from the mirror");
    }
    // one re-read (30 s) later the cluster holds both again
    let start = Instant::now();
    while f.cluster.cli(&["ZSCORE", REVOKED_JTIS, "wb-c1"]).is_empty()
        || f.cluster.cli(&["HLEN", REVOKED_SUBS]) != "1"
    {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "not written back to the cluster"
        );
        thread::sleep(Duration::from_millis(250));
    }
    let restored: f64 = f
        .both()
        .iter()
        .filter_map(|(_, gw)| {
            metric(
                &gw.metrics(),
                "authgate_revocations_restored_total",
                &[("kind", "jti")],
            )
        })
        .sum();
    assert!(restored >= 1.0, "restored jtis counted: {restored}");
    let c = Gateway::start(&f.toml, &env());
    wait_ready(&c);
    assert_revoked(&c, &t1, "jti on an instance started after the write-back");
    assert_revoked(&c, &t2, "bob on an instance started after the write-back");
}

/// A rate-limited request through the cluster store costs one round trip
/// on loopback: the median of the allowed ones (forwarded) and of the
/// refused ones (429) stays far under the 40 ms of a Nagle / delayed-ACK
/// stall, for a route limited by IP (`GET /login`), one limited by a JSON
/// field (`POST /signin`, the request of the report) and one limited by
/// both (two slots). Measured on both instances after one warm-up request
/// each.
#[test]
fn a_rate_limited_request_through_the_cluster_does_not_stall() {
    let f = Fleet::start();
    type Send = fn(&Gateway, usize) -> Response;
    let routes: [(&str, Send); 3] = [
        ("GET /login", |gw, _| gw.get("/login", &[])),
        ("POST /signin", |gw, i| {
            signin(gw, "/signin", &format!("s{}", i / 4))
        }),
        ("POST /signin-ip", |gw, i| {
            signin(gw, "/signin-ip", &format!("t{}", i / 3))
        }),
    ];
    for (name, send) in routes {
        for (_, gw) in f.both() {
            send(gw, 1000);
        }
        let mut by_status: std::collections::BTreeMap<u16, Latencies> = Default::default();
        for i in 0..30 {
            let gw = if i % 3 == 2 { &f.b } else { &f.a };
            let mut took = Latencies::default();
            let r = took.time(|| send(gw, i));
            assert!(matches!(r.status, 200 | 429), "{name}: {}", r.status);
            by_status.entry(r.status).or_default().ms.extend(took.ms);
        }
        assert!(
            by_status.contains_key(&200) && by_status.contains_key(&429),
            "{name}: {by_status:?}"
        );
        for (status, lat) in &mut by_status {
            lat.assert_no_stall(&format!("{name} {status}"));
        }
    }
}

/// The other paths that reach the cluster: a session read on a cache miss
/// (30 sessions, each read once, spread over the masters) and a revocation
/// (10 `POST /admin/revoke`, one script on the `{revoked}` master and a
/// `PUBLISH`), alternating between the instances.
#[test]
fn session_reads_and_revocations_through_the_cluster_do_not_stall() {
    let f = Fleet::start();
    let sessions: Vec<Session> = (0..30)
        .map(|i| Session::new("nostall", &format!("reader-{i}")))
        .collect();
    for s in &sessions {
        f.put(s);
    }
    let mut reads = Latencies::default();
    for (i, s) in sessions.iter().enumerate() {
        let gw = if i % 2 == 0 { &f.a } else { &f.b };
        let r = reads.time(|| gw.get("/app/x", &[("Cookie", &s.cookie)]));
        assert_eq!(r.status, 200, "{}: {}", s.user, r.text());
    }
    reads.assert_no_stall("session read on a cache miss");
    let mut revokes = Latencies::default();
    for i in 0..10 {
        let gw = if i % 2 == 0 { &f.a } else { &f.b };
        let t = tok("mallory", &format!("nostall-{i}"));
        let exp = token_part(&t, 1)["exp"].as_i64().unwrap();
        revokes.time(|| revoke_ok(gw, &json!({"jti": format!("nostall-{i}"), "exp": exp})));
    }
    revokes.assert_no_stall("POST /admin/revoke");
}
