//! Wall-clock time in unix seconds, the unit of JWT claims, revocation
//! cut-offs and session expiry: a leaf, so the store, the credential
//! checks and the pipeline read the same clock without importing each
//! other.

/// Current unix time in seconds (0 if the clock is before 1970).
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
