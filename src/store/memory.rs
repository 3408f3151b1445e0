//! The embedded default store: one instance, nothing shared. Sessions live
//! in the application's Redis, so a `[sessions]` config on this store is a
//! `check` error and these calls are never reached for sessions.

use super::{now_us, SessionRecord, Store, StoreError};
use crate::ratelimit::{gcra, gcra_refund, Cell, Decision};
use crate::revocation::Revocation;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Most rate-limit keys held; past it, expired keys are dropped, and if
/// none are, the limiter reports an error (the route's `on_error` decides)
/// rather than forget a live budget.
pub const MAX_RATE_KEYS: usize = 1_000_000;

/// The in-process store: rate-limit arrival times by key.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tats: Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl Store for MemoryStore {
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

    async fn rate_check(&self, cells: &[Cell]) -> Result<Decision, StoreError> {
        let now = now_us();
        let mut map = self
            .tats
            .lock()
            .map_err(|_| StoreError::Unavailable("rate-limit table poisoned".into()))?;
        if map.len() >= MAX_RATE_KEYS {
            map.retain(|_, tat| *tat > now);
            if map.len() >= MAX_RATE_KEYS {
                return Err(StoreError::Unavailable("rate-limit table full".into()));
            }
        }
        let tats: Vec<u64> = cells
            .iter()
            .map(|c| map.get(&c.key).copied().unwrap_or(0))
            .collect();
        let (decision, writes) = gcra(cells, &tats, now);
        for (c, w) in cells.iter().zip(writes) {
            if let Some(t) = w {
                map.insert(c.key.clone(), t);
            }
        }
        Ok(decision)
    }

    async fn rate_refund(&self, cells: &[Cell]) -> Result<(), StoreError> {
        let now = now_us();
        let mut map = self
            .tats
            .lock()
            .map_err(|_| StoreError::Unavailable("rate-limit table poisoned".into()))?;
        let tats: Vec<u64> = cells
            .iter()
            .map(|c| map.get(&c.key).copied().unwrap_or(0))
            .collect();
        for (c, t) in cells.iter().zip(gcra_refund(cells, &tats, now)) {
            match t {
                Some(t) => map.insert(c.key.clone(), t),
                None => map.remove(&c.key),
            };
        }
        Ok(())
    }
}
