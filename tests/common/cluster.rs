//! Redis Cluster and Redis Sentinel on loopback, for the scale-out tests
//! (`tests/redis_cluster.rs`, `tests/redis_sentinel.rs`). Every process is a
//! child of the test, on free loopback ports (never the machine's 6379), in a
//! temp dir of its own, with no persistence, and is killed when its guard drops.
//!
//! - [`RedisNode`]: one `redis-server` with any arguments (a cluster node, a
//!   replica, a sentinel).
//! - [`RedisCluster`]: N masters (no replicas) joined by `redis-cli --cluster create`;
//!   a client that follows `MOVED`/`ASK`, `redis-cli -c`, key counts per master,
//!   slot ownership and a manual slot migration.
//! - [`SentinelSetup`]: a master, its replica and one sentinel monitoring them.
//! - [`tracking_clients`], [`subscribers`]: what the gateways hold open on a node.

use super::{free_port, read_resp, redis_query, temp_dir, Resp};
use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a node, a cluster or a sentinel setup may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// one redis-server process

/// A `redis-server` child process. Killed (SIGKILL) on drop; its directory
/// (config, log, `nodes.conf`) is removed unless the test is panicking.
pub struct RedisNode {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl RedisNode {
    /// Starts `redis-server <args(port, dir)>` in a fresh temp dir (stdout and
    /// stderr to `redis.log` there) and waits until it answers `PING`. When
    /// the process exits during start-up (a port taken meanwhile), tries new ports.
    pub fn start(tag: &str, args: impl Fn(u16, &Path) -> Vec<String>) -> RedisNode {
        RedisNode::start_on(tag, free_port, args)
    }

    /// [`RedisNode::start`] on ports chosen by `pick`.
    pub fn start_on(
        tag: &str,
        pick: impl Fn() -> u16,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> RedisNode {
        let dir = temp_dir(tag);
        let mut last = String::new();
        for _ in 0..4 {
            let port = pick();
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("redis.log"))
                .unwrap();
            let child = Command::new("redis-server")
                .args(args(port, &dir))
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot run redis-server ({e}); scripts/prereqs.sh installs it")
                });
            let mut node = RedisNode {
                port,
                dir: dir.clone(),
                child: Some(child),
            };
            match node.wait_pong() {
                Ok(()) => return node,
                Err(e) => {
                    last = e;
                    node.kill();
                    // `node` drops here: keep the directory for the next attempt.
                    node.dir = PathBuf::new();
                }
            }
        }
        panic!("{tag}: redis-server did not start: {last}");
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

    /// A plain node: `--port P --bind 127.0.0.1 --save "" --appendonly no`, plus `extra`.
    pub fn plain(tag: &str, extra: &[&str]) -> RedisNode {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        RedisNode::start(tag, move |port, dir| {
            let mut a = base_args(port, dir);
            a.extend(extra.iter().cloned());
            a
        })
    }

    fn wait_pong(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "exited on port {} ({status}):\n{}",
                    self.port,
                    self.log()
                ));
            }
            // PONG, or NOAUTH from a node that requires AUTH: it answers
            match redis_query(&self.addr(), &["PING"]) {
                Ok(Resp::Simple(p)) if p == "PONG" => return Ok(()),
                Ok(Resp::Error(e)) if e.starts_with("NOAUTH") => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!("no PONG on port {}:\n{}", self.port, self.log()));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// What the process wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGKILL (a crash: no goodbye to replicas or clients), and waits until
    /// the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One command; panics when the node cannot be reached.
    pub fn query(&self, args: &[&str]) -> Resp {
        redis_query(&self.addr(), args)
            .unwrap_or_else(|e| panic!("redis {args:?} on {}: {e}", self.addr()))
    }

    /// One command, the reply as text ([`Resp::text`]; an error reply panics).
    pub fn cmd(&self, args: &[&str]) -> String {
        self.query(args).text()
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

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("redis files kept in {}", self.dir.display());
        }
    }
}

