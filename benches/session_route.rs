//! Load benchmark for session routes, in one run (`cargo bench --bench
//! session_route`): what does a session-cookie route cost compared with a
//! route that authenticates nothing, and how many Redis commands does it send
//! per request?
//!
//! It starts its own `redis-server` on a free loopback port, a minimal
//! keep-alive HTTP upstream (std threads, a fixed 2-byte 200 response written
//! in one `write`), and the `authgate` binary cargo built for this bench
//! (`CARGO_BIN_EXE_authgate`, i.e. `target/release/authgate`) with a config
//! holding a pass-through route (`auth = "none"`) and a session route. Then N
//! client threads, each on one keep-alive connection, send requests back to
//! back for a fixed time per phase, and it prints requests/s, p50/p99 latency,
//! each row's ratio to the pass-through route, and the Redis commands per
//! request (from `INFO commandstats` before and after the phase).
//!
//! Nothing is asserted about speed: machines are noisy. Tunables (env):
//! `AUTHGATE_BENCH_CLIENTS` (client threads, default 8),
//! `AUTHGATE_BENCH_SECS` (measured seconds per phase, default 5).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use authgate::testing::session::sign_cookie;

#[path = "harness/mod.rs"]
mod harness;
use harness::*;

const SECRET: &str = "bench-session-secret-0123456789abcdef";
const DISTINCT: usize = 1_000;
fn main() {
    let mut b = Bench::start("session_route");
    let (clients, secs, _, measure, warmup) = b.knobs();
    let (dir, redis, redis_version, upstream) = (&b.dir, &b.redis, &b.redis_version, b.upstream);
    let con = &mut b.con;

    println!("authgate session-route load benchmark");
    println!(
        "  cpus: {}  clients: {clients} keep-alive connections  phase: {warmup:?} warm-up + {secs}s measured",
        thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  redis-server {redis_version} on {}  upstream on {upstream}  gateway: {BIN} (threads = 2, request log to /dev/null)",
        redis.addr
    );
    println!();

    let one = Session::new(con, "bench-one", 0);
    let mut rows: Vec<Row> = Vec::new();

    // (a) the upstream directly.
    let r = phase(
        "upstream directly",
        upstream,
        &[request("/open/x", None)],
        clients,
        warmup,
        measure,
        con,
    );
    rows.push(r);

    let base = Config {
        upstream,
        redis: redis.addr,
        extra: "",
    };
    {
        let gw = Gateway::start(dir, "main", &base);
        wait_for_tracking(con);

        // (b) the pass-through route: routing, header hygiene, proxying.
        rows.push(phase(
            "pass-through (auth = \"none\")",
            gw.proxy,
            &[request("/open/x", None)],
            clients,
            warmup,
            measure,
            con,
        ));

        // (c1) one session cookie, reused: after the first request the
        // session comes from the local cache.
        rows.push(phase(
            "session, 1 cookie (cache warm)",
            gw.proxy,
            &[request("/app/x", Some(&one.cookie))],
            clients,
            warmup,
            measure,
            con,
        ));

        // (c2) 1,000 distinct sessions, written just before the phase (so the
        // cache starts cold for them: each one is read from Redis once).
        let many: Vec<Session> = (0..DISTINCT)
            .map(|i| Session::new(con, &format!("bench-{i:04}"), i))
            .collect();
        let reqs: Vec<Vec<u8>> = many
            .iter()
            .map(|s| request("/app/x", Some(&s.cookie)))
            .collect();
        rows.push(phase(
            "session, 1,000 cookies (cold at start)",
            gw.proxy,
            &reqs,
            clients,
            Duration::ZERO,
            measure,
            con,
        ));
    }

    // (c3) for comparison: no cache at all (`cache_ttl = "0s"`), so every
    // request reads the session from Redis.
    {
        let cfg = Config {
            extra: "cache_ttl = \"0s\"\n",
            ..base
        };
        let gw = Gateway::start(dir, "nocache", &cfg);
        wait_for_tracking(con);
        rows.push(phase(
            "session, 1 cookie, cache_ttl = \"0s\"",
            gw.proxy,
            &[request("/app/x", Some(&one.cookie))],
            clients,
            warmup,
            measure,
            con,
        ));
    }

    // (c4) for comparison: `rolling = true` (touch_interval default 60s).
    {
        let cfg = Config {
            extra: "rolling = true\n",
            ..base
        };
        let gw = Gateway::start(dir, "rolling", &cfg);
        wait_for_tracking(con);
        rows.push(phase(
            "session, 1 cookie, rolling = true",
            gw.proxy,
            &[request("/app/x", Some(&one.cookie))],
            clients,
            warmup,
            measure,
            con,
        ));
    }

    print_table(&rows);
}

