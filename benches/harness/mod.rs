//! What the process benchmarks (`revocation`, `session_route`,
//! `rate_limit`) share: a `redis-server` and an upstream on free loopback
//! ports, a keep-alive HTTP/1.1 client, and closed-loop client threads.
//! Each bench includes it with `#[path = "harness/mod.rs"] mod harness;`
//! (a folder with `mod.rs` is not a bench target of its own), and each uses
//! a different part of it. `redis-server` is started by the tests' launcher,
//! `tests/common/redis_server.rs`, included here by path.
#![allow(dead_code)]

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_authgate");

pub const UPSTREAM_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(default)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The tests' `redis-server` launcher (one copy for tests and benches).
#[path = "../../tests/common/redis_server.rs"]
pub mod redis_server;

/// A `redis-server` child on a free loopback port (the tests' launcher,
/// [`redis_server::Redis`], with its log in the bench folder), killed on drop.
pub struct RedisServer {
    pub server: redis_server::RedisServer,
    pub addr: SocketAddr,
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        let server = redis_server::Redis::new("bench-redis").dir(dir).start();
        let addr: SocketAddr = ([127, 0, 0, 1], server.port).into();
        RedisServer { server, addr }
    }

    pub fn try_connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://{}/0", self.addr))?.get_connection()
    }

    pub fn connect(&self) -> redis::Connection {
        self.try_connect().expect("connect to redis-server")
    }
}

/// Three cluster-enabled `redis-server`s (all masters) joined by
/// `redis-cli --cluster create`, ready (`cluster_state:ok`, every slot
/// assigned) when this returns; killed on drop.
pub fn start_cluster(dir: &Path) -> Vec<redis_server::RedisServer> {
    let nodes: Vec<redis_server::RedisServer> = (0..3)
        .map(|_| {
            redis_server::Redis::new("bench-cluster")
                .dir(dir)
                .cluster_node()
                .start()
        })
        .collect();
    let out = std::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(nodes.iter().map(|n| n.addr()))
        .arg("--cluster-yes")
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        let info = n.cmd(&["CLUSTER", "INFO"]);
        info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the bench cluster is not ok after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes
}

pub fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO").arg(section).query(con).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// A keep-alive HTTP/1.1 server on a free port answering every request with
/// the same small 200, one thread per connection.
pub fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = serve_upstream(stream);
            });
        }
    });
    addr
}

pub fn serve_upstream(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = String::new();
    loop {
        let mut len = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" || line == "\n" {
                if first {
                    continue;
                }
                break;
            }
            first = false;
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        io::copy(&mut (&mut reader).take(len as u64), &mut io::sink())?;
        out.write_all(UPSTREAM_RESPONSE)?;
    }
}

/// One keep-alive connection.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
    pub line: String,
    pub body: Vec<u8>,
    /// The last response's `RateLimit` header.
    pub rate_limit_header: Option<String>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            line: String::new(),
            body: Vec::new(),
            rate_limit_header: None,
        })
    }

    /// Sends one request and reads the whole response: (status, keep-alive).
    pub fn send(&mut self, req: &[u8]) -> io::Result<(u16, bool)> {
        self.writer.write_all(req)?;
        self.line.clear();
        self.rate_limit_header = None;
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {:?}", self.line)))?;
        let mut len = 0usize;
        let mut chunked = false;
        let mut keep_alive = true;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.eq_ignore_ascii_case("chunked");
                } else if k.eq_ignore_ascii_case("connection") {
                    keep_alive = !v.eq_ignore_ascii_case("close");
                } else if k.eq_ignore_ascii_case("ratelimit") {
                    self.rate_limit_header = Some(v.to_string());
                }
            }
        }
        if chunked {
            self.body.clear();
            loop {
                self.line.clear();
                self.reader.read_line(&mut self.line)?;
                let size = usize::from_str_radix(self.line.trim(), 16)
                    .map_err(|_| io::Error::other("bad chunk size"))?;
                let start = self.body.len();
                self.body.resize(start + size + 2, 0);
                self.reader.read_exact(&mut self.body[start..])?;
                self.body.truncate(start + size);
                if size == 0 {
                    break;
                }
            }
        } else {
            self.body.resize(len, 0);
            self.reader.read_exact(&mut self.body)?;
        }
        Ok((status, keep_alive))
    }
}