/// `--port P --bind 127.0.0.1 --save "" --appendonly no --daemonize no --dir <dir>`
fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Several commands over one connection to `addr` (e.g. `ASKING` then a command).
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

/// How many connections to `addr` have client tracking on (`t` in `CLIENT LIST` flags).
pub fn tracking_clients(addr: &str) -> usize {
    let Ok(list) = redis_query(addr, &["CLIENT", "LIST"]) else {
        return 0;
    };
    list.text()
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("flags="))
                .is_some_and(|f| f.contains('t'))
        })
        .count()
}

/// `PUBSUB NUMSUB channel` on `addr` (0 when unreachable).
pub fn subscribers(addr: &str, channel: &str) -> i64 {
    match redis_query(addr, &["PUBSUB", "NUMSUB", channel]) {
        Ok(Resp::Array(Some(items))) => match items.get(1) {
            Some(Resp::Int(n)) => *n,
            _ => 0,
        },
        _ => 0,
    }
}

/// A flat `[k1, v1, k2, v2, ...]` reply as pairs of text.
fn pairs(r: &Resp) -> Vec<(String, String)> {
    match r {
        Resp::Array(Some(items)) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.text(), v.text())),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------
// Redis Cluster

/// `n` cluster-enabled nodes, all masters, joined with
/// `redis-cli --cluster create ... --cluster-yes`.
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

