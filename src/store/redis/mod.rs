//! The Redis store. Commands go over one multiplexed `ConnectionManager`
//! (automatic reconnection), created lazily inside the runtime that first
//! needs it (pingora builds its runtimes in `run()`, so nothing that spawns
//! tasks may be created before). Invalidation of cached sessions comes from
//! Redis itself: [`RedisStore::watch_invalidations`] keeps a dedicated RESP3
//! connection with `CLIENT TRACKING ON BCAST PREFIX <key_prefix>`, which works
//! on a Redis in its default configuration (no `notify-keyspace-events`).

mod connect;
mod scripts;

pub use connect::{
    is_tls, Access, Conn, Topology, CONNECT_TIMEOUT, RESPONSE_TIMEOUT, REVOCATION_CHANNEL,
    REVOKED_JTIS, REVOKED_SUBS,
};

use super::{SessionRecord, Store, StoreError};
use crate::ratelimit::{self, Cell, Decision};
use crate::revocation::{parse_sub_field, sub_field, Revocation};
use async_trait::async_trait;
use connect::{ask_sentinel, connect_push, db_of, node_url, unavailable};
use redis::aio::ConnectionManagerConfig;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use scripts::{RATE_CHECK, RATE_REFUND, REVOKE, SESSION_GET};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

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
        if matches!(self.topology, Topology::Cluster(_)) {
            let groups = ratelimit::slot_groups(cells);
            if groups.len() > 1 {
                return self.rate_check_slots(cells, &groups).await;
            }
        }
        self.rate_check_one(cells).await
    }

    async fn rate_refund(&self, cells: &[Cell]) -> Result<(), StoreError> {
        if matches!(self.topology, Topology::Cluster(_)) {
            let groups = ratelimit::slot_groups(cells);
            if groups.len() > 1 {
                let parts: Vec<Vec<Cell>> = groups.iter().map(|g| pick(cells, g)).collect();
                let done =
                    futures_util::future::join_all(parts.iter().map(|p| self.rate_refund_one(p)))
                        .await;
                return done.into_iter().collect();
            }
        }
        self.rate_refund_one(cells).await
    }
}

/// The cells at `indices`, in that order.
fn pick(cells: &[Cell], indices: &[usize]) -> Vec<Cell> {
    indices
        .iter()
        .filter_map(|i| cells.get(*i).cloned())
        .collect()
}

impl RedisStore {
    /// A request whose limits live in several cluster slots (a route
    /// limited by IP and by user name): one script per slot, all sent at
    /// once, so the request still waits one round trip. Each slot's check is
    /// atomic, so each budget stays exact across instances; when one slot
    /// refuses, the slots that passed are refunded, so a refused request
    /// costs nothing. Until that refund lands, a concurrent request may see
    /// the budget one lower: the error is on the side of refusing.
    async fn rate_check_slots(
        &self,
        cells: &[Cell],
        groups: &[Vec<usize>],
    ) -> Result<Decision, StoreError> {
        let parts: Vec<Vec<Cell>> = groups.iter().map(|g| pick(cells, g)).collect();
        let answers =
            futures_util::future::join_all(parts.iter().map(|p| self.rate_check_one(p))).await;
        let mut decisions = Vec::with_capacity(answers.len());
        let mut failed = None;
        for a in answers {
            match a {
                Ok(d) => decisions.push(d),
                Err(e) => failed = Some(e),
            }
        }
        // A slot that could not be checked fails the whole request (the
        // route's `on_error` decides); what other slots consumed stays
        // consumed, which errs on the side of refusing.
        if let Some(e) = failed {
            return Err(e);
        }
        let (decision, refund) = ratelimit::join_groups(cells, groups, &decisions);
        if !refund.is_empty() {
            if let Err(e) = self.rate_refund(&pick(cells, &refund)).await {
                tracing::warn!(error = %e, op = "ratelimit", "a refused request's other budgets could not be refunded");
            }
        }
        Ok(decision)
    }

    /// One atomic script over cells that share a slot (or any cells on a
    /// single node).
    async fn rate_check_one(&self, cells: &[Cell]) -> Result<Decision, StoreError> {
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

    async fn rate_refund_one(&self, cells: &[Cell]) -> Result<(), StoreError> {
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
