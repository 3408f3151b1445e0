//! Keys fetched from an issuer's `jwks_url`: loaded in the background
//! (start-up never waits on the provider), refreshed on the provider's
//! `Cache-Control: max-age` within configured bounds, and re-fetched when a
//! token names an unknown `kid` — at most once per cooldown, and shared by
//! every request that asks at the same time (one fetch, not a stampede).
//! A failed refresh keeps the keys that were serving. Until an issuer's keys
//! have loaded once, its tokens are 503 `keys_unavailable` (the provider's
//! outage is not the client's fault).

use super::keys::{keys_from_jwks, KeySet};
use crate::denial::Reason;
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// One fetch's time limit.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Refresh bounds and the unknown-kid cooldown of one issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksTiming {
    /// Shortest time between scheduled refreshes (clamps a small max-age).
    pub min_refresh: Duration,
    /// Longest time between scheduled refreshes (and the default when the
    /// provider sends no max-age).
    pub max_refresh: Duration,
    /// Least time between two fetches triggered by unknown `kid`s.
    pub cooldown: Duration,
}

/// Why a fetch failed (logged and counted; the old keys keep serving).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("provider answered {0}")]
    Status(u16),
    #[error("JWKS larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Keys(#[from] super::keys::KeyError),
}

/// The live key set of one `jwks_url` issuer.
pub struct RemoteKeys {
    /// The issuer's config name (metrics label).
    pub issuer: String,
    pub url: String,
    pub timing: JwksTiming,
    keys: ArcSwapOption<KeySet>,
    /// Bumped by every successful fetch.
    generation: AtomicU64,
    /// Serialises fetches (single flight).
    fetch_lock: tokio::sync::Mutex<()>,
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    next_refresh: Mutex<Instant>,
    client: OnceLock<reqwest::Client>,
}

impl RemoteKeys {
    pub fn new(issuer: &str, url: &str, timing: JwksTiming) -> RemoteKeys {
        RemoteKeys {
            issuer: issuer.to_string(),
            url: url.to_string(),
            timing,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_unknown_kid_fetch: Mutex::new(None),
            next_refresh: Mutex::new(Instant::now()),
            client: OnceLock::new(),
        }
    }

    /// The keys now serving, or `keys_unavailable` before the first load.
    pub fn current(&self) -> Result<Arc<KeySet>, Reason> {
        self.keys.load_full().ok_or(Reason::KeysUnavailable)
    }

    /// Whether `keys` are the keys now serving (no handle taken: a cache
    /// hit asks this on every request).
    pub fn is_current(&self, keys: &Arc<KeySet>) -> bool {
        self.keys
            .load()
            .as_ref()
            .is_some_and(|k| Arc::ptr_eq(k, keys))
    }

    /// Whether the keys have loaded at least once (readiness).
    pub fn loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Whether a scheduled refresh is due.
    pub fn due(&self) -> bool {
        self.next_refresh
            .lock()
            .map(|t| Instant::now() >= *t)
            .unwrap_or(true)
    }

    fn client(&self) -> Result<&reqwest::Client, FetchError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        Ok(self.client.get_or_init(|| c))
    }

    /// Fetches and installs the key set; schedules the next refresh.
    pub async fn fetch(&self) -> Result<usize, FetchError> {
        let _single = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, FetchError> {
        let result = self.get().await;
        let next = match &result {
            Ok((_, max_age)) => max_age
                .unwrap_or(self.timing.max_refresh)
                .clamp(self.timing.min_refresh, self.timing.max_refresh),
            // Retry soon while never loaded, else at the floor.
            Err(_) if !self.loaded() => Duration::from_secs(1),
            Err(_) => self.timing.min_refresh,
        };
        if let Ok(mut t) = self.next_refresh.lock() {
            *t = Instant::now() + next;
        }
        let (keys, _) = result?;
        let n = keys.keys.len();
        self.keys.store(Some(Arc::new(keys)));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    async fn get(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let resp = self
            .client()?
            .get(&self.url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_JWKS_BYTES)
        {
            return Err(FetchError::TooLarge);
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((keys_from_jwks(&body)?, max_age))
    }

    /// A token named a `kid` the current keys lack: fetch again, unless a
    /// fetch finished while this request waited its turn or the cooldown
    /// since the last unknown-kid fetch has not passed. Returns whether new
    /// keys are in place.
    pub async fn refetch_for_unknown_kid(&self) -> Refetch {
        let seen = self.generation.load(Ordering::Acquire);
        let _single = self.fetch_lock.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Refetch::Refreshed;
        }
        {
            let Ok(mut last) = self.last_unknown_kid_fetch.lock() else {
                return Refetch::Skipped;
            };
            if last.is_some_and(|t| t.elapsed() < self.timing.cooldown) {
                return Refetch::Skipped;
            }
            *last = Some(Instant::now());
        }
        Refetch::Fetched(self.fetch_locked().await)
    }

    /// Starts from another key set's keys (a reload that only retunes
    /// timing keeps serving what was loaded).
    pub fn adopt_keys(&self, other: &RemoteKeys) {
        if let Some(k) = other.keys.load_full() {
            self.keys.store(Some(k));
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// What an unknown-kid re-fetch did.
pub enum Refetch {
    /// This request fetched (counted in metrics).
    Fetched(Result<usize, FetchError>),
    /// Another request's fetch finished while this one waited.
    Refreshed,
    /// Within the cooldown: no fetch.
    Skipped,
}

impl RemoteKeys {}

/// `max-age=N` from a Cache-Control value.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

/// An issuer's keys: fixed at load, or fetched from a URL.
#[derive(Clone)]
pub enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

impl KeySource {
    /// Whether `keys` are the keys to verify with now: a token verified
    /// under another set goes through verification again.
    pub fn is_current(&self, keys: &Arc<KeySet>) -> bool {
        match self {
            KeySource::Static(k) => Arc::ptr_eq(k, keys),
            KeySource::Remote(r) => r.is_current(keys),
        }
    }

    /// The keys to verify with now.
    pub fn current(&self) -> Result<Arc<KeySet>, Reason> {
        match self {
            KeySource::Static(k) => Ok(k.clone()),
            KeySource::Remote(r) => r.current(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("MAX-AGE=\"5\""), Some(Duration::from_secs(5)));
    }
}
