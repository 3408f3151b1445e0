//! Redis chaos under load (issue 8): client threads drive a JWT route, a
//! session route and a rate-limited route (`on_error = "deny"`) on a gateway
//! backed by a real redis-server, while the test kills Redis, restarts it
//! empty, pauses it (SIGSTOP) for longer than the gateway's 500 ms Redis
//! timeout, resumes it and flushes it.
//!
//! Asserted throughout: the gateway never crashes (`/healthz` 200), no request
//! takes longer than a bounded deadline (5 s), every answer follows
//! `on_error` (JWT routes unaffected; session routes 503 while Redis is down
//! or paused and never 401 then; rate-limited routes 503; never another 5xx,
//! never a 429), sessions that Redis lost are not served from a cache, and
//! the revocations the admin API acknowledged before the faults are still
//! enforced after every one of them (FLUSHALL and an empty restart included:
//! the gateway's local mirror keeps them). Afterwards everything recovers.
//!
//! Also: Redis `AUTH` with `requirepass` and with an ACL user (`redis://:pw@`,
//! `redis://user:pw@`), and a wrong password failing closed.
//!
//! About 40 s in all.

mod common;

use common::ops::{ADMIN_ENV, ADMIN_TOKEN};
use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// No request may take longer than this, whatever Redis does.
const HANG: Duration = Duration::from_secs(5);
/// From this far into a phase, the phase's "late" rules apply (the gateway
/// has had time to notice the change).
const SETTLE: Duration = Duration::from_millis(2500);

fn config(redis_url: &str) -> String {
    GatewayConfig::base()
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .store_redis(redis_url, "deny")
        .sessions(
            "cookie = \"sid\"\nsecrets_env = [\"SESSION_SECRET_CURRENT\"]\n\
             identity = { subject = \"userId\" }",
        )
        .route("name = \"app\"\npath_prefix = \"/app/\"\nupstream = \"app\"\nauth = \"session\"")
        .route(
            r#"name = "login"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 1000000
window = "1m""#,
        )
        .toml()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Steady,
    Killed,
    RestartedEmpty,
    Restarted,
    Paused,
    Resumed,
    Flushed,
    Restored,
    Recovered,
}

const PHASES: [Phase; 9] = [
    Phase::Steady,
    Phase::Killed,
    Phase::RestartedEmpty,
    Phase::Restarted,
    Phase::Paused,
    Phase::Resumed,
    Phase::Flushed,
    Phase::Restored,
    Phase::Recovered,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Jwt,
    RevokedJti,
    RevokedSub,
    Session,
    RateLimited,
    Health,
}

/// The statuses a request of `kind` may get in `phase`; `late`: started at
/// least [`SETTLE`] into the phase.
fn allowed(kind: Kind, phase: Phase, late: bool) -> &'static [u16] {
    use Phase::*;
    match kind {
        Kind::Health => &[200],
        // verified locally; revocation is checked against the local mirror
        Kind::Jwt => &[200],
        Kind::RevokedJti | Kind::RevokedSub => &[401],
        Kind::Session => match phase {
            Steady | Restored | Recovered => &[200],
            // a cached session may still be served for a moment; never a 401
            Killed | Paused | Resumed if !late => &[200, 503],
            Killed | Paused => &[503],
            Resumed => &[200, 503],
            // Redis came back empty: the session is gone and must not be
            // served from a cache once the gateway has reconnected
            RestartedEmpty if !late => &[200, 401, 503],
            RestartedEmpty => &[401, 503],
            // stored again after the restart
            Restarted => &[200, 503],
            // FLUSHALL: gone, within a second (like a DEL)
            Flushed if !late => &[200, 401],
            Flushed => &[401],
        },
        Kind::RateLimited => match phase {
            Steady | Flushed | Restored | Recovered => &[200],
            Killed | Paused if !late => &[200, 503],
            Killed | Paused => &[503],
            RestartedEmpty | Restarted | Resumed => &[200, 503],
        },
    }
}

#[derive(Debug, Clone)]
struct Record {
    kind: Kind,
    phase: Phase,
    /// No fault action happened while it ran.
    same_phase: bool,
    late: bool,
    status: Option<u16>,
    error: Option<String>,
    elapsed: Duration,
}

/// The current phase. Its generation changes just before each fault action
/// and again once the new phase is set, so a request that overlapped an
/// action (e.g. one waiting on a paused Redis that the resume answered) is
/// not judged by either phase's rules.
struct Clock {
    phase: AtomicUsize,
    generation: AtomicUsize,
    since: Mutex<Instant>,
}