impl RedisCluster {
    /// Starts `n` nodes (`--cluster-enabled yes --cluster-config-file
    /// <dir>/nodes-P.conf`, on ports P whose bus port P + 10000 is free too),
    /// creates the cluster, and waits until every node reports
    /// `cluster_state:ok` and knows all `n`.
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<RedisNode> = (0..n)
            .map(|_| {
                RedisNode::start_on("cluster", cluster_port, |port, dir| {
                    let mut a = base_args(port, dir);
                    a.extend([
                        "--cluster-enabled".to_string(),
                        "yes".to_string(),
                        "--cluster-config-file".to_string(),
                        dir.join(format!("nodes-{port}.conf"))
                            .to_string_lossy()
                            .into_owned(),
                    ]);
                    a
                })
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(node.addr());
        }
        create.arg("--cluster-yes");
        let out = run_with_timeout(create, START_DEADLINE);
        assert!(
            out.0,
            "redis-cli --cluster create failed:\n{}\n--- node logs:\n{}",
            out.1,
            cluster.logs()
        );
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ok = cluster.nodes.iter().all(|node| {
                let info = redis_query(&node.addr(), &["CLUSTER", "INFO"])
                    .map(|r| r.text())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
                    && info.contains("cluster_slots_assigned:16384")
            });
            if ok {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ok after {START_DEADLINE:?}:\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:P` of the first `k` nodes (seed nodes for the gateway).
    pub fn seed_urls(&self, k: usize) -> Vec<String> {
        self.nodes.iter().take(k).map(RedisNode::url).collect()
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}:\n{}", n.addr(), n.log()))
            .collect()
    }

    /// `CLUSTER KEYSLOT key`.
    pub fn slot(&self, key: &str) -> u16 {
        self.nodes[0]
            .cmd(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap()
    }

    /// `CLUSTER MYID` of a node.
    pub fn id(&self, node: &RedisNode) -> String {
        node.cmd(&["CLUSTER", "MYID"])
    }

    /// The node serving `slot`, as `CLUSTER SLOTS` on the first node says.
    pub fn slot_owner(&self, slot: u16) -> &RedisNode {
        let slots = self.nodes[0].query(&["CLUSTER", "SLOTS"]);
        let Resp::Array(Some(ranges)) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for range in ranges {
            let Resp::Array(Some(f)) = range else {
                continue;
            };
            let (Some(Resp::Int(lo)), Some(Resp::Int(hi)), Some(Resp::Array(Some(master)))) =
                (f.first(), f.get(1), f.get(2))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot)) {
                let Some(Resp::Int(port)) = master.get(1) else {
                    panic!("CLUSTER SLOTS entry {master:?}")
                };
                return self.node_on_port(*port as u16);
            }
        }
        panic!("no node serves slot {slot}")
    }

    /// The master holding `key`.
    pub fn owner(&self, key: &str) -> &RedisNode {
        self.slot_owner(self.slot(key))
    }

    pub fn node_on_port(&self, port: u16) -> &RedisNode {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// One command sent to the first node, following `MOVED` and `ASK`
    /// redirections (at most 5) as a cluster client does.
    pub fn query(&self, args: &[&str]) -> Resp {
        let mut addr = self.nodes[0].addr();
        let mut asking = false;
        for _ in 0..6 {
            let reply = if asking {
                redis_pipeline(&addr, &[&["ASKING"], args]).map(|mut r| r.pop().unwrap())
            } else {
                redis_query(&addr, args)
            }
            .unwrap_or_else(|e| panic!("redis {args:?} on {addr}: {e}"));
            match &reply {
                Resp::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    addr = e.split_whitespace().nth(2).unwrap().to_string();
                }
                _ => return reply,
            }
        }
        panic!("redis {args:?}: too many redirections")
    }

    /// [`RedisCluster::query`], the reply as text (an error reply panics).
    pub fn cmd(&self, args: &[&str]) -> String {
        self.query(args).text()
    }

    /// `redis-cli -c -h 127.0.0.1 -p <first node> <args>` (cluster mode: follows
    /// redirections); its stdout, trimmed. Panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut c = Command::new("redis-cli");
        c.args([
            "-c",
            "-h",
            "127.0.0.1",
            "-p",
            &self.nodes[0].port.to_string(),
        ])
        .args(args);
        let (ok, out) = run_with_timeout(c, Duration::from_secs(10));
        assert!(ok, "redis-cli -c {args:?} failed: {out}");
        out.trim().to_string()
    }

    /// (address, `DBSIZE`) of every node, in node order.
    pub fn dbsizes(&self) -> Vec<(String, i64)> {
        self.nodes
            .iter()
            .map(|n| (n.addr(), n.cmd(&["DBSIZE"]).parse().unwrap()))
            .collect()
    }

    /// Moves `slot` from its master to `to` the way `redis-cli --cluster reshard`
    /// does, in two steps so a test can look in between: [`begin_migration`]
    /// (IMPORTING / MIGRATING, then `MIGRATE` of every key: from here on the
    /// old owner answers `ASK` for them), then [`end_migration`] (`SETSLOT NODE`
    /// on every node: from then on `MOVED`).
    ///
    /// [`begin_migration`]: RedisCluster::begin_migration
    /// [`end_migration`]: RedisCluster::end_migration
    pub fn begin_migration(&self, slot: u16, to: &RedisNode) {
        let from = self.slot_owner(slot);
        assert_ne!(
            from.port,
            to.port,
            "slot {slot} is already on {}",
            to.addr()
        );
        let (from_id, to_id) = (self.id(from), self.id(to));
        let s = slot.to_string();
        assert_eq!(
            to.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
            "OK"
        );
        assert_eq!(
            from.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
            "OK"
        );
        let keys = from.query(&["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
        let keys: Vec<String> = match keys {
            Resp::Array(Some(k)) => k.iter().map(Resp::text).collect(),
            other => panic!("GETKEYSINSLOT: {other:?}"),
        };
        if !keys.is_empty() {
            let port = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            assert_eq!(from.cmd(&args), "OK");
        }
    }

    /// See [`RedisCluster::begin_migration`].
    pub fn end_migration(&self, slot: u16, to: &RedisNode) {
        let to_id = self.id(to);
        let s = slot.to_string();
        // The new owner first, then the rest (as redis-cli does).
        assert_eq!(to.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]), "OK");
        for n in self.nodes.iter().filter(|n| n.port != to.port) {
            assert_eq!(n.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]), "OK");
        }
    }
}

/// A free loopback port P whose cluster bus port P + 10000 is free too (the
/// default bus offset; `--cluster-port` would need Redis 7).
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `cmd` to completion (at most `limit`): (success, stdout + stderr).
fn run_with_timeout(mut cmd: Command, limit: Duration) -> (bool, String) {
    let dir = temp_dir("cli");
    let out_path = dir.join("out");
    let out = fs::File::create(&out_path).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = fs::read_to_string(&out_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    match status {
        Some(st) => (st.success(), text),
        None => (false, format!("timed out after {limit:?}: {text}")),
    }
}

// ---------------------------------------------------------------------------
// Redis Sentinel

/// A master, one replica of it, and one sentinel monitoring the master as
/// `name` with quorum 1, `down-after-milliseconds 1000` and
/// `failover-timeout 5000`. Drops the sentinel first (no failover while the
/// rest goes down).
pub struct SentinelSetup {
    pub sentinel: RedisNode,
    pub replica: RedisNode,
    pub master: RedisNode,
    pub name: String,
}

impl SentinelSetup {
    /// Starts all three and waits until the replica is in sync and the
    /// sentinel knows both the master and the replica.
    pub fn start(name: &str) -> SentinelSetup {
        SentinelSetup::start_with(name, &[])
    }

    /// [`SentinelSetup::start`] with `extra` arguments for the master and
    /// the replica (e.g. ACL users; the `default` user must keep `PING`,
    /// `INFO`, replication and what Sentinel sends).
    pub fn start_with(name: &str, extra: &[&str]) -> SentinelSetup {
        let master = RedisNode::plain("sentinel-master", extra);
        let master_port = master.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &master_port];
        replica_args.extend_from_slice(extra);
        let replica = RedisNode::plain("sentinel-replica", &replica_args);
        let deadline = Instant::now() + START_DEADLINE;
        while replica
            .info_field("replication", "master_link_status")
            .as_deref()
            != Some("up")
        {
            assert!(
                Instant::now() < deadline,
                "replica not in sync:\n{}",
                replica.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        let name_owned = name.to_string();
        let sentinel = RedisNode::start("sentinel", move |port, dir| {
            let conf = dir.join("sentinel.conf");
            fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                     sentinel monitor {name_owned} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {name_owned} 1000\n\
                     sentinel failover-timeout {name_owned} 5000\n",
                    dir.display()
                ),
            )
            .unwrap();
            vec![conf.to_string_lossy().into_owned(), "--sentinel".into()]
        });
        let setup = SentinelSetup {
            sentinel,
            replica,
            master,
            name: name.to_string(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let master_ok = setup.master_addr().as_deref() == Some(setup.master.addr().as_str());
            if master_ok && setup.sentinel_sees_replica() {
                return setup;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel did not pick up master and replica:\n{}",
                setup.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn sentinel_sees_replica(&self) -> bool {
        let Ok(Resp::Array(Some(replicas))) =
            redis_query(&self.sentinel.addr(), &["SENTINEL", "REPLICAS", &self.name])
        else {
            return false;
        };
        let want = self.replica.port.to_string();
        replicas.iter().any(|r| {
            let p = pairs(r);
            let get = |k: &str| p.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
            get("port") == Some(want.as_str()) && get("flags") == Some("slave")
        })
    }

    /// `redis://127.0.0.1:S` of the sentinel.
    pub fn sentinel_url(&self) -> String {
        self.sentinel.url()
    }

    /// `SENTINEL get-master-addr-by-name` as `ip:port`.
    pub fn master_addr(&self) -> Option<String> {
        match redis_query(
            &self.sentinel.addr(),
            &["SENTINEL", "get-master-addr-by-name", &self.name],
        )
        .ok()?
        {
            Resp::Array(Some(a)) if a.len() == 2 => {
                Some(format!("{}:{}", a[0].text(), a[1].text()))
            }
            _ => None,
        }
    }

    /// All three logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- master {}:\n{}\n--- replica {}:\n{}\n--- sentinel {}:\n{}",
            self.master.addr(),
            self.master.log(),
            self.replica.addr(),
            self.replica.log(),
            self.sentinel.addr(),
            self.sentinel.log()
        )
    }
}