// ---------------------------------------------------------------- redis

/// `calls` per command from `INFO commandstats`.
fn commandstats(con: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(con)
        .expect("INFO commandstats");
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.insert(name.to_string(), calls);
    }
    out
}

/// Waits until a client with key tracking on (the gateway's invalidation
/// connection) is connected: before that, authgate caches nothing.
fn wait_for_tracking(con: &mut redis::Connection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(con)
            .expect("CLIENT LIST");
        let tracking = list.lines().any(|l| {
            l.split(' ')
                .find_map(|kv| kv.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        });
        if tracking {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never turned on Redis client tracking"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A connect-redis session stored in Redis and its signed cookie.
struct Session {
    cookie: String,
}

impl Session {
    fn new(con: &mut redis::Connection, sid: &str, n: usize) -> Session {
        let day_ms: u64 = 86_400_000;
        let expires =
            humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(86_400));
        let json = format!(
            r#"{{"cookie":{{"originalMaxAge":{day_ms},"expires":"{expires}","httpOnly":true,"path":"/"}},"user":{{"id":"user-{n}","email":"user-{n}@example.com"}},"role":["member"]}}"#
        );
        redis::cmd("SET")
            .arg(format!("sess:{sid}"))
            .arg(json)
            .arg("PX")
            .arg(day_ms)
            .query::<()>(con)
            .expect("SET session");
        Session {
            cookie: format!("connect.sid={}", sign_cookie(sid, SECRET.as_bytes())),
        }
    }
}

// ---------------------------------------------------------------- upstream

// ---------------------------------------------------------------- gateway

#[derive(Clone, Copy)]
struct Config {
    upstream: SocketAddr,
    redis: SocketAddr,
    /// Extra lines for `[sessions]`.
    extra: &'static str,
}

/// An `authgate serve` child, killed on drop.
struct Gateway {
    /// Held for its drop, which stops the gateway.
    _process: GatewayProcess,
    proxy: SocketAddr,
}

impl Gateway {
    fn start(dir: &Path, name: &str, cfg: &Config) -> Gateway {
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let toml = format!(
            r#"[server]
listen = "{proxy}"
admin_listen = "{admin}"

[store]
kind = "redis"
url = "redis://{redis}/0"

[upstreams.app]
addrs = ["{upstream}"]

[sessions]
cookie = "connect.sid"
secrets_env = ["AUTHGATE_BENCH_SESSION_SECRET"]
key_prefix = "sess:"
identity = {{ subject = "user.id", email = "user.email", roles = "role" }}
{extra}
[[routes]]
name = "open"
path_prefix = "/open/"
upstream = "app"
auth = "none"

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "session"
"#,
            redis = cfg.redis,
            upstream = cfg.upstream,
            extra = cfg.extra,
        );
        let process = GatewayProcess::start(
            dir,
            name,
            &toml,
            &[("AUTHGATE_BENCH_SESSION_SECRET", SECRET)],
            admin,
        );
        Gateway {
            _process: process,
            proxy,
        }
    }
}

// ---------------------------------------------------------------- client

fn request(path: &str, cookie: Option<&str>) -> Vec<u8> {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nAccept: */*\r\n{cookie}\r\n").into_bytes()
}

// ---------------------------------------------------------------- phases

struct Row {
    name: String,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    errors: u64,
    redis_per_req: f64,
    breakdown: String,
}

/// Redis commands that are not per-request work: our own `INFO`, and the
/// gateway's background connections (the session-tracking connection's
/// `HELLO`, `CLIENT TRACKING` and keep-alive `PING`; the revocation mirror's
/// `SUBSCRIBE` and periodic re-read).
const BACKGROUND: &[&str] = &[
    "info",
    "ping",
    "hello",
    "client|tracking",
    "client|setinfo",
    "subscribe",
    "zrangebyscore",
    "hgetall",
];

/// A warm-up (not measured), then `measure` with Redis commandstats read
/// before and after; [`BACKGROUND`] commands are not counted.
fn phase(
    name: &str,
    addr: SocketAddr,
    reqs: &[Vec<u8>],
    clients: usize,
    warmup: Duration,
    measure: Duration,
    con: &mut redis::Connection,
) -> Row {
    if !warmup.is_zero() {
        run_clients(addr, reqs, clients, warmup);
    }
    let before = commandstats(con);
    let start = Instant::now();
    let tallies = run_clients(addr, reqs, clients, measure);
    let elapsed = start.elapsed().as_secs_f64();
    let after = commandstats(con);

    let mut lat: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for t in tallies {
        lat.extend_from_slice(&t.latencies_us);
        errors += t.errors;
        if first_error.is_none() {
            first_error = t.first_error;
        }
    }
    lat.sort_unstable();
    let ok = lat.len() as f64;
    let mut per_cmd: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| !BACKGROUND.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0)) as f64))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    per_cmd.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = per_cmd.iter().fold(0.0, |acc, (_, d)| acc + d);
    let per_req = |d: f64| if ok > 0.0 { d / ok } else { 0.0 };
    let breakdown = per_cmd
        .iter()
        .map(|(k, d)| format!("{k} {:.3}", per_req(*d)))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(e) = &first_error {
        eprintln!("  {name}: {errors} failed requests (first: {e})");
    }
    let row = Row {
        name: name.to_string(),
        rps: ok / elapsed,
        p50_us: pct(&lat, 0.50),
        p99_us: pct(&lat, 0.99),
        errors,
        redis_per_req: per_req(total),
        breakdown,
    };
    println!(
        "  done: {:<40} {:>9.0} req/s  ({} requests)",
        row.name,
        row.rps,
        lat.len()
    );
    row
}

fn print_table(rows: &[Row]) {
    let pass = rows.iter().find(|r| r.name.starts_with("pass-through"));
    let pass_rps = pass.map_or(1.0, |r| r.rps);
    let pass_p50 = pass.map_or(1.0, |r| f64::from(r.p50_us.max(1)));
    println!();
    println!(
        "| {:<40} | {:>8} | {:>7} | {:>7} | {:>13} | {:>11} | {:>6} | {:>14} | {:<38} |",
        "row",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s vs pass",
        "p50 vs pass",
        "errors",
        "redis cmds/req",
        "by command"
    );
    println!(
        "|{:-<42}|{:->9}:|{:->8}:|{:->8}:|{:->14}:|{:->12}:|{:->7}:|{:->15}:|{:-<40}|",
        "", "", "", "", "", "", "", "", ""
    );
    for r in rows {
        println!(
            "| {:<40} | {:>8.0} | {:>7.3} | {:>7.3} | {:>12.2}x | {:>10.2}x | {:>6} | {:>14.3} | {:<38} |",
            r.name,
            r.rps,
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            r.rps / pass_rps,
            f64::from(r.p50_us) / pass_p50,
            r.errors,
            r.redis_per_req,
            if r.breakdown.is_empty() { "-" } else { &r.breakdown },
        );
    }
}
