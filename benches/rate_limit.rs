//! Rate-limit overhead benchmark, in one run (`cargo bench --bench rate_limit`).
//!
//! What a `[[routes.rate_limits]]` costs per request: two `auth = "none"`
//! routes to the same upstream, `/open` (no limits) and `/limited` (`key =
//! "ip"`, `limit = 1000000000`, `window = "1m"`: checked and consumed on every
//! request, never reached), on two gateway processes:
//!
//! - **redis**: `[store] kind = "redis"`, its own `redis-server` on a free
//!   loopback port (one atomic script call per limited request);
//! - **cluster**: `[store] kind = "redis_cluster"` on three masters of its
//!   own (`redis-cli --cluster create`), to show that a limited request
//!   through a cluster costs what it costs on one node (no Nagle /
//!   delayed-ACK stall: docs/operations.md);
//! - **memory**: no `[store]` (the in-process limiter).
//!
//! N client threads on keep-alive connections, a fixed time per phase after a
//! warm-up; phases alternate (redis open, redis limited, cluster open,
//! cluster limited, memory open, memory limited, then the same in reverse
//! order, and so on) to spread machine
//! noise and order effects. Prints req/s, p50 / p99 per
//! phase and per (store, route), and the ratio limited / unlimited per store.
//! Before measuring, each limited route is checked to answer 200 with
//! `RateLimit` headers; after, the store error and rate-limited counters.
//!
//! Everything runs on loopback: the upstream is a minimal keep-alive server
//! (std threads, a fixed 2-byte 200); the gateway is the `authgate` binary
//! cargo built for this bench (`CARGO_BIN_EXE_authgate`, i.e.
//! `target/release/authgate`), `threads = 2`, request logs to /dev/null.
//!
//! Nothing is asserted about speed: machines are noisy. Tunables (env):
//! `AUTHGATE_BENCH_CLIENTS` (client threads, default 8), `AUTHGATE_BENCH_SECS`
//! (measured seconds per phase, default 5), `AUTHGATE_BENCH_ROUNDS`
//! (alternations of the six phases, default 2).

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Instant;

#[path = "harness/mod.rs"]
mod harness;
use harness::*;

