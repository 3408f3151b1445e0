//! The Redis store. Commands go over one multiplexed `ConnectionManager`
//! (automatic reconnection), created lazily inside the runtime that first
//! needs it (pingora builds its runtimes in `run()`, so nothing that spawns
//! tasks may be created before). Invalidation of cached sessions comes from
//! Redis itself: [`RedisStore::watch_invalidations`] keeps a dedicated RESP3
//! connection with `CLIENT TRACKING ON BCAST PREFIX <key_prefix>`, which works
//! on a Redis in its default configuration (no `notify-keyspace-events`).

use super::{SessionRecord, Store, StoreError};
use crate::ratelimit::{Cell, Decision};
use crate::revocation::{parse_sub_field, sub_field, Revocation};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

/// Per-command timeout: a paused or unreachable Redis costs a request at
/// most this long before the route's `on_error` decides.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Connection attempt timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Sorted set of revoked jtis, scored by `exp` (trimmed on every write, so
/// entries vanish at their `exp` without a sweeper). The `{revoked}` hash
/// tag keeps both revocation keys in one cluster slot (one atomic write).
pub const REVOKED_JTIS: &str = "authgate:{revoked}:jti";
/// Hash of subject cutoffs: field `<issuer or *>\n<sub>`, value unix seconds.
pub const REVOKED_SUBS: &str = "authgate:{revoked}:sub";
/// The pub/sub channel revocations are announced on (JSON [`Revocation`]),
/// followed by `:<db>`: pub/sub is server-wide, databases are not. Its
/// `{revoked}` tag routes the PUBLISH to the slot of the revocation keys,
/// so write and announcement are one atomic step on a cluster too.
pub const REVOCATION_CHANNEL: &str = "authgate:{revoked}:events";

/// How the data nodes (the single node, every cluster node, the master
/// Sentinel names) are reached beyond what their URLs say: AUTH credentials
/// kept out of the config file (`password_env` / `password_file`), and the
/// CA that verifies `rediss://` servers (default: the system's roots).
/// Credentials matter most for Sentinel and cluster nodes, whose addresses
/// are discovered at run time and so carry no userinfo of their own.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM roots for `rediss://`.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .finish()
    }
}

impl Access {
    /// `url` with the configured credentials (they replace the URL's own).
    pub fn data_url(&self, url: &str) -> String {
        let Some(password) = &self.password else {
            return url.to_string();
        };
        match url::Url::parse(url) {
            Ok(mut u) => {
                let named = u.set_username(self.username.as_deref().unwrap_or(""));
                let set = u.set_password(Some(password));
                if named.is_ok() && set.is_ok() {
                    u.to_string()
                } else {
                    url.to_string()
                }
            }
            Err(_) => url.to_string(),
        }
    }

    /// A client for `url`; `rediss://` is verified against the configured CA.
    pub fn client(&self, url: &str) -> redis::RedisResult<Client> {
        match &self.ca_pem {
            Some(ca) if is_tls(url) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(url),
        }
    }
}

