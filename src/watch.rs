//! Background services that keep local mirrors in step with the store. They
//! run on their own pingora runtime, so the proxy's workers never do this
//! work, and they stop with the server's shutdown signal.

use crate::auth::jwks::KeySource;
use crate::clock::now_unix;
use crate::revocation::Revocation;
use crate::state::State;
use crate::store::redis::RedisStore;
use crate::store::{Store, StoreError};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::PushKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Evicts cached sessions as Redis reports their keys changed.
pub struct SessionWatcher {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for SessionWatcher {
    async fn start(&self, shutdown: ShutdownWatch) {
        let rt = self.state.runtime();
        let (Some(redis), Some(cache), Some(settings)) =
            (&self.state.redis, &self.state.sessions, &rt.sessions)
        else {
            return;
        };
        let invalidate = |key: Option<&[u8]>| cache.invalidate(key);
        let tracking = |on: bool| cache.set_tracking(on);
        redis
            .watch_invalidations(&settings.key_prefix, &invalidate, &tracking, shutdown)
            .await;
    }
}

/// How often the revocation mirror is fully re-read from Redis (and pruned),
/// so a lost pub/sub message heals within this bound.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// Keeps the revocation mirror in step with the store: subscribe, re-read
/// everything, apply announcements, re-read periodically; reconnect and
/// re-read after any loss. With the memory store it only prunes.
pub struct RevocationWatcher {
    pub state: Arc<State>,
}

impl RevocationWatcher {
    async fn resync(&self, redis: &RedisStore) -> Result<usize, StoreError> {
        let now = now_unix();
        let all = redis.load_revocations(now).await?;
        // What this mirror enforces and the store lost (FLUSHALL, a
        // failover to a replica that missed writes) goes back, so the
        // store converges to the union and an instance started later
        // enforces it too. Written as any revocation is (announced too:
        // applying it again is a no-op for the others).
        let missing = self.state.revocations.missing_from(&all, now);
        if !missing.is_empty() {
            let (mut jtis, mut subs) = (0u64, 0u64);
            for r in &missing {
                redis.revoke(r, None).await?;
                match r {
                    Revocation::Jti { .. } => jtis += 1,
                    _ => subs += 1,
                }
            }
            let m = &self.state.metrics.revocations_restored;
            m.with_label_values(&["jti"]).inc_by(jtis);
            m.with_label_values(&["sub"]).inc_by(subs);
            tracing::warn!(
                jtis,
                subs,
                "the store had lost revocations this instance enforces; written back"
            );
        }
        for r in &all {
            // A full list: local over-capacity is logged by apply's callers.
            let _ = self.state.revocations.apply(r, now);
        }
        self.state.revocations.prune(now);
        self.state.publish_mirror_size();
        Ok(all.len())
    }

    fn on_message(&self, payload: &[u8]) {
        match serde_json::from_slice::<Revocation>(payload) {
            Ok(r) => {
                if let Revocation::Session { sid } = &r {
                    if let (Some(cache), Some(s)) =
                        (&self.state.sessions, &self.state.runtime().sessions)
                    {
                        cache.invalidate(Some(format!("{}{}", s.key_prefix, sid).as_bytes()));
                    }
                }
                if let Err(e) = self.state.revocations.apply(&r, now_unix()) {
                    tracing::error!(error = %e, "revocation not mirrored");
                }
                self.state.publish_mirror_size();
            }
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed revocation message"),
        }
    }

