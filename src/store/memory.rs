//! The embedded default store: one instance, nothing shared. Sessions live
//! in the application's Redis, so a `[sessions]` config on this store is a
//! `check` error and these calls are never reached for sessions.

use super::{SessionRecord, Store, StoreError};
use crate::revocation::Revocation;
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
    /// One instance: the mirror is the record, nothing to announce.
    async fn revoke(&self, r: &Revocation, _session_key: Option<&str>) -> Result<(), StoreError> {
        match r {
            Revocation::Session { .. } => Err(StoreError::Unsupported("sessions")),
            _ => Ok(()),
        }
    }
    async fn load_revocations(&self, _now: i64) -> Result<Vec<Revocation>, StoreError> {
        Ok(Vec::new())
    }
}
