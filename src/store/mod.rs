//! The only door to shared state. The request path never waits on it except
//! for a session cache miss (and, later, one atomic call on rate-limited
//! routes); everything else is mirrored locally. Errors are typed and never
//! read as "absent": a session that cannot be read is a 503, never a 401.

pub mod memory;
pub mod redis;

use crate::ratelimit::{Cell, Decision};
use crate::revocation::Revocation;
use async_trait::async_trait;

/// A stored session as read: the raw JSON and the key's remaining TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub json: String,
    /// Milliseconds until Redis expires the key; `None` when it has no TTL.
    pub ttl_ms: Option<u64>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unreachable: {0}")]
    Unavailable(String),
    #[error("the memory store does not hold {0}")]
    Unsupported(&'static str),
}

/// Shared state operations.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads a session by its full key.
    async fn get_session(&self, key: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Re-arms a session key's TTL (rolling sessions).
    async fn touch_session(&self, key: &str, ttl_ms: u64) -> Result<(), StoreError>;
    /// Answers when the store is reachable (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Records a revocation durably and announces it to every instance, in
    /// one atomic step. `session_key` is the full key of a revoked session.
    async fn revoke(&self, r: &Revocation, session_key: Option<&str>) -> Result<(), StoreError>;
    /// Every revocation still in force (for a full mirror re-read).
    async fn load_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError>;
    /// Checks every rate-limit cell of a request and, if all pass, consumes
    /// the consuming ones: one atomic step.
    async fn rate_check(&self, cells: &[Cell]) -> Result<Decision, StoreError>;
    /// Gives back one unit per cell (a `failures` attempt that succeeded).
    async fn rate_refund(&self, cells: &[Cell]) -> Result<(), StoreError>;
}

/// Microseconds since the Unix epoch (the memory limiter's clock; Redis
/// uses its own `TIME`, so every instance shares one clock).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