/// Whether a Redis URL asks for TLS.
pub fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// `scheme://host:port` for a discovered node, with the scheme (TLS or
/// not) of the URL it was learned from.
fn node_url(like: &str, host: &str, port: u16) -> String {
    let scheme = if is_tls(like) { "rediss" } else { "redis" };
    if host.contains(':') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Where the Redis store lives: one node, a cluster (seed nodes), or the
/// master that Sentinel names (followed across failovers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Single(String),
    Cluster(Vec<String>),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// A command connection of any topology (all auto-reconnecting).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis-backed store.
pub struct RedisStore {
    topology: Topology,
    access: Access,
    /// The command connection; cleared to re-resolve Sentinel's master.
    conn: arc_swap::ArcSwapOption<Conn>,
    connect_lock: tokio::sync::Mutex<()>,
    /// The tracking connection while it is up: rolling touches go over it,
    /// and with `NOLOOP` its own writes do not evict the session it just
    /// refreshed from every cache.
    touch_conn: std::sync::Mutex<Option<MultiplexedConnection>>,
    /// This database's revocation channel.
    pub channel: String,
}

/// A RESP3 connection to `url` whose pushes go to `tx`.
async fn connect_push(
    access: &Access,
    url: &str,
    tx: tokio::sync::mpsc::UnboundedSender<PushInfo>,
) -> Result<MultiplexedConnection, StoreError> {
    let client = access.client(&with_resp3(url)).map_err(unavailable)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_push_sender(tx);
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(unavailable)
}

/// Asks one sentinel for the master's address, as a URL of the sentinel's
/// scheme (`rediss://` sentinels front TLS masters) without credentials.
async fn ask_sentinel(access: &Access, sentinel: &str, master: &str) -> Result<String, StoreError> {
    let client = access.client(sentinel).map_err(unavailable)?;
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map_err(unavailable)?;
    let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(unavailable)?;
    let (host, port) = addr
        .ok_or_else(|| StoreError::Unavailable(format!("sentinel knows no master `{master}`")))?;
    Ok(format!("{}/0", node_url(sentinel, &host, port)))
}

/// The database number of a redis:// URL (`/N` path), 0 by default.
fn db_of(url: &str) -> i64 {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.path().trim_start_matches('/').parse().ok())
        .unwrap_or(0)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn with_resp3(url: &str) -> String {
    if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

impl RedisStore {
    /// A store of any topology; validates URLs, connects on first use.
    pub fn with_topology(topology: Topology, access: Access) -> Result<RedisStore, StoreError> {
        let db = match &topology {
            Topology::Single(url) => {
                access.client(url).map_err(unavailable)?;
                db_of(url)
            }
            Topology::Cluster(urls) => {
                for u in urls {
                    access.client(u).map_err(unavailable)?;
                }
                0
            }
            Topology::Sentinel { sentinels, .. } => {
                for u in sentinels {
                    access.client(u).map_err(unavailable)?;
                }
                0
            }
        };
        Ok(RedisStore {
            topology,
            access,
            conn: arc_swap::ArcSwapOption::empty(),
            connect_lock: tokio::sync::Mutex::new(()),
            touch_conn: std::sync::Mutex::new(None),
            channel: format!("{REVOCATION_CHANNEL}:{db}"),
        })
    }

    /// The URL of the node that takes writes now: the single node, the
    /// master Sentinel names, or (cluster) the first seed that answers.
    pub async fn primary_url(&self) -> Result<String, StoreError> {
        match &self.topology {
            Topology::Single(url) => Ok(self.access.data_url(url)),
            Topology::Cluster(urls) => urls
                .first()
                .map(|u| self.access.data_url(u))
                .ok_or_else(|| StoreError::Unavailable("no cluster seed".into())),
            Topology::Sentinel { sentinels, master } => {
                let mut last = String::from("no sentinel configured");
                for s in sentinels {
                    match ask_sentinel(&self.access, s, master).await {
                        Ok(url) => return Ok(self.access.data_url(&url)),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(StoreError::Unavailable(format!(
                    "no sentinel named master `{master}`: {last}"
                )))
            }
        }
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let _one = self.connect_lock.lock().await;
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let c = match &self.topology {
            Topology::Cluster(urls) => {
                let seeds: Vec<String> = urls.iter().map(|u| self.access.data_url(u)).collect();
                let mut builder = redis::cluster::ClusterClient::builder(seeds)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2);
                if let Some(p) = &self.access.password {
                    builder = builder.password(p);
                    if let Some(u) = &self.access.username {
                        builder = builder.username(u);
                    }
                }
                if let (Some(ca), true) = (&self.access.ca_pem, urls.iter().any(|u| is_tls(u))) {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
                let client = builder.build().map_err(unavailable)?;
                Conn::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            _ => {
                let url = self.primary_url().await?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let client = self.access.client(&url).map_err(unavailable)?;
                Conn::Single(
                    client
                        .get_connection_manager_with_config(cfg)
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        self.conn.store(Some(std::sync::Arc::new(c.clone())));
        Ok(c)
    }

    /// A command failed: with Sentinel, the master may have moved (a dead
    /// node, or a demoted one answering READONLY), so ask again next time.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if matches!(self.topology, Topology::Sentinel { .. }) {
            self.conn.store(None);
        }
        unavailable(e)
    }

    /// A new RESP3 connection to `url` whose push messages (invalidations,
    /// pub/sub messages, disconnection) arrive on the returned channel.
    pub async fn push_connection_to(
        &self,
        url: &str,
    ) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>), StoreError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Ok((connect_push(&self.access, url, tx).await?, rx))
    }

    /// A push connection to the primary (any node of a cluster: pub/sub
    /// messages reach every node).
    pub async fn push_connection(
        &self,
    ) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>), StoreError> {
        match &self.topology {
            Topology::Cluster(urls) => {
                let mut last = StoreError::Unavailable("no cluster seed".into());
                for u in urls {
                    match self.push_connection_to(&self.access.data_url(u)).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            _ => self.push_connection_to(&self.primary_url().await?).await,
        }
    }

    /// The masters of a cluster, as URLs of the seeds' scheme with the
    /// configured credentials (each tracks its own keys).
    async fn cluster_masters(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut masters: Vec<String> = nodes
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let addr = f.get(1)?.split('@').next()?;
                let flags = f.get(2)?;
                let (host, port) = addr.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                (flags.split(',').any(|x| x == "master") && !flags.contains("fail")).then(|| {
                    let like = match &self.topology {
                        Topology::Cluster(urls) => urls.first().map_or("", String::as_str),
                        _ => "",
                    };
                    self.access.data_url(&node_url(like, host, port))
                })
            })
            .collect();
        masters.sort();
        Ok(masters)
    }

    /// Keeps a tracking connection open until `shutdown`: every key under
    /// `prefix` that is written, deleted or expires in Redis is passed to
    /// `invalidate` (`None` = forget everything: a flush, or a lost
    /// connection during which invalidations may have been missed).
    /// `tracking(true)` is called once invalidations flow, `tracking(false)`
    /// whenever they may not.
    pub async fn watch_invalidations(
        &self,
        prefix: &str,
        invalidate: &(dyn Fn(Option<&[u8]>) + Send + Sync),
        tracking: &(dyn Fn(bool) + Send + Sync),
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tracking(false);
            invalidate(None);
            let result = self
                .track_once(prefix, invalidate, tracking, &mut shutdown)
                .await;
            if let Ok(mut slot) = self.touch_conn.lock() {
                *slot = None;
            }
            if let Err(e) = result {
                tracing::warn!(error = %e, "session invalidation channel lost; reconnecting");
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn track_once(
        &self,
        prefix: &str,
        invalidate: &(dyn Fn(Option<&[u8]>) + Send + Sync),
        tracking: &(dyn Fn(bool) + Send + Sync),
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        // Each node tracks only its own keys: one connection per master,
        // all pushing into one channel.
        let urls = match &self.topology {
            Topology::Cluster(_) => self.cluster_masters().await?,
            _ => vec![self.primary_url().await?],
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut conns = Vec::with_capacity(urls.len());
        for url in &urls {
            let mut conn = connect_push(&self.access, url, tx.clone()).await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("BCAST")
                .arg("PREFIX")
                .arg(prefix)
                .arg("NOLOOP")
                .exec_async(&mut conn)
                .await
                .map_err(unavailable)?;
            conns.push(conn);
        }
        drop(tx);
        if !matches!(self.topology, Topology::Cluster(_)) {
            if let (Ok(mut slot), Some(c)) = (self.touch_conn.lock(), conns.first()) {
                *slot = Some(c.clone());
            }
        }
        let mut topology_check = tokio::time::interval(Duration::from_secs(5));
        topology_check.tick().await;
        tracking(true);
        tracing::info!(prefix, "session invalidation tracking on");
        let mut ping = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = ping.tick() => {
                    // A silent network partition shows up here, not as a push.
                    for conn in conns.iter_mut() {
                        redis::cmd("PING").exec_async(conn).await.map_err(unavailable)?;
                    }
                }
                _ = topology_check.tick(), if matches!(self.topology, Topology::Cluster(_)) => {
                    if self.cluster_masters().await? != urls {
                        return Err(StoreError::Unavailable("cluster masters changed".into()));
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { return Err(StoreError::Unavailable("push channel closed".into())) };
                    match msg.kind {
                        PushKind::Invalidate => match msg.data.first() {
                            Some(Value::Array(keys)) => {
                                for k in keys {
                                    if let Value::BulkString(b) = k {
                                        invalidate(Some(b));
                                    }
                                }
                            }
                            _ => invalidate(None),
                        },
                        PushKind::Disconnection => {
                            return Err(StoreError::Unavailable("disconnected".into()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get_session(&self, key: &str) -> Result<Option<SessionRecord>, StoreError> {
        let mut conn = self.conn().await?;
        // One command (a script), not a pipeline: a cluster slot being
        // migrated answers ASK for one command at a time.
        let (json, pttl): (Option<String>, i64) = SESSION_GET
            .key(key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(json.map(|json| SessionRecord {
            json,
            ttl_ms: u64::try_from(pttl).ok(),
        }))
    }

    async fn touch_session(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError> {
        let tracking_conn = self.touch_conn.lock().ok().and_then(|c| c.clone());
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(key).arg(ttl_ms);
        match tracking_conn {
            Some(mut c) => cmd.exec_async(&mut c).await.map_err(|e| self.failed(e)),
            None => {
                let mut conn = self.conn().await?;
                cmd.exec_async(&mut conn).await.map_err(|e| self.failed(e))
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .exec_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn revoke(&self, r: &Revocation, session_key: Option<&str>) -> Result<(), StoreError> {
        let msg = serde_json::to_string(r).map_err(unavailable)?;
        let mut conn = self.conn().await?;
        let (kind, member, value) = match r {
            Revocation::Jti { jti, exp } => ("jti", jti.clone(), *exp),
            Revocation::Sub { sub, iss, before } => {
                ("sub", sub_field(sub, iss.as_deref()), *before)
            }
            Revocation::Session { .. } => {
                // The session key lives in its own cluster slot: delete it
                // first (client tracking tells every cache), then announce.
                if let Some(k) = session_key {
                    redis::cmd("DEL")
                        .arg(k)
                        .exec_async(&mut conn)
                        .await
                        .map_err(|e| self.failed(e))?;
                }
                return redis::cmd("PUBLISH")
                    .arg(&self.channel)
                    .arg(msg)
                    .exec_async(&mut conn)
                    .await
                    .map_err(|e| self.failed(e));
            }
        };
        REVOKE
            .key(if kind == "jti" {
                REVOKED_JTIS
            } else {
                REVOKED_SUBS
            })
            .arg(kind)
            .arg(member)
            .arg(value)
            .arg(crate::clock::now_unix())
            .arg(&self.channel)
            .arg(msg)
            .invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn load_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let mut conn = self.conn().await?;
        // Two single-key reads (each follows a reshard's ASK/MOVED); the
        // mirror subscribes before it reads, so nothing falls in between.
        let jtis: Vec<(String, String)> = redis::cmd("ZRANGEBYSCORE")
            .arg(REVOKED_JTIS)
            .arg(format!("({now}"))
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let subs: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(REVOKED_SUBS)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let mut out = Vec::with_capacity(jtis.len() + subs.len());
        // One unreadable entry (written by hand, or by another tool) must
        // not stop the rest from loading: skip it, loudly.
        let num = |s: &str| {
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        };
        for (jti, exp) in jtis {
            match num(&exp) {
                Some(exp) => out.push(Revocation::Jti { jti, exp }),
                None => tracing::warn!(
                    key = REVOKED_JTIS,
                    "skipping a revoked jti with an unreadable exp"
                ),
            }
        }
        for (field, before) in subs {
            match (parse_sub_field(&field), num(&before)) {
                (Some((sub, iss)), Some(before)) => out.push(Revocation::Sub { sub, iss, before }),
                _ => tracing::warn!(key = REVOKED_SUBS, "skipping an unreadable subject cutoff"),
            }
        }
        Ok(out)
    }

    async fn rate_check(&self, cells: &[Cell]) -> Result<Decision, StoreError> {
        let mut inv = RATE_CHECK.prepare_invoke();
        for c in cells {
            inv.key(&c.key);
        }
        for c in cells {
            inv.arg(c.emission_us)
                .arg(c.window_us)
                .arg(u8::from(c.consume));
        }
        let mut conn = self.conn().await?;
        let out: Vec<u64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.failed(e))?;
        let (allowed, retry) = match (out.first(), out.get(1)) {
            (Some(a), Some(r)) => (*a == 1, *r),
            _ => {
                return Err(StoreError::Unavailable(
                    "unexpected rate-limit script reply".into(),
                ))
            }
        };
        Ok(Decision {
            allowed,
            retry_after_us: retry,
            backlog_us: out.get(2..).map(<[u64]>::to_vec).unwrap_or_default(),
        })
    }

    async fn rate_refund(&self, cells: &[Cell]) -> Result<(), StoreError> {
        let mut inv = RATE_REFUND.prepare_invoke();
        for c in cells {
            inv.key(&c.key);
        }
        for c in cells {
            inv.arg(c.emission_us);
        }
        let mut conn = self.conn().await?;
        inv.invoke_async::<()>(&mut conn)
            .await
            .map_err(|e| self.failed(e))
    }
}

/// A session and its TTL in one command.
static SESSION_GET: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}")
});

/// Records a jti or subject revocation and announces it, atomically, in
/// one command that names one key: a cluster reshard redirects single-key
/// commands cleanly (ASK, MOVED), while a MULTI block, or a script naming
/// two keys of a slot in mid-migration, gets TRYAGAIN until the migration
/// ends. KEYS: the jti set or the subject hash. ARGV: kind, member or field,
/// score or value, now, channel, message.
static REVOKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if ARGV[1] == 'jti' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"#,
    )
});

/// GCRA over every cell of a request, all or nothing, on Redis's clock.
/// KEYS: one per cell; ARGV: per cell emission_us, window_us, consume.
/// Reply: allowed (0/1), retry_after_us, then per cell TAT - now (µs).
/// Keys expire on their own when their budget is full again.
static RATE_CHECK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local allowed = 1
local retry = 0
local base = {}
local new = {}
for i = 1, n do
  local e = tonumber(ARGV[3 * i - 2])
  local w = tonumber(ARGV[3 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  base[i] = tat
  new[i] = tat + e
  if new[i] - now > w then
    allowed = 0
    if new[i] - now - w > retry then retry = new[i] - now - w end
  end
end
local out = {allowed, retry}
for i = 1, n do
  if allowed == 1 and ARGV[3 * i] == '1' then
    redis.call('SET', KEYS[i], string.format('%.0f', new[i]), 'PX', math.ceil((new[i] - now) / 1000) + 1)
    out[#out + 1] = new[i] - now
  else
    out[#out + 1] = base[i] - now
  end
end
return out
"#,
    )
});

/// Gives back one unit per cell (a `failures` attempt that did not fail).
static RATE_REFUND: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new = tat - tonumber(ARGV[i])
  if new <= now then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
  end
end
return 1
"#,
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_nodes_get_the_scheme_and_the_configured_credentials() {
        let access = Access {
            username: Some("gate".into()),
            password: Some("p@ss:w/rd".into()),
            ca_pem: None,
        };
        // a Sentinel's master or a cluster node: the source URL's scheme
        let master = node_url("rediss://:sentinel-pw@10.0.0.1:26379", "10.0.0.9", 6380);
        assert_eq!(master, "rediss://10.0.0.9:6380");
        assert_eq!(node_url("redis://h:1", "::1", 7000), "redis://[::1]:7000");
        let url = access.data_url(&format!("{master}/0"));
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("gate"));
        assert_eq!(info.redis_settings().password(), Some("p@ss:w/rd"));
        // configured credentials replace a URL's own
        let url = access.data_url("redis://other:old@127.0.0.1:6379/2");
        let info = redis::IntoConnectionInfo::into_connection_info(url.as_str()).unwrap();
        assert_eq!(info.redis_settings().username(), Some("gate"));
        assert_eq!(info.redis_settings().db(), 2);
        // without configured credentials the URL is kept as it is
        let plain = Access::default();
        assert_eq!(plain.data_url("redis://u:p@h:1/0"), "redis://u:p@h:1/0");
        assert!(is_tls("REDISS://h:1") && !is_tls("redis://h:1"));
        // the password never shows in Debug output
        assert!(!format!("{access:?}").contains("p@ss"));
    }
}
