//! What the proxy, the admin listener and background tasks share: the
//! current runtime (swapped whole on reload, read lock-free), the store, the
//! session cache and the metrics. What a reload may change is decided in
//! `reload.rs`; this module only holds the state it swaps.

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
    /// Held for the whole of a reload (`reload.rs`): one at a time.
    pub(crate) reload_lock: Mutex<()>,
    /// Verified JWTs by token hash.
    pub token_cache: TokenCache,
    /// The config file path as given on the command line (for reloads).
    pub config_path: String,
    /// Running HTTP/2 streams and upgraded connections, checked against
    /// their credential until they end.
    pub streams: Arc<crate::streams::Streams>,
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
            streams: Arc::default(),
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
}
