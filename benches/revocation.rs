//! Revocation benchmark, in one run (`cargo bench --bench revocation`):
//!
//! 1. **Propagation.** Two gateways (A and B) share one `redis-server`. Many
//!    times over: `POST /admin/revoke` a fresh `jti` on A (one keep-alive admin
//!    connection), then, from the moment that call returns, send the revoked
//!    token to B as fast as possible (one keep-alive connection) until B
//!    answers 401. Prints p50 / p99 / max of that time (target: p99 < 50 ms
//!    on loopback).
//! 2. **Throughput.** A JWT route on an instance whose mirror holds 0 revoked
//!    `jti`s against the same on an instance that loaded 100,000 at start
//!    (written straight into the `authgate:{revoked}:jti` ZSET, then the
//!    instance started; the `authgate_revocation_mirror_entries{kind="jti"}`
//!    gauge is checked). The two instances use different Redis databases of
//!    the same server, so the empty one never loads the 100,000 on a periodic
//!    re-read; phases alternate (0, 100k, 0, 100k, ...) to spread machine
//!    noise over both. N client threads on keep-alive connections, each
//!    cycling through a pool of distinct valid tokens, for a fixed time.
//!    Prints req/s, p50 / p99 and the ratio (target: >= 0.97), and the RSS of
//!    both instances (`VmRSS`) with the derived bytes per revoked `jti`.
//! 3. **Memory without the bulk load.** The instance that had none then
//!    revokes the same 100,000 `jti`s one by one through its admin API; its
//!    RSS before and after gives the bytes per `jti` of the mirror itself.
//!
//! Everything runs on loopback: its own `redis-server` on a free port, a
//! minimal keep-alive upstream (std threads, a fixed 2-byte 200), and the
//! `authgate` binary cargo built for this bench (`CARGO_BIN_EXE_authgate`, i.e.
//! `target/release/authgate`), request logs to /dev/null.
//!
//! Nothing is asserted about speed: machines are noisy. Tunables (env):
//! `AUTHGATE_BENCH_CLIENTS` (client threads, default 8), `AUTHGATE_BENCH_SECS`
//! (measured seconds per throughput phase, default 5), `AUTHGATE_BENCH_ROUNDS`
//! (alternations of the two throughput phases, default 2),
//! `AUTHGATE_BENCH_PROPAGATIONS` (propagation samples, default 300).

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

#[path = "harness/mod.rs"]
mod harness;
use harness::*;

