//! What the proxy, the admin listener and background tasks share: the
//! current runtime (swapped whole on reload, read lock-free), the store, the
//! session cache and the metrics.

use crate::auth::cache::{SessionCache, TokenCache};
use crate::auth::jwks::KeySource;
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::runtime::{Runtime, StoreKind};
use crate::store::memory::MemoryStore;
use crate::store::redis::{RedisStore, Topology};
use crate::store::{Store, StoreError};
use arc_swap::ArcSwap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(crate::config::ConfigErrors),
    #[error("{0}: restart the gateway to apply it")]
    NeedsRestart(String),
    #[error("another reload is in progress")]
    Busy,
}

/// Shared process state.
pub struct State {
    runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    pub store: Arc<dyn Store>,
    /// The Redis store itself when there is one (background watchers).
    pub redis: Option<Arc<RedisStore>>,
    /// Present when `[sessions]` is configured.
    pub sessions: Option<Arc<SessionCache>>,
    /// The local revocation mirror every request consults.
    pub revocations: Revocations,
    /// Whether the mirror has been read from the store once (readiness).
    pub revocations_synced: AtomicBool,
    reload_lock: Mutex<()>,
    /// Verified JWTs by token hash.
    pub token_cache: TokenCache,
    /// The config file path as given on the command line (for reloads).
    pub config_path: String,
}

impl State {
    /// Builds the shared state; the store connects lazily, on first use.
    pub fn new(
        runtime: Runtime,
        metrics: Metrics,
        config_path: String,
    ) -> Result<State, StoreError> {
        let (store, redis): (Arc<dyn Store>, Option<Arc<RedisStore>>) = match &runtime.store.kind {
            StoreKind::Memory => (Arc::new(MemoryStore::default()), None),
            StoreKind::Redis { url } => {
                let r = Arc::new(RedisStore::with_topology(
                    Topology::Single(url.clone()),
                    runtime.store.access.clone(),
                )?);
                (r.clone(), Some(r))
            }
            StoreKind::Cluster { urls } => {
                let r = Arc::new(RedisStore::with_topology(
                    Topology::Cluster(urls.clone()),
                    runtime.store.access.clone(),
                )?);
                (r.clone(), Some(r))
            }
            StoreKind::Sentinel { sentinels, master } => {
                let r = Arc::new(RedisStore::with_topology(
                    Topology::Sentinel {
                        sentinels: sentinels.clone(),
                        master: master.clone(),
                    },
                    runtime.store.access.clone(),
                )?);
                (r.clone(), Some(r))
            }
        };
        let runtime_cache = (runtime.token_cache.size, runtime.token_cache.max_ttl);
        let sessions = runtime.sessions.as_ref().map(|s| {
            Arc::new(SessionCache::new(
                s.cache_size,
                s.cache_ttl,
                s.key_prefix.clone(),
            ))
        });
        Ok(State {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            store,
            redis,
            sessions,
            revocations: Revocations::default(),
            revocations_synced: AtomicBool::new(false),
            reload_lock: Mutex::new(()),
            token_cache: TokenCache::new(runtime_cache.0, runtime_cache.1),
            config_path,
        })
    }

    /// Whether every `jwks_url` issuer's keys have loaded once.
    pub fn keys_loaded(&self) -> bool {
        self.runtime().issuers.iter().all(|i| match &i.keys {
            KeySource::Remote(r) => r.loaded(),
            KeySource::Static(_) => true,
        })
    }

    /// Updates the mirror-size gauges.
    pub fn publish_mirror_size(&self) {
        let (jtis, subs) = self.revocations.sizes();
        self.metrics
            .revocation_mirror
            .with_label_values(&["jti"])
            .set(jtis as i64);
        self.metrics
            .revocation_mirror
            .with_label_values(&["sub"])
            .set(subs as i64);
    }

    /// The current config snapshot: a request loads it once and keeps it.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Installs a new config; requests in flight keep the one they loaded.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    /// Re-reads the config file. A valid file is swapped in atomically
    /// (requests in flight finish on the config they started with); an
    /// invalid one changes nothing. Settings bound at start-up (listeners,
    /// threads, TLS) keep their running values with a warning; a change to
    /// the store or to whether sessions exist is refused (restart needed).
    pub fn reload(&self) -> Result<String, ReloadError> {
        let Ok(_one_at_a_time) = self.reload_lock.lock() else {
            return Err(ReloadError::Busy);
        };
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(summary) => tracing::info!(summary = summary.as_str(), "config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "config reload rejected; the running config is kept")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, ReloadError> {
        let mut new = crate::config::load(&self.config_path).map_err(ReloadError::Invalid)?;
        let old = self.runtime();
        if new.store != old.store {
            return Err(ReloadError::NeedsRestart("[store] changed".into()));
        }
        match (&new.sessions, &old.sessions) {
            (Some(a), Some(b))
                if a.key_prefix != b.key_prefix
                    || a.cache_size != b.cache_size
                    || a.cache_ttl != b.cache_ttl =>
            {
                return Err(ReloadError::NeedsRestart(
                    "[sessions] key_prefix, cache_size or cache_ttl changed".into(),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ReloadError::NeedsRestart(
                    "[sessions] added or removed".into(),
                ));
            }
            _ => {}
        }
        let s = &new.server;
        let o = &old.server;
        for (what, changed) in [
            ("server.listen", s.listen != o.listen),
            ("server.admin_listen", s.admin_listen != o.admin_listen),
            ("server.threads", s.threads != o.threads),
            ("server.tls", s.tls != o.tls),
            ("server.grace_period", s.grace_period != o.grace_period),
            (
                "server.request_header_timeout",
                s.head.timeout != o.head.timeout,
            ),
            (
                "server.max_header_bytes",
                s.head.max_bytes != o.head.max_bytes,
            ),
            ("token_cache", new.token_cache != old.token_cache),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "this setting only changes on restart; the running value is kept"
                );
            }
        }
        // Keep what is bound at start-up; trusted_proxies applies now.
        let trusted = std::mem::take(&mut new.server.trusted_proxies);
        new.server = old.server.clone();
        new.server.trusted_proxies = trusted;
        // Keep fetched key sets (and their schedules) for unchanged issuers.
        for issuer in &mut new.issuers {
            if let KeySource::Remote(r) = &issuer.keys {
                let same = old.issuers.iter().find_map(|o| match &o.keys {
                    KeySource::Remote(or) if o.name == issuer.name && or.url == r.url => {
                        Some(or.clone())
                    }
                    _ => None,
                });
                match same {
                    Some(existing) if existing.timing == r.timing => {
                        issuer.keys = KeySource::Remote(existing)
                    }
                    // New timing, same provider: keep serving the keys.
                    Some(existing) => r.adopt_keys(&existing),
                    None => {}
                }
            }
        }
        let summary = new.summary();
        self.swap(new);
        // Entries name issuers by index in the old runtime: start afresh.
        self.token_cache.clear();
        Ok(summary)
    }
}