pub fn get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut c = Conn::open(addr)?;
    c.send(
        format!("GET {path} HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map(|(s, _)| s)
}

/// What one client thread saw.
#[derive(Default)]
pub struct Tally {
    pub latencies_us: Vec<u32>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Sends `reqs` round-robin on one connection until `until`.
pub fn client_loop(addr: SocketAddr, reqs: &[Vec<u8>], offset: usize, until: Instant) -> Tally {
    let mut t = Tally {
        latencies_us: Vec::with_capacity(1 << 16),
        ..Tally::default()
    };
    let mut conn: Option<Conn> = None;
    let mut i = offset;
    while Instant::now() < until {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    t.errors += 1;
                    t.first_error.get_or_insert_with(|| e.to_string());
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let req = &reqs[i % reqs.len()];
        i += 1;
        let start = Instant::now();
        match c.send(req) {
            Ok((200, keep_alive)) => {
                t.latencies_us
                    .push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if !keep_alive {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                t.errors += 1;
                t.first_error
                    .get_or_insert_with(|| format!("HTTP {status}"));
            }
            Err(e) => {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| e.to_string());
                conn = None;
            }
        }
    }
    t
}

/// Runs `clients` threads against `addr` for `dur`; returns every thread's tally.
pub fn run_clients(
    addr: SocketAddr,
    reqs: &[Vec<u8>],
    clients: usize,
    dur: Duration,
) -> Vec<Tally> {
    let reqs = Arc::new(reqs.to_vec());
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|n| {
            let reqs = reqs.clone();
            let barrier = barrier.clone();
            let offset = n * reqs.len() / clients.max(1);
            thread::spawn(move || {
                barrier.wait();
                client_loop(addr, &reqs, offset, Instant::now() + dur)
            })
        })
        .collect();
    barrier.wait();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

/// An `authgate serve` child, killed on drop.
pub struct GatewayProcess {
    pub child: Child,
}

impl GatewayProcess {
    /// Writes `toml` to `<dir>/<name>.toml`, starts `authgate serve` on it
    /// with `envs`, and waits (30 s) until `admin` answers `/readyz` with
    /// 200; panics with the gateway's stderr if it exits first.
    pub fn start(
        dir: &Path,
        name: &str,
        toml: &str,
        envs: &[(&str, &str)],
        admin: SocketAddr,
    ) -> GatewayProcess {
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, toml).expect("write config");
        let stderr = dir.join(format!("{name}.stderr"));
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start authgate");
        let mut process = GatewayProcess { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!(
                    "authgate exited during start-up ({status}):\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
            if matches!(get_status(admin, "/readyz"), Ok(200)) {
                return process;
            }
            assert!(Instant::now() < deadline, "authgate not ready after 30 s");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `p` quantile (0 to 1) of sorted samples; 0 when there are none.
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let Some(last) = sorted.len().checked_sub(1) else {
        return T::default();
    };
    sorted[((last as f64 * p).round() as usize).min(last)]
}

/// A sample's value from a gateway's `/metrics` (the line starting with
/// `name_labels ` exactly).
pub fn metric_value(admin: SocketAddr, name_labels: &str) -> Option<i64> {
    let mut c = Conn::open(admin).ok()?;
    c.send(b"GET /metrics HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n")
        .ok()?;
    let text = String::from_utf8_lossy(&c.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

/// The set-up every process benchmark starts with: its knobs from the
/// environment, a fresh working folder, a `redis-server` with a connection
/// and its version, and the upstream.
pub struct Bench {
    /// `AUTHGATE_BENCH_CLIENTS` (8): keep-alive client connections.
    pub clients: usize,
    /// `AUTHGATE_BENCH_SECS` (5): measured seconds per phase.
    pub secs: f64,
    /// `AUTHGATE_BENCH_ROUNDS` (2): interleaved rounds, where a bench has them.
    pub rounds: usize,
    pub measure: Duration,
    pub warmup: Duration,
    pub dir: std::path::PathBuf,
    pub redis: RedisServer,
    pub con: redis::Connection,
    pub redis_version: String,
    pub upstream: SocketAddr,
}

impl Bench {
    /// `(clients, secs, rounds, measure, warmup)`.
    pub fn knobs(&self) -> (usize, f64, usize, Duration, Duration) {
        (
            self.clients,
            self.secs,
            self.rounds,
            self.measure,
            self.warmup,
        )
    }

    /// Without `--bench` (`cargo test --benches` runs every bench binary
    /// that way) the process says how to run it and exits 0, before
    /// starting anything.
    pub fn start(name: &str) -> Bench {
        if !std::env::args().any(|a| a == "--bench") {
            println!("{name}: a load benchmark; run it with `cargo bench --bench {name}`");
            std::process::exit(0);
        }
        let secs = env_num("AUTHGATE_BENCH_SECS", 5.0);
        let dir =
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}_bench"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("bench dir");
        let redis = RedisServer::start(&dir);
        let mut con = redis.connect();
        let redis_version = info_field(&mut con, "server", "redis_version");
        Bench {
            clients: env_num("AUTHGATE_BENCH_CLIENTS", 8.0) as usize,
            secs,
            rounds: env_num("AUTHGATE_BENCH_ROUNDS", 2.0) as usize,
            measure: Duration::from_secs_f64(secs),
            warmup: Duration::from_secs(1),
            dir,
            redis,
            con,
            redis_version,
            upstream: start_upstream(),
        }
    }
}
