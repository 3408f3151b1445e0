//! The embedded default store: one instance, nothing shared. Sessions live
//! in the application's Redis, so a `[sessions]` config on this store is a
//! `check` error and these calls are never reached for sessions.

use super::{SessionRecord, Store, StoreError};
use async_trait::async_trait;

/// The in-process store.
#[derive(Debug, Default)]
pub struct MemoryStore;

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }
    async fn get_session(&self, _key: &str) -> Result<Option<SessionRecord>, StoreError> {
        Err(StoreError::Unsupported("sessions"))
    }
    async fn touch_session(&self, _key: &str, _ttl_ms: u64) -> Result<(), StoreError> {
        Err(StoreError::Unsupported("sessions"))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
