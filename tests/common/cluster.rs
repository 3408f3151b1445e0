//! Redis Cluster and Redis Sentinel on loopback, for the scale-out tests
//! (`tests/redis_cluster.rs`, `tests/redis_sentinel.rs`). Every process is a
//! child of the test, on free loopback ports (never the machine's 6379), in a
//! temp dir of its own, with no persistence, and is killed when its guard drops.
//!
//! Every node is a [`RedisServer`] from the one launcher, [`Redis`]
//! (`redis_server.rs`).
//! - [`RedisCluster`]: N masters (no replicas) joined by `redis-cli --cluster create`;
//!   a client that follows `MOVED`/`ASK`, `redis-cli -c`, key counts per master,
//!   slot ownership and a manual slot migration.
//! - [`SentinelSetup`]: a master, its replica and one sentinel monitoring them.
//! - [`tracking_clients`], [`subscribers`]: what the gateways hold open on a node.

use super::{redis_pipeline, redis_query, temp_dir, Redis, RedisServer, Resp};
use std::fs;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a cluster or a sentinel setup may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(20);

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
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` nodes (`--cluster-enabled yes --cluster-config-file
    /// <dir>/nodes-P.conf`, on ports P whose bus port P + 10000 is free too),
    /// creates the cluster, and waits until every node reports
    /// `cluster_state:ok` and knows all `n`.
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| Redis::new("cluster").cluster_node().start())
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
        self.nodes
            .iter()
            .take(k)
            .map(RedisServer::node_url)
            .collect()
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
    pub fn id(&self, node: &RedisServer) -> String {
        node.cmd(&["CLUSTER", "MYID"])
    }

    /// The node serving `slot`, as `CLUSTER SLOTS` on the first node says.
    pub fn slot_owner(&self, slot: u16) -> &RedisServer {
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
    pub fn owner(&self, key: &str) -> &RedisServer {
        self.slot_owner(self.slot(key))
    }

    pub fn node_on_port(&self, port: u16) -> &RedisServer {
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
    pub fn begin_migration(&self, slot: u16, to: &RedisServer) {
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
    pub fn end_migration(&self, slot: u16, to: &RedisServer) {
        let to_id = self.id(to);
        let s = slot.to_string();
        // The new owner first, then the rest (as redis-cli does).
        assert_eq!(to.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]), "OK");
        for n in self.nodes.iter().filter(|n| n.port != to.port) {
            assert_eq!(n.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]), "OK");
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
    pub sentinel: RedisServer,
    pub replica: RedisServer,
    pub master: RedisServer,
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
        let master = Redis::new("sentinel-master")
            .args(extra.iter().copied())
            .start();
        let replica = Redis::new("sentinel-replica")
            .replica_of(master.port)
            .args(extra.iter().copied())
            .start();
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
        let sentinel = Redis::new("sentinel")
            .sentinel(&format!(
                "sentinel monitor {name} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n",
                master.port
            ))
            .start();
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
        self.sentinel.node_url()
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
