//! Background services that keep local mirrors in step with the store. They
//! run on their own pingora runtime, so the proxy's workers never do this
//! work, and they stop with the server's shutdown signal.

use crate::state::State;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

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