const HS_SECRET: &str = "bench-hs-secret-0123456789abcdef0123456789abcdef";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";
const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
const CHANNEL: &str = "authgate:{revoked}:events:0";
const MIRROR_JTI: &str = "authgate_revocation_mirror_entries{kind=\"jti\"}";
/// Revoked jtis loaded by the second throughput instance.
const BULK: usize = 100_000;
/// Distinct valid tokens the throughput clients cycle through.
const POOL: usize = 1_000;
fn main() {
    let mut b = Bench::start("revocation");
    let (clients, _, rounds, measure, warmup) = b.knobs();
    let (dir, redis, redis_version, upstream) = (&b.dir, &b.redis, &b.redis_version, b.upstream);
    let con = &mut b.con;
    let samples = env_num("AUTHGATE_BENCH_PROPAGATIONS", 300.0) as usize;

    println!("authgate revocation benchmark");
    println!(
        "  cpus: {}  redis-server {redis_version} on {}  upstream on {upstream}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        redis.addr
    );
    println!("  gateway: {BIN} (threads = 2, request log to /dev/null)");
    println!();

    propagation(dir, redis, con, upstream, samples);
    println!();
    throughput(dir, redis, con, upstream, clients, warmup, measure, rounds);
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---------------------------------------------------------------- (1) propagation

fn propagation(
    dir: &Path,
    redis: &RedisServer,
    con: &mut redis::Connection,
    upstream: SocketAddr,
    samples: usize,
) {
    let a = Gateway::start(dir, "prop-a", redis.addr, 0, upstream);
    let b = Gateway::start(dir, "prop-b", redis.addr, 0, upstream);
    wait_subscribers(con, 2);

    let exp = unix_now() + 3600;
    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let jobs: Vec<(String, Vec<u8>, Vec<u8>)> = (0..samples)
        .map(|i| {
            let jti = format!("prop-{i:05}");
            let token = mint(&key, &format!("prop-user-{i}"), &jti, exp);
            let probe = get_request("/api/x", Some(&token));
            let body = format!(r#"{{"jti":"{jti}","exp":{exp}}}"#);
            let revoke = format!(
                "POST /admin/revoke HTTP/1.1\r\nHost: bench.local\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
            (jti, probe, revoke)
        })
        .collect();

    let mut admin = Reconnecting::new(a.admin);
    let mut probe = Reconnecting::new(b.proxy);
    let mut took_us: Vec<u64> = Vec::with_capacity(samples);
    let mut admin_us: Vec<u64> = Vec::with_capacity(samples);
    let mut polls_total = 0u64;
    let mut timeouts = 0usize;
    for (jti, probe_req, revoke_req) in &jobs {
        let s = probe.send(probe_req);
        assert_eq!(s, 200, "{jti}: B refused the token before its revocation");
        let t0 = Instant::now();
        let s = admin.send(revoke_req);
        assert_eq!(s, 200, "{jti}: POST /admin/revoke on A answered {s}");
        let returned = Instant::now();
        admin_us.push(returned.duration_since(t0).as_micros() as u64);
        loop {
            let s = probe.send(probe_req);
            polls_total += 1;
            if s == 401 {
                took_us.push(returned.elapsed().as_micros() as u64);
                break;
            }
            assert_eq!(
                s, 200,
                "{jti}: B answered {s} while waiting for the revocation"
            );
            if returned.elapsed() > Duration::from_secs(5) {
                timeouts += 1;
                took_us.push(returned.elapsed().as_micros() as u64);
                break;
            }
        }
    }
    took_us.sort_unstable();
    admin_us.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "(1) propagation: revoke a fresh jti on A, poll B with it until 401 ({samples} samples)"
    );
    println!(
        "  A -> B, from the admin call returning to B's first 401:  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (target p99 < 50 ms)",
        ms(pct(&took_us, 0.50)),
        ms(pct(&took_us, 0.99)),
        ms(*took_us.last().unwrap_or(&0)),
    );
    println!(
        "  the admin call itself (A: mirror + MULTI ZADD/ZREMRANGEBYSCORE/PUBLISH/EXEC):  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(pct(&admin_us, 0.50)),
        ms(pct(&admin_us, 0.99)),
        ms(*admin_us.last().unwrap_or(&0)),
    );
    println!(
        "  requests to B per sample (incl. the 401): {:.2}  samples over 5 s: {timeouts}  admin reconnects: {}  probe reconnects: {}",
        polls_total as f64 / samples.max(1) as f64,
        admin.reconnects(),
        probe.reconnects(),
    );
    let b_gauge = metric_value(b.admin, MIRROR_JTI);
    println!("  B's {MIRROR_JTI} afterwards: {b_gauge:?} (expected {samples})");
}

fn wait_subscribers(con: &mut redis::Connection, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(CHANNEL)
            .query(con)
            .expect("PUBSUB NUMSUB");
        if got.first().map(|(_, c)| *c) == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} subscribers to {CHANNEL} expected, got {got:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- (2) throughput

struct Row {
    name: String,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    requests: usize,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
fn throughput(
    dir: &Path,
    redis: &RedisServer,
    con: &mut redis::Connection,
    upstream: SocketAddr,
    clients: usize,
    warmup: Duration,
    measure: Duration,
    rounds: usize,
) {
    // db 1: nothing revoked. db 0: 100,000 revoked jtis (plus the propagation
    // samples, removed first).
    for db in [0, 1] {
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(con)
            .expect("SELECT");
        redis::cmd("DEL")
            .arg(REVOKED_JTIS)
            .arg("authgate:{revoked}:sub")
            .query::<()>(con)
            .expect("DEL");
    }
    redis::cmd("SELECT")
        .arg(0)
        .query::<()>(con)
        .expect("SELECT");

    let empty = Gateway::start(dir, "tp-0", redis.addr, 1, upstream);
    wait_gauge(empty.admin, 0);
    let rss_empty_idle = rss_kib(empty.process.child.id());

    let exp = unix_now() + 3600;
    let bulk_start = Instant::now();
    for batch in (0..BULK).collect::<Vec<_>>().chunks(10_000) {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(REVOKED_JTIS);
        for i in batch {
            // Shaped like a real jti (a UUID's length).
            cmd.arg(exp)
                .arg(format!("bulk-{i:08}-0000-4000-8000-000000000000"));
        }
        cmd.query::<()>(con).expect("ZADD");
    }
    let zcard: usize = redis::cmd("ZCARD")
        .arg(REVOKED_JTIS)
        .query(con)
        .expect("ZCARD");
    let bulk_write = bulk_start.elapsed();
    let load_start = Instant::now();
    let full = Gateway::start(dir, "tp-100k", redis.addr, 0, upstream);
    wait_gauge(full.admin, BULK as i64);
    let load = load_start.elapsed();
    let rss_full_idle = rss_kib(full.process.child.id());

    println!(
        "(2) throughput: JWT route, {clients} clients on keep-alive connections, {POOL} distinct valid tokens, {warmup:?} warm-up + {:?} measured per phase, {rounds} rounds",
        measure
    );
    println!(
        "  100,000 jtis ZADDed in {bulk_write:.2?} (ZCARD {zcard}); the second instance started and mirrored them in {load:.2?} (gauge {MIRROR_JTI} = {})",
        metric_value(full.admin, MIRROR_JTI).unwrap_or(-1)
    );

    let key = EncodingKey::from_secret(HS_SECRET.as_bytes());
    let reqs: Vec<Vec<u8>> = (0..POOL)
        .map(|i| {
            let token = mint(&key, &format!("user-{i}"), &format!("valid-{i:05}"), exp);
            get_request("/api/x", Some(&token))
        })
        .collect();

    let mut lat_empty: Vec<u32> = Vec::new();
    let mut lat_full: Vec<u32> = Vec::new();
    let (mut secs_empty, mut secs_full) = (0.0, 0.0);
    let (mut err_empty, mut err_full) = (0u64, 0u64);
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for (name, gw, lat, secs, errs) in [
            (
                "0 revoked jtis",
                &empty,
                &mut lat_empty,
                &mut secs_empty,
                &mut err_empty,
            ),
            (
                "100,000 revoked jtis",
                &full,
                &mut lat_full,
                &mut secs_full,
                &mut err_full,
            ),
        ] {
            run_clients(gw.proxy, &reqs, clients, warmup);
            let start = Instant::now();
            let tallies = run_clients(gw.proxy, &reqs, clients, measure);
            let elapsed = start.elapsed().as_secs_f64();
            let mut l: Vec<u32> = Vec::new();
            let mut e = 0;
            for t in tallies {
                l.extend_from_slice(&t.latencies_us);
                e += t.errors;
                if let Some(first) = t.first_error {
                    eprintln!("  {name}: failed requests (first: {first})");
                }
            }
            l.sort_unstable();
            let row = Row {
                name: format!("{name}, round {round}"),
                rps: l.len() as f64 / elapsed,
                p50_us: pct(&l, 0.50),
                p99_us: pct(&l, 0.99),
                requests: l.len(),
                errors: e,
            };
            println!(
                "  done: {:<32} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                row.name,
                row.rps,
                f64::from(row.p50_us) / 1000.0,
                f64::from(row.p99_us) / 1000.0
            );
            rows.push(row);
            lat.extend_from_slice(&l);
            *secs += elapsed;
            *errs += e;
        }
    }
    let rss_empty_after = rss_kib(empty.process.child.id());
    let rss_full_after = rss_kib(full.process.child.id());
    lat_empty.sort_unstable();
    lat_full.sort_unstable();
    let total = |name: &str, lat: &[u32], secs: f64, errors: u64| Row {
        name: name.to_string(),
        rps: lat.len() as f64 / secs.max(f64::EPSILON),
        p50_us: pct(lat, 0.50),
        p99_us: pct(lat, 0.99),
        requests: lat.len(),
        errors,
    };
    let t_empty = total(
        "0 revoked jtis, all rounds",
        &lat_empty,
        secs_empty,
        err_empty,
    );
    let t_full = total(
        "100,000 revoked jtis, all rounds",
        &lat_full,
        secs_full,
        err_full,
    );

    println!();
    println!(
        "| {:<34} | {:>8} | {:>7} | {:>7} | {:>9} | {:>6} |",
        "phase", "req/s", "p50 ms", "p99 ms", "requests", "errors"
    );
    println!(
        "|{:-<36}|{:->9}:|{:->8}:|{:->8}:|{:->10}:|{:->7}:|",
        "", "", "", "", "", ""
    );
    for r in rows.iter().chain([&t_empty, &t_full]) {
        println!(
            "| {:<34} | {:>8.0} | {:>7.3} | {:>7.3} | {:>9} | {:>6} |",
            r.name,
            r.rps,
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            r.requests,
            r.errors
        );
    }
    println!();
    println!(
        "  throughput ratio (100k / 0): {:.3}  (target >= 0.97)   p50 ratio: {:.3}   p99 ratio: {:.3}",
        t_full.rps / t_empty.rps.max(f64::EPSILON),
        f64::from(t_full.p50_us) / f64::from(t_empty.p50_us.max(1)),
        f64::from(t_full.p99_us) / f64::from(t_empty.p99_us.max(1)),
    );
    let per_jti = |full: Option<u64>, empty: Option<u64>| match (full, empty) {
        (Some(f), Some(e)) => format!(
            "{:.0} bytes/jti",
            (f as f64 - e as f64) * 1024.0 / BULK as f64
        ),
        _ => "n/a".to_string(),
    };
    println!(
        "  RSS (VmRSS) after start-up:  0 jtis {}  100k jtis {}  -> {}",
        kib(rss_empty_idle),
        kib(rss_full_idle),
        per_jti(rss_full_idle, rss_empty_idle)
    );
    println!(
        "  RSS (VmRSS) after the load:  0 jtis {}  100k jtis {}  -> {}",
        kib(rss_empty_after),
        kib(rss_full_after),
        per_jti(rss_full_after, rss_empty_after)
    );

    // (3) the same 100,000 jtis, revoked one by one through the admin API of
    // the instance that had none: the mirror without a bulk load's transient
    // copies (the loaded one above holds the Redis reply, its parsed form and
    // the map at once while it loads).
    drop(full);
    let mut admin = Reconnecting::new(empty.admin);
    let start = Instant::now();
    for i in 0..BULK {
        let body = format!(r#"{{"jti":"bulk-{i:08}-0000-4000-8000-000000000000","exp":{exp}}}"#);
        let req = format!(
            "POST /admin/revoke HTTP/1.1\r\nHost: bench.local\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = admin.send(req.as_bytes());
        assert_eq!(s, 200, "POST /admin/revoke #{i} answered {s}");
    }
    let took = start.elapsed();
    let rss_empty_revoked = rss_kib(empty.process.child.id());
    println!(
        "  100,000 jtis revoked one by one through the admin API of the 0-jti instance in {took:.1?} ({:.0}/s; gauge {})",
        BULK as f64 / took.as_secs_f64(),
        metric_value(empty.admin, MIRROR_JTI).unwrap_or(-1)
    );
    println!(
        "  RSS (VmRSS) of that instance: {} before, {} after -> {}",
        kib(rss_empty_after),
        kib(rss_empty_revoked),
        per_jti(rss_empty_revoked, rss_empty_after)
    );
}

fn wait_gauge(admin: SocketAddr, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = metric_value(admin, MIRROR_JTI);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{MIRROR_JTI} on {admin} = {got:?}, expected {want}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn kib(v: Option<u64>) -> String {
    v.map_or("n/a".to_string(), |k| {
        format!("{:.1} MiB", k as f64 / 1024.0)
    })
}

// ---------------------------------------------------------------- tokens

fn mint(key: &EncodingKey, sub: &str, jti: &str, exp: i64) -> String {
    let claims = serde_json::json!({
        "iss": "https://hs.test",
        "sub": sub,
        "jti": jti,
        "iat": unix_now() - 10,
        "exp": exp,
    });
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key).expect("sign")
}

// ---------------------------------------------------------------- redis

// ---------------------------------------------------------------- upstream

// ---------------------------------------------------------------- gateway

/// An `authgate serve` child, killed on drop.
struct Gateway {
    process: GatewayProcess,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    /// Starts one on `redis://<redis>/<db>` and waits for `/readyz`.
    fn start(dir: &Path, name: &str, redis: SocketAddr, db: u8, upstream: SocketAddr) -> Gateway {
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let toml = format!(
            r#"[server]
listen = "{proxy}"
admin_listen = "{admin}"
threads = 2

[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[store]
kind = "redis"
url = "redis://{redis}/{db}"

[upstreams.app]
addrs = ["{upstream}"]

[issuers.hs]
issuer = "https://hs.test"
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"

[[routes]]
path_prefix = "/api/"
upstream = "app"
auth = "jwt"
"#
        );
        let process = GatewayProcess::start(
            dir,
            name,
            &toml,
            &[
                ("TEST_HS_SECRET", HS_SECRET),
                ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
            admin,
        );
        Gateway {
            process,
            proxy,
            admin,
        }
    }
}

// ---------------------------------------------------------------- client

fn get_request(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nAccept: */*\r\n{auth}\r\n").into_bytes()
}

/// A keep-alive connection that reopens itself when the server closes it.
struct Reconnecting {
    addr: SocketAddr,
    conn: Option<Conn>,
    opened: usize,
}

impl Reconnecting {
    fn new(addr: SocketAddr) -> Reconnecting {
        Reconnecting {
            addr,
            conn: None,
            opened: 0,
        }
    }

    /// Connections opened after the first one.
    fn reconnects(&self) -> usize {
        self.opened.saturating_sub(1)
    }

    /// The status; retries once on a fresh connection if the kept one failed.
    fn send(&mut self, req: &[u8]) -> u16 {
        for _ in 0..2 {
            if self.conn.is_none() {
                self.conn = Some(Conn::open(self.addr).expect("connect"));
                self.opened += 1;
            }
            let c = self.conn.as_mut().expect("connection");
            match c.send(req) {
                Ok((status, keep_alive)) => {
                    if !keep_alive {
                        self.conn = None;
                    }
                    return status;
                }
                Err(_) => self.conn = None,
            }
        }
        panic!("request to {} failed twice", self.addr);
    }
}
