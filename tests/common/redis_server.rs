//! The one `redis-server` launcher of the integration tests and the process
//! benchmarks, and a minimal RESP2 client to talk to it.
//!
//! [`Redis`] describes a server (extra arguments for ACL users, TLS, a
//! cluster node, a replica, keyspace notifications; a config file for a
//! sentinel) and [`Redis::start`] runs it: on a free loopback port (never the
//! machine's 6379), in a temp dir of its own with `redis.log` (stdout and
//! stderr) there, with no persistence, waiting until it answers `PING`. The
//! [`RedisServer`] it returns is killed (SIGKILL) on drop; it can be killed,
//! paused (SIGSTOP), resumed and restarted empty on the same port.
//!
//! Only `std`: `benches/harness` includes this file with `#[path]`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer its first `PING`.
const START_DEADLINE: Duration = Duration::from_secs(20);

fn any_free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A free loopback port P whose cluster bus port P + 10000 is free too (the
/// default bus offset; `--cluster-port` would need Redis 7).
pub fn cluster_port() -> u16 {
    loop {
        let port = any_free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A fresh, unique directory under the system temp dir.
pub fn fresh_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "authgate-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

// ---------------------------------------------------------------------------
// the builder

/// What to start: see [`Redis::start`]. `{port}` and `{dir}` in arguments and
/// config-file lines are replaced at every start (a restart keeps the port).
#[derive(Clone)]
pub struct Redis {
    tag: String,
    args: Vec<String>,
    config_file: Option<(String, String)>,
    defaults: bool,
    pick: fn() -> u16,
    dir: Option<PathBuf>,
}

impl Redis {
    /// A plain server: `--port P --bind 127.0.0.1 --save "" --appendonly no
    /// --daemonize no --dir <dir>`. `tag` names its temp dir.
    pub fn new(tag: &str) -> Redis {
        Redis {
            tag: tag.to_string(),
            args: Vec::new(),
            config_file: None,
            defaults: true,
            pick: any_free_port,
            dir: None,
        }
    }

    /// One more command-line argument (after the defaults).
    pub fn arg(mut self, a: impl Into<String>) -> Redis {
        self.args.push(a.into());
        self
    }

    /// More command-line arguments (after the defaults).
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Redis {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// A config file `<dir>/<name>` with `text`, given as the first argument
    /// (before the defaults and [`Redis::args`]).
    pub fn config_file(mut self, name: &str, text: &str) -> Redis {
        self.config_file = Some((name.to_string(), text.to_string()));
        self
    }

    /// Without the default arguments: the config file and the arguments say
    /// everything (a sentinel).
    pub fn no_defaults(mut self) -> Redis {
        self.defaults = false;
        self
    }

    /// Ports from `pick` instead of any free one.
    pub fn ports(mut self, pick: fn() -> u16) -> Redis {
        self.pick = pick;
        self
    }

    /// Runs in `dir` (which is kept on drop) instead of a fresh temp dir.
    pub fn dir(mut self, dir: &Path) -> Redis {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// `--requirepass <password>`.
    pub fn requirepass(self, password: &str) -> Redis {
        self.args(["--requirepass", password])
    }

    /// `--user <rules...>`, e.g. `["gate", "on", ">pw", "~*", "&*", "+@all"]`.
    pub fn acl_user(self, rules: &[&str]) -> Redis {
        self.arg("--user").args(rules.iter().copied())
    }

    /// `--notify-keyspace-events <flags>`.
    pub fn keyspace_events(self, flags: &str) -> Redis {
        self.args(["--notify-keyspace-events", flags])
    }

    /// `--replicaof 127.0.0.1 <port>`.
    pub fn replica_of(self, master_port: u16) -> Redis {
        self.args([
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ])
    }

    /// A cluster node: `--cluster-enabled yes --cluster-config-file
    /// <dir>/nodes-P.conf`, on a port P whose bus port P + 10000 is free too.
    pub fn cluster_node(self) -> Redis {
        self.ports(cluster_port).args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "{dir}/nodes-{port}.conf",
        ])
    }

    /// A sentinel: `<dir>/sentinel.conf` (port, bind, dir and `conf` lines,
    /// which may use `{port}` and `{dir}`) and `--sentinel`.
    pub fn sentinel(self, conf: &str) -> Redis {
        self.config_file(
            "sentinel.conf",
            &format!("port {{port}}\nbind 127.0.0.1\ndaemonize no\ndir {{dir}}\n{conf}"),
        )
        .no_defaults()
        .arg("--sentinel")
    }

    /// Starts it and waits until it answers `PING` (`PONG`, or `NOAUTH` from a
    /// server that requires `AUTH`). When it exits during start-up (a port
    /// taken meanwhile), tries new ports; panics with its log after 4 tries.
    pub fn start(self) -> RedisServer {
        let mut server = self.not_started();
        let mut last = String::new();
        for attempt in 0..4 {
            if attempt > 0 {
                server.port = (server.spec.pick)();
            }
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    eprintln!("redis-server start failed, retrying: {e}");
                    last = e;
                }
            }
        }
        panic!("{}: redis-server did not start: {last}", server.spec.tag);
    }

    /// A port and a directory for a server that is not running yet
    /// ([`RedisServer::restart`] starts it): for a gateway that must start
    /// while Redis is down.
    pub fn not_started(self) -> RedisServer {
        let (dir, owns_dir) = match &self.dir {
            Some(d) => (d.clone(), false),
            None => (fresh_dir(&self.tag), true),
        };
        RedisServer {
            port: (self.pick)(),
            dir,
            owns_dir,
            spec: self,
            child: None,
        }
    }
}

// ---------------------------------------------------------------------------
// the process

/// A `redis-server` child process. Killed (SIGKILL) on drop; its own temp dir
/// (config, `redis.log`, `nodes-P.conf`) is removed unless the test is panicking.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    owns_dir: bool,
    spec: Redis,
    child: Option<Child>,
}

