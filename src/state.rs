//! What the proxy, the admin listener and background tasks share: the
//! current runtime (swapped whole on reload, read lock-free) and the metrics.

use crate::metrics::Metrics;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// Shared process state.
pub struct State {
    runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// The config file path as given on the command line (for reloads).
    pub config_path: String,
}

impl State {
    pub fn new(runtime: Runtime, metrics: Metrics, config_path: String) -> State {
        State {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            config_path,
        }
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