fn main() {
    let mut b = Bench::start("rate_limit");
    let (clients, _, rounds, measure, warmup) = b.knobs();
    let (dir, redis, redis_version, upstream) = (&b.dir, &b.redis, &b.redis_version, b.upstream);
    let con = &mut b.con;
    let cluster = start_cluster(dir);
    let on_redis = Gateway::start(
        dir,
        "redis",
        &format!("kind = \"redis\"\nurl = \"redis://{}/0\"", redis.addr),
        upstream,
    );
    let seeds: Vec<String> = cluster
        .iter()
        .map(|n| format!("\"{}\"", n.node_url()))
        .collect();
    let on_cluster = Gateway::start(
        dir,
        "cluster",
        &format!("kind = \"redis_cluster\"\nurls = [{}]", seeds.join(", ")),
        upstream,
    );
    let on_memory = Gateway::start(dir, "memory", "", upstream);

    println!("authgate rate-limit benchmark");
    println!(
        "  cpus: {}  redis-server {redis_version} on {}  upstream on {upstream}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        redis.addr
    );
    println!(
        "  redis cluster: three masters on {}",
        cluster
            .iter()
            .map(|n| n.addr())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  gateway: {BIN} (threads = 2, request log to /dev/null)");
    println!(
        "  routes: GET /open (no limits) and GET /limited (key \"ip\", limit 1000000000, window \"1m\"), auth \"none\", same upstream"
    );
    println!(
        "  {clients} clients on keep-alive connections, {warmup:?} warm-up + {measure:?} measured per phase, {rounds} rounds"
    );

    // The limiter really runs on /limited (and not on /open).
    for gw in [&on_redis, &on_cluster, &on_memory] {
        let mut c = Conn::open(gw.proxy).expect("connect");
        let (status, _) = c.send(&get_request("/limited")).expect("GET /limited");
        assert_eq!(status, 200, "GET /limited on the {} gateway", gw.name);
        assert!(
            c.rate_limit_header.is_some(),
            "GET /limited on the {} gateway has no RateLimit header",
            gw.name
        );
        let policy = c.rate_limit_header.clone().unwrap_or_default();
        let (status, _) = c.send(&get_request("/open")).expect("GET /open");
        assert_eq!(status, 200, "GET /open on the {} gateway", gw.name);
        assert!(c.rate_limit_header.is_none(), "GET /open is limited");
        println!(
            "  {} gateway: /limited answers RateLimit: {policy}",
            gw.name
        );
    }
    let rl_keys: i64 = redis::cmd("DBSIZE").query(con).expect("DBSIZE");
    println!("  redis keys after the check: {rl_keys}");
    println!();

    let open = get_request("/open");
    let limited = get_request("/limited");
    let phases: [(&str, &Gateway, &Vec<u8>); 6] = [
        ("redis, unlimited", &on_redis, &open),
        ("redis, limited", &on_redis, &limited),
        ("cluster, unlimited", &on_cluster, &open),
        ("cluster, limited", &on_cluster, &limited),
        ("memory, unlimited", &on_memory, &open),
        ("memory, limited", &on_memory, &limited),
    ];
    let mut totals: Vec<(Vec<u32>, f64, u64)> = vec![(Vec::new(), 0.0, 0); phases.len()];
    let mut rows = Vec::new();
    for round in 1..=rounds {
        // Odd rounds in order, even rounds reversed: each phase runs both
        // early and late in a round.
        let order: Vec<usize> = if round % 2 == 1 {
            (0..phases.len()).collect()
        } else {
            (0..phases.len()).rev().collect()
        };
        for i in order {
            let (name, gw, req) = phases[i];
            let req = std::slice::from_ref(req);
            run_clients(gw.proxy, req, clients, warmup);
            let start = Instant::now();
            let tallies = run_clients(gw.proxy, req, clients, measure);
            let elapsed = start.elapsed().as_secs_f64();
            let mut lat: Vec<u32> = Vec::new();
            let mut errors = 0;
            for t in tallies {
                lat.extend_from_slice(&t.latencies_us);
                errors += t.errors;
                if let Some(first) = t.first_error {
                    eprintln!("  {name}: failed requests (first: {first})");
                }
            }
            lat.sort_unstable();
            let row = Row::new(format!("{name}, round {round}"), &lat, elapsed, errors);
            println!(
                "  done: {:<28} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                row.name,
                row.rps,
                f64::from(row.p50_us) / 1000.0,
                f64::from(row.p99_us) / 1000.0
            );
            rows.push(row);
            totals[i].0.extend_from_slice(&lat);
            totals[i].1 += elapsed;
            totals[i].2 += errors;
        }
    }
    let totals: Vec<Row> = totals
        .iter_mut()
        .zip(phases.iter())
        .map(|((lat, secs, errors), (name, _, _))| {
            lat.sort_unstable();
            Row::new(format!("{name}, all rounds"), lat, *secs, *errors)
        })
        .collect();

    println!();
    println!(
        "| {:<30} | {:>8} | {:>7} | {:>7} | {:>9} | {:>6} |",
        "phase", "req/s", "p50 ms", "p99 ms", "requests", "errors"
    );
    println!(
        "|{:-<32}|{:->9}:|{:->8}:|{:->8}:|{:->10}:|{:->7}:|",
        "", "", "", "", "", ""
    );
    for r in rows.iter().chain(totals.iter()) {
        println!(
            "| {:<30} | {:>8.0} | {:>7.3} | {:>7.3} | {:>9} | {:>6} |",
            r.name,
            r.rps,
            f64::from(r.p50_us) / 1000.0,
            f64::from(r.p99_us) / 1000.0,
            r.requests,
            r.errors
        );
    }
    println!();
    for (store, unlimited, limited) in [
        ("redis", &totals[0], &totals[1]),
        ("cluster", &totals[2], &totals[3]),
        ("memory", &totals[4], &totals[5]),
    ] {
        println!(
            "  {store:<7} limited / unlimited: throughput {:.3}   p50 {:.3}   p99 {:.3}",
            limited.rps / unlimited.rps.max(f64::EPSILON),
            f64::from(limited.p50_us) / f64::from(unlimited.p50_us.max(1)),
            f64::from(limited.p99_us) / f64::from(unlimited.p99_us.max(1)),
        );
    }
    for gw in [&on_redis, &on_cluster, &on_memory] {
        println!(
            "  {} gateway after the run: authgate_rate_limited_total{{route=\"limited\"}} = {}, authgate_store_errors_total{{op=\"ratelimit\"}} = {}",
            gw.name,
            metric_value(gw.admin, "authgate_rate_limited_total{route=\"limited\"}")
                .map_or("absent (never incremented)".into(), |v| v.to_string()),
            metric_value(gw.admin, "authgate_store_errors_total{op=\"ratelimit\"}")
                .map_or("absent (never incremented)".into(), |v| v.to_string()),
        );
    }
    let calls = info_field(con, "commandstats", "cmdstat_evalsha");
    println!("  redis EVALSHA stats: {calls}");
    for n in &cluster {
        let stats = n.cmd(&["INFO", "commandstats"]);
        let evalsha = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .unwrap_or("cmdstat_evalsha: none");
        println!("  cluster node {} {evalsha}", n.addr());
    }
}

/// One result line.
struct Row {
    name: String,
    rps: f64,
    p50_us: u32,
    p99_us: u32,
    requests: usize,
    errors: u64,
}

impl Row {
    fn new(name: String, sorted: &[u32], secs: f64, errors: u64) -> Row {
        Row {
            name,
            rps: sorted.len() as f64 / secs.max(f64::EPSILON),
            p50_us: pct(sorted, 0.50),
            p99_us: pct(sorted, 0.99),
            requests: sorted.len(),
            errors,
        }
    }
}

// ---------------------------------------------------------------- redis

// ---------------------------------------------------------------- upstream

// ---------------------------------------------------------------- gateway

/// An `authgate serve` child, killed on drop.
struct Gateway {
    name: &'static str,
    /// Held for its drop, which stops the gateway.
    _process: GatewayProcess,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    /// Starts one with these `[store]` keys (none: the memory store) and
    /// waits for `/readyz`.
    fn start(dir: &Path, name: &'static str, store: &str, upstream: SocketAddr) -> Gateway {
        let proxy: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let store = if store.is_empty() {
            String::new()
        } else {
            format!("[store]\n{store}\non_error = \"deny\"\n")
        };
        let toml = format!(
            r#"[server]
listen = "{proxy}"
admin_listen = "{admin}"
threads = 2
trusted_proxies = []

{store}
[upstreams.app]
addrs = ["{upstream}"]

[[routes]]
name = "open"
path = "/open"
upstream = "app"
auth = "none"

[[routes]]
name = "limited"
path = "/limited"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 1000000000
window = "1m"
count = "all"
"#
        );
        let process = GatewayProcess::start(dir, name, &toml, &[], admin);
        Gateway {
            name,
            _process: process,
            proxy,
            admin,
        }
    }
}

// ---------------------------------------------------------------- client

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nAccept: */*\r\n\r\n").into_bytes()
}