impl Clock {
    /// Call before a fault action.
    fn begin(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
    /// Call after it: the new phase starts now.
    fn set(&self, p: Phase) {
        let mut since = self.since.lock().unwrap();
        *since = Instant::now();
        self.phase.store(
            PHASES.iter().position(|x| *x == p).unwrap(),
            Ordering::SeqCst,
        );
        self.generation.fetch_add(1, Ordering::SeqCst);
        eprintln!("chaos: phase {p:?}");
    }
    fn now(&self) -> (Phase, usize, Duration) {
        let since = self.since.lock().unwrap();
        (
            PHASES[self.phase.load(Ordering::SeqCst)],
            self.generation.load(Ordering::SeqCst),
            since.elapsed(),
        )
    }
}

#[test]
fn redis_chaos_under_load() {
    let mut redis = RedisServer::start();
    let env = [HS_ENV, SESSION_ENV[0], ADMIN_ENV];
    let (gw, _up) = Gateway::with_upstream(&config(&redis.url()), &env);
    let sid = new_sid("chaos");
    let put_session = |r: &RedisServer| {
        let v = session_value(json!({"userId": "sam"}), 86_400_000, 86_400_000);
        assert_eq!(
            r.cmd(&["SET", &format!("sess:{sid}"), &v, "PX", "86400000"]),
            "OK"
        );
    };
    put_session(&redis);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));

    // Revocations acknowledged (200) before any fault.
    let revoked_jti = hs_token(&hs_claims("rita", json!({"jti": "chaos-revoked-jti"})));
    let exp = now() + 3600;
    let r = gw.admin_post(
        "/admin/revoke",
        ADMIN_TOKEN,
        &json!({"jti": "chaos-revoked-jti", "exp": exp}).to_string(),
    );
    assert_eq!(r.status, 200, "revoke jti: {}", r.text());
    let revoked_sub = hs_token(&hs_claims("mallory", json!({"iat": now() - 5})));
    let r = gw.admin_post(
        "/admin/revoke",
        ADMIN_TOKEN,
        &json!({"sub": "mallory"}).to_string(),
    );
    assert_eq!(r.status, 200, "revoke sub: {}", r.text());
    let good = hs_token(&hs_claims("gina", json!({"exp": now() + 3600})));
    // everything answers as it should before the faults
    assert_eq!(gw.get_bearer("/api/x", &good).status, 200);
    assert_eq!(gw.get_bearer("/api/x", &revoked_jti).status, 401);
    assert_eq!(gw.get_bearer("/api/x", &revoked_sub).status, 401);
    assert_eq!(gw.get("/app/x", &[("Cookie", &cookie)]).status, 200);
    assert_eq!(gw.get("/login", &[]).status, 200);

    let clock = Arc::new(Clock {
        phase: AtomicUsize::new(0),
        generation: AtomicUsize::new(0),
        since: Mutex::new(Instant::now()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let records = Arc::new(Mutex::new(Vec::<Record>::new()));

    let mut workers = Vec::new();
    let jobs: Vec<(Vec<Kind>, String)> = vec![
        (vec![Kind::Jwt, Kind::RevokedJti], gw.proxy_addr.clone()),
        (vec![Kind::Jwt, Kind::RevokedSub], gw.proxy_addr.clone()),
        (vec![Kind::Session], gw.proxy_addr.clone()),
        (vec![Kind::RateLimited], gw.proxy_addr.clone()),
        (vec![Kind::Health], gw.admin_addr.clone()),
    ];
    for (kinds, addr) in jobs {
        let (clock, stop, records) = (clock.clone(), stop.clone(), records.clone());
        let (good, revoked_jti, revoked_sub, cookie) = (
            good.clone(),
            revoked_jti.clone(),
            revoked_sub.clone(),
            cookie.clone(),
        );
        workers.push(thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let kind = kinds[i % kinds.len()];
                i += 1;
                let bearer = |t: &str| format!("Bearer {t}");
                let (path, header): (&str, Option<(&str, String)>) = match kind {
                    Kind::Jwt => ("/api/chaos", Some(("Authorization", bearer(&good)))),
                    Kind::RevokedJti => {
                        ("/api/chaos", Some(("Authorization", bearer(&revoked_jti))))
                    }
                    Kind::RevokedSub => {
                        ("/api/chaos", Some(("Authorization", bearer(&revoked_sub))))
                    }
                    Kind::Session => ("/app/chaos", Some(("Cookie", cookie.clone()))),
                    Kind::RateLimited => ("/login", None),
                    Kind::Health => ("/healthz", None),
                };
                let headers: Vec<(&str, &str)> =
                    header.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let (phase, generation, into) = clock.now();
                let t = Instant::now();
                let res = try_request(&addr, "GET", path, &headers, b"");
                let elapsed = t.elapsed();
                let (_, end_generation, _) = clock.now();
                let (status, error) = match res {
                    Ok(r) => (Some(r.status), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                records.lock().unwrap().push(Record {
                    kind,
                    phase,
                    same_phase: end_generation == generation,
                    late: into >= SETTLE,
                    status,
                    error,
                    elapsed,
                });
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }

    // The faults.
    let hold = |d: u64| thread::sleep(Duration::from_millis(d));
    hold(2500);
    clock.begin();
    redis.kill();
    clock.set(Phase::Killed);
    hold(4500);
    clock.begin();
    redis.restart(); // empty: no persistence
    clock.set(Phase::RestartedEmpty);
    hold(4000);
    clock.begin();
    put_session(&redis);
    clock.set(Phase::Restarted);
    hold(3000);
    clock.begin();
    redis.pause();
    clock.set(Phase::Paused);
    hold(5000); // ten times the gateway's Redis timeout
    clock.begin();
    redis.resume();
    clock.set(Phase::Resumed);
    hold(3000);
    clock.begin();
    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");
    clock.set(Phase::Flushed);
    hold(4000);
    clock.begin();
    put_session(&redis);
    clock.set(Phase::Restored);
    let restored_at = Instant::now();
    // Recovery: everything answers as in the steady state again.
    let recovered = poll_until(Duration::from_secs(15), || {
        let ok = gw.get_bearer("/api/x", &good).status == 200
            && gw.get("/app/x", &[("Cookie", &cookie)]).status == 200
            && gw.get("/login", &[]).status == 200;
        ok.then_some(())
    });
    // The recovery poll can succeed at once; the phase still lasts long
    // enough for every kind of request to run in it (the check below).
    if let Some(rest) = Duration::from_millis(1500).checked_sub(restored_at.elapsed()) {
        thread::sleep(rest);
    }
    clock.set(Phase::Recovered);
    hold(3000);
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        recovered.is_some(),
        "the gateway did not recover within 15 s"
    );

    // Judge.
    let records = records.lock().unwrap().clone();
    let mut failures = Vec::new();
    let mut seen: BTreeMap<(Phase, Kind), BTreeMap<String, usize>> = BTreeMap::new();
    for r in &records {
        let label = match (r.status, &r.error) {
            (Some(s), _) => s.to_string(),
            (None, Some(e)) => format!("error: {e}"),
            (None, None) => unreachable!(),
        };
        *seen
            .entry((r.phase, r.kind))
            .or_default()
            .entry(label.clone())
            .or_default() += 1;
        if r.elapsed > HANG {
            failures.push(format!(
                "{:?} in {:?} took {:?}",
                r.kind, r.phase, r.elapsed
            ));
        }
        match r.status {
            None => failures.push(format!(
                "{:?} in {:?}: no answer ({label})",
                r.kind, r.phase
            )),
            Some(s) => {
                if r.same_phase && !allowed(r.kind, r.phase, r.late).contains(&s) {
                    failures.push(format!(
                        "{:?} in {:?} ({}): {s}, allowed {:?}",
                        r.kind,
                        r.phase,
                        if r.late { "late" } else { "early" },
                        allowed(r.kind, r.phase, r.late)
                    ));
                }
            }
        }
    }
    let mut summary = String::new();
    for ((phase, kind), counts) in &seen {
        summary.push_str(&format!("  {phase:?} {kind:?}: {counts:?}\n"));
    }
    eprintln!("chaos: {} requests\n{summary}", records.len());
    // The test really saw the faults: the stateful routes failed closed while
    // Redis was gone, and every kind of request ran in every phase.
    for p in PHASES {
        for k in [Kind::Jwt, Kind::Session, Kind::RateLimited, Kind::Health] {
            assert!(
                records.iter().any(|r| r.phase == p && r.kind == k),
                "no {k:?} request in {p:?}:\n{summary}"
            );
        }
    }
    for (p, k, s) in [
        (Phase::Killed, Kind::RateLimited, 503),
        (Phase::Paused, Kind::RateLimited, 503),
        (Phase::Killed, Kind::Session, 503),
        (Phase::Flushed, Kind::Session, 401),
        (Phase::Recovered, Kind::Session, 200),
    ] {
        assert!(
            records
                .iter()
                .any(|r| r.phase == p && r.kind == k && r.status == Some(s)),
            "never saw {s} for {k:?} in {p:?}:\n{summary}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} bad answers (first 20):\n{}\nall answers:\n{summary}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // After it all: revocations still enforced, the gateway healthy and ready.
    assert_eq!(gw.get_bearer("/api/x", &revoked_jti).status, 401);
    assert_eq!(gw.get_bearer("/api/x", &revoked_sub).status, 401);
    assert_eq!(gw.get_bearer("/api/x", &good).status, 200);
    assert_eq!(gw.admin_get("/healthz").status, 200);
    let ready = poll_until(Duration::from_secs(5), || {
        (gw.admin_get("/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz not 200 after recovery");
}

// ---------------------------------------------------------------------------
// Redis AUTH

const REQUIREPASS: &str = "chaos-requirepass-0123456789";
const ACL_USER: &str = "gateway";
const ACL_PASS: &str = "chaos-acl-pass-0123456789";

/// A redis-server with `requirepass` and an ACL user, killed on drop.
fn auth_redis() -> RedisServer {
    Redis::new("redis-auth")
        .requirepass(REQUIREPASS)
        // an ACL user with every command and key, as a deployment would
        // give the gateway (narrower ACLs are the operator's choice)
        .acl_user(&[ACL_USER, "on", &format!(">{ACL_PASS}"), "~*", "&*", "+@all"])
        .start()
}

/// Several commands over one connection to `redis`; the replies as text
/// (errors as `-ERR ...`).
fn cmds(redis: &RedisServer, cmds: &[&[&str]]) -> std::io::Result<Vec<String>> {
    Ok(redis_pipeline(&redis.addr(), cmds)?
        .into_iter()
        .map(|r| match r {
            Resp::Error(e) => format!("-{e}"),
            r => r.text(),
        })
        .collect())
}

/// `redis://:password@` (requirepass) and `redis://user:password@` (ACL)
/// both work for sessions, rate limits, revocations and `/readyz`; a wrong
/// password fails closed (503), never open.
#[test]
fn redis_auth_with_requirepass_and_an_acl_user() {
    let redis = auth_redis();
    let sid = new_sid("auth");
    let v = session_value(json!({"userId": "ava"}), 86_400_000, 86_400_000);
    let key = format!("sess:{sid}");
    let set = cmds(
        &redis,
        &[&["AUTH", REQUIREPASS], &["SET", &key, &v, "PX", "86400000"]],
    )
    .unwrap();
    assert_eq!(set, vec!["OK", "OK"]);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let env = [HS_ENV, SESSION_ENV[0], ADMIN_ENV];
    for url in [
        format!("redis://:{REQUIREPASS}@{}/0", redis.addr()),
        format!("redis://{ACL_USER}:{ACL_PASS}@{}/0", redis.addr()),
    ] {
        let (gw, _up) = Gateway::with_upstream(&config(&url), &env);
        let r = gw.get("/app/x", &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{url}: session: {}", r.text());
        assert_eq!(gw.get("/login", &[]).status, 200, "{url}: rate limit");
        let r = gw.admin_post(
            "/admin/revoke",
            ADMIN_TOKEN,
            &json!({"jti": format!("auth-{}", url.len()), "exp": now() + 60}).to_string(),
        );
        assert_eq!(r.status, 200, "{url}: revoke: {}", r.text());
        assert_eq!(gw.admin_get("/readyz").status, 200, "{url}: readyz");
        let logs = gw.logs() + &gw.stderr();
        assert!(
            !logs.contains(REQUIREPASS) && !logs.contains(ACL_PASS),
            "the Redis password is in the logs"
        );
    }
    // A wrong password: fail closed.
    let url = format!("redis://{ACL_USER}:wrong-password@{}/0", redis.addr());
    let cfg = config(&url).replace("{upstream}", &dead_addr());
    let gw = Gateway::start(&cfg, &env);
    let r = gw.get("/app/x", &[("Cookie", &cookie)]);
    assert_eq!(
        r.status,
        503,
        "wrong Redis password, session route: {}",
        r.text()
    );
    assert_eq!(
        gw.get("/login", &[]).status,
        503,
        "wrong Redis password, rate limit"
    );
    assert_eq!(gw.admin_get("/readyz").status, 503);
    assert!(
        !gw.logs().contains("wrong-password"),
        "the Redis password is in the logs"
    );
}