    async fn follow(
        &self,
        redis: &RedisStore,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), StoreError> {
        let (mut conn, mut rx) = redis.push_connection().await?;
        conn.subscribe(&redis.channel)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        // Subscribed first, then read: nothing announced in between is lost.
        let n = self.resync(redis).await?;
        self.state.revocations_synced.store(true, Ordering::Release);
        tracing::info!(entries = n, "revocation mirror synced");
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.tick().await;
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = resync.tick() => { self.resync(redis).await?; }
                _ = ping.tick() => {
                    redis::cmd("PING").exec_async(&mut conn).await
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else {
                        return Err(StoreError::Unavailable("push channel closed".into()));
                    };
                    match msg.kind {
                        PushKind::Message => {
                            if let Some(redis::Value::BulkString(p)) = msg.data.get(1) {
                                self.on_message(p);
                            }
                        }
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
impl BackgroundService for RevocationWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(redis) = self.state.redis.clone() else {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(RESYNC_EVERY) => {
                        self.state.revocations.prune(now_unix());
                        self.state.publish_mirror_size();
                    }
                }
            }
        };
        loop {
            match self.follow(&redis, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    self.state
                        .metrics
                        .store_errors
                        .with_label_values(&["revocation_sync"])
                        .inc();
                    tracing::warn!(error = %e, op = "revocation_sync", "revocation channel lost; the mirror keeps serving, reconnecting");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}

/// Fetches and refreshes every `jwks_url` issuer of the running config
/// (which, across reloads, keeps the same key sets for unchanged issuers).
pub struct JwksRefresher {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut warned = std::collections::HashSet::new();
        loop {
            let rt = self.state.runtime();
            let mut all_loaded = true;
            for issuer in &rt.issuers {
                let KeySource::Remote(remote) = &issuer.keys else {
                    continue;
                };
                if warned.insert(remote.url.clone()) && insecure_url(&remote.url) {
                    tracing::warn!(issuer = remote.issuer.as_str(), url = remote.url.as_str(), "jwks_url is plain http to a non-loopback host: keys can be tampered with in transit");
                }
                if remote.due() {
                    let result = remote.fetch().await;
                    let label = if result.is_ok() { "ok" } else { "error" };
                    self.state
                        .metrics
                        .jwks_refresh
                        .with_label_values(&[remote.issuer.as_str(), label])
                        .inc();
                    match result {
                        Ok(n) => {
                            tracing::info!(issuer = remote.issuer.as_str(), keys = n, "JWKS loaded")
                        }
                        Err(e) => {
                            tracing::warn!(issuer = remote.issuer.as_str(), error = %e, loaded = remote.loaded(), "JWKS fetch failed; the keys in place keep serving")
                        }
                    }
                }
                all_loaded &= remote.loaded();
            }
            let tick = if all_loaded {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(200)
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// `http://` to anything but loopback.
fn insecure_url(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "http" {
        return false;
    }
    match u.host() {
        Some(url::Host::Domain(d)) => d != "localhost",
        Some(url::Host::Ipv4(ip)) => !ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => !ip.is_loopback(),
        None => true,
    }
}

/// Reloads the config on SIGHUP (pingora leaves SIGHUP free).
pub struct SighupReloader {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for SighupReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    let state = self.state.clone();
                    // File reads and key parsing are blocking work.
                    let _ = tokio::task::spawn_blocking(move || crate::reload::reload(&state)).await;
                }
            }
        }
    }
}

/// Ends running streams whose credential was revoked or expired
/// (`streams.rs`), every [`crate::streams::SWEEP`].
pub struct StreamSweeper {
    pub state: Arc<State>,
}

#[async_trait]
impl BackgroundService for StreamSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(crate::streams::SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let streams = &self.state.streams;
            if streams.is_empty() {
                if let Some(cache) = &self.state.sessions {
                    cache
                        .watching
                        .store(false, std::sync::atomic::Ordering::Release);
                }
                continue;
            }
            let gone = self.destroyed_sessions(&streams.sessions()).await;
            let revocations = &self.state.revocations;
            let ended = streams.sweep(crate::clock::now_unix(), |id| {
                revocations.is_revoked(id) || id.session.as_ref().is_some_and(|s| gone.contains(s))
            });
            if ended > 0 {
                self.state.metrics.streams_ended.inc_by(ended as u64);
                tracing::info!(
                    ended,
                    "ended streams whose credential was revoked or expired"
                );
            }
        }
    }
}

impl StreamSweeper {
    /// Which of the running streams' sessions were destroyed: those Redis
    /// reported changed since the last sweep (all of them when the cache
    /// starts keeping that list, or lost count) and the store no longer
    /// holds. A store error keeps the stream running: it was authenticated,
    /// and an outage must not cut every session stream at once.
    async fn destroyed_sessions(
        &self,
        sessions: &[Arc<str>],
    ) -> std::collections::HashSet<Arc<str>> {
        use std::sync::atomic::Ordering;
        let mut gone = std::collections::HashSet::new();
        let Some(cache) = &self.state.sessions else {
            return gone;
        };
        if sessions.is_empty() {
            cache.watching.store(false, Ordering::Release);
            return gone;
        }
        let started = !cache.watching.swap(true, Ordering::AcqRel);
        let changed = cache.take_changed();
        let check: Vec<&Arc<str>> = match changed {
            Some(c) if !started => {
                let changed: std::collections::HashSet<&str> =
                    c.iter().map(String::as_str).collect();
                sessions
                    .iter()
                    .filter(|s| changed.contains(&***s))
                    .collect()
            }
            _ => sessions.iter().collect(),
        };
        let Some(prefix) = self
            .state
            .runtime()
            .sessions
            .as_ref()
            .map(|s| s.key_prefix.clone())
        else {
            return gone;
        };
        for sid in check {
            let key = format!("{prefix}{sid}");
            if let Ok(None) = self.state.store.get_session(&key).await {
                gone.insert(sid.clone());
            }
        }
        gone
    }
}