impl RedisServer {
    /// A plain server, started: `Redis::new("redis").start()`.
    pub fn start() -> RedisServer {
        Redis::new("redis").start()
    }

    /// A plain server, not started yet: `Redis::new("redis").not_started()`.
    pub fn not_started() -> RedisServer {
        Redis::new("redis").not_started()
    }

    fn expand(&self, s: &str) -> String {
        s.replace("{port}", &self.port.to_string())
            .replace("{dir}", self.dir.to_str().unwrap())
    }

    /// The command line for the current port.
    fn command_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((name, text)) = &self.spec.config_file {
            let path = self.dir.join(name);
            fs::write(&path, self.expand(text)).unwrap();
            args.push(path.to_string_lossy().into_owned());
        }
        if self.spec.defaults {
            let port = self.port.to_string();
            let dir = self.dir.to_string_lossy();
            args.extend(
                [
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    &dir,
                ]
                .map(String::from),
            );
        }
        args.extend(self.spec.args.iter().map(|a| self.expand(a)));
        args
    }

    /// Starts the process on `self.port` and waits for its first answer.
    fn spawn(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new("redis-server")
            .args(self.command_args())
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); scripts/prereqs.sh installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "exited on port {} ({status}):\n{}",
                    self.port,
                    self.log()
                ));
            }
            match redis_query(&self.addr(), &["PING"]) {
                Ok(Resp::Simple(p)) if p == "PONG" => return Ok(()),
                Ok(Resp::Error(e)) if e.starts_with("NOAUTH") => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("no PONG on port {}:\n{}", self.port, self.log()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis://127.0.0.1:PORT` (a cluster seed, a sentinel).
    pub fn node_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What the process wrote so far (every start appends).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL (a crash: no goodbye to replicas or clients), and waits until
    /// the process is gone (the port is closed after).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server not running");
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {pid} failed");
    }

    /// Kills (if running) and starts a fresh, empty server on the same port
    /// and with the same arguments (retrying for 10 s while the port is busy).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(msg) if Instant::now() < deadline => {
                    eprintln!("redis-server restart failed, retrying: {msg}");
                    thread::sleep(Duration::from_millis(200));
                }
                Err(msg) => panic!("{msg}"),
            }
        }
    }

    /// One command; panics when the server cannot be reached.
    pub fn query(&self, args: &[&str]) -> Resp {
        redis_query(&self.addr(), args)
            .unwrap_or_else(|e| panic!("redis {args:?} on {}: {e}", self.addr()))
    }

    /// One command, the reply as text (see [`Resp::text`]; an error reply panics).
    pub fn cmd(&self, args: &[&str]) -> String {
        self.query(args).text()
    }

    /// Several commands over one connection (e.g. `SELECT` then a command),
    /// the replies as text (an error reply panics).
    pub fn pipeline(&self, cmds: &[&[&str]]) -> Vec<String> {
        redis_pipeline(&self.addr(), cmds)
            .unwrap_or_else(|e| panic!("redis {cmds:?} on {}: {e}", self.addr()))
            .iter()
            .map(Resp::text)
            .collect()
    }

    /// `args` then `args2` on one connection (e.g. `AUTH` then a command):
    /// the reply to `args2`; the first must not be an error.
    pub fn query_after(&self, args: &[&str], args2: &[&str]) -> Resp {
        let mut replies = redis_pipeline(&self.addr(), &[args, args2])
            .unwrap_or_else(|e| panic!("redis {args2:?} on {}: {e}", self.addr()));
        let second = replies.pop().unwrap_or(Resp::Array(None));
        if let Some(Resp::Error(e)) = replies.pop() {
            panic!("redis {args:?} on {}: {e}", self.addr());
        }
        second
    }

    /// `field:value` of `INFO <section>`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info = redis_query(&self.addr(), &["INFO", section]).ok()?.text();
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()).map(str::to_string))
    }

    /// `calls` of `cmdstat_<name>` in `INFO commandstats` (0 when never called).
    pub fn command_calls(&self, name: &str) -> u64 {
        self.info_field(
            "commandstats",
            &format!("cmdstat_{}", name.to_ascii_lowercase()),
        )
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !self.owns_dir {
            return;
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("redis files kept in {}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------------------
// RESP2

/// A reply of the Redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text: bulk/simple strings as is, integers printed, nil as "",
    /// arrays one element a line; an error reply panics.
    pub fn text(&self) -> String {
        match self {
            Resp::Simple(s) => s.clone(),
            Resp::Error(e) => panic!("redis error reply: {e}"),
            Resp::Int(n) => n.to_string(),
            Resp::Bulk(b) => b
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
            Resp::Array(a) => a
                .iter()
                .flatten()
                .map(Resp::text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn resp_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let line = resp_line(r)?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad RESP line {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" => match num()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut b = vec![0; n as usize + 2];
                r.read_exact(&mut b)?;
                b.truncate(n as usize);
                Resp::Bulk(Some(b))
            }
        },
        "*" => match num()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some(
                (0..n).map(|_| read_resp(r)).collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(bad(format!("bad RESP line {line:?}"))),
    })
}

/// One command over a fresh connection to `addr` (5 s timeouts).
pub fn redis_query(addr: &str, args: &[&str]) -> std::io::Result<Resp> {
    redis_pipeline(addr, &[args]).map(|mut r| r.pop().unwrap())
}

/// Several commands over one fresh connection to `addr` (e.g. `AUTH` or
/// `ASKING` then a command), 5 s timeouts: every reply, errors included.
pub fn redis_pipeline(addr: &str, cmds: &[&[&str]]) -> std::io::Result<Vec<Resp>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    for args in cmds {
        req.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
    }
    (&stream).write_all(&req)?;
    let mut reader = BufReader::new(&stream);
    cmds.iter().map(|_| read_resp(&mut reader)).collect()
}
