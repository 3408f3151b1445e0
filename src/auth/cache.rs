//! Local caches on the request path. [`SessionCache`] holds looked-up
//! sessions so a session route costs no Redis round trip at steady state;
//! Redis's own invalidations (client tracking) evict entries within
//! milliseconds, and an entry never outlives the key's TTL in Redis or the
//! configured cache TTL. While invalidations are not flowing (start-up, a
//! lost connection) nothing is cached, so the 1-second promise holds.

use crate::identity::Identity;
use quick_cache::sync::Cache;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A cached session.
#[derive(Debug)]
pub struct CachedSession {
    pub identity: Arc<Identity>,
    /// `cookie.expires` of the stored session (unix ms), checked on every hit.
    pub expires_ms: Option<i64>,
    /// `cookie.originalMaxAge` (ms): what a rolling touch re-arms the TTL to.
    pub original_max_age_ms: Option<u64>,
    /// After this the entry is stale (cache TTL or the key's Redis TTL).
    pub valid_until: Instant,
    /// Unix ms of the last rolling touch (0 = never).
    pub last_touch_ms: AtomicI64,
}

/// Sessions by sid.
pub struct SessionCache {
    map: Cache<String, Arc<CachedSession>>,
    /// Bumped by every invalidation: a lookup that started before one must
    /// not cache what it read (it may predate the change).
    generation: AtomicU64,
    tracking: AtomicBool,
    prefix: String,
    pub ttl: Duration,
    /// While running streams are authenticated by session (`streams.rs`):
    /// the sessions invalidated since the last sweep, which may have been
    /// destroyed. `None` inside: too many, or everything was invalidated.
    changed: std::sync::Mutex<Option<Vec<String>>>,
    /// Whether `changed` is being kept (the sweeper sets it).
    pub watching: AtomicBool,
}

/// Most invalidated sessions kept between two sweeps: past it, every
/// watched session is checked.
const CHANGED_CAP: usize = 10_000;

impl SessionCache {
    pub fn new(capacity: usize, ttl: Duration, prefix: String) -> SessionCache {
        SessionCache {
            map: Cache::new(capacity.max(1)),
            generation: AtomicU64::new(0),
            tracking: AtomicBool::new(false),
            prefix,
            ttl,
            changed: std::sync::Mutex::new(Some(Vec::new())),
            watching: AtomicBool::new(false),
        }
    }

    /// The sessions invalidated since the last call (`None`: any may have
    /// been), while [`SessionCache::watching`] is set.
    pub fn take_changed(&self) -> Option<Vec<String>> {
        let mut c = self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.replace(Vec::new())
    }

    fn note_changed(&self, sid: Option<&str>) {
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        let mut c = self
            .changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (c.as_mut(), sid) {
            (Some(v), Some(s)) if v.len() < CHANGED_CAP => v.push(s.to_string()),
            (Some(_), _) => *c = None,
            (None, _) => {}
        }
    }

    /// A fresh entry for `sid`, if any.
    pub fn get(&self, sid: &str) -> Option<Arc<CachedSession>> {
        let e = self.map.get(sid)?;
        if Instant::now() >= e.valid_until {
            self.map.remove(sid);
            return None;
        }
        Some(e)
    }

    /// The generation to pass to [`SessionCache::insert`], read before the
    /// store lookup.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a looked-up session unless an invalidation arrived since
    /// `generation` or invalidations are not flowing.
    pub fn insert(&self, sid: &str, generation: u64, entry: Arc<CachedSession>) {
        if !self.tracking.load(Ordering::Acquire) || self.generation() != generation {
            return;
        }
        self.map.insert(sid.to_string(), entry);
        // An invalidation may have landed between the check and the insert.
        if self.generation() != generation {
            self.map.remove(sid);
        }
    }

    /// Evicts one Redis key (`None`: everything).
    pub fn invalidate(&self, key: Option<&[u8]>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        match key.and_then(|k| k.strip_prefix(self.prefix.as_bytes())) {
            Some(sid) => {
                if let Ok(sid) = std::str::from_utf8(sid) {
                    self.map.remove(sid);
                    self.note_changed(Some(sid));
                }
            }
            None if key.is_some() => {}
            None => {
                self.map.clear();
                self.note_changed(None);
            }
        }
    }

    /// Whether Redis invalidations currently reach this cache.
    pub fn set_tracking(&self, on: bool) {
        self.tracking.store(on, Ordering::Release);
        if !on {
            self.invalidate(None);
        }
    }
}

/// A verified token, as cached.
pub struct CachedToken {
    pub identity: Arc<Identity>,
    /// The runtime it was verified under (a reload starts afresh).
    pub generation: u64,
    /// The issuer (index into the runtime's issuers) that verified it.
    pub issuer: usize,
    /// The key set that verified it: a JWKS refresh that replaces the set
    /// sends the token through verification again.
    pub keys: Arc<crate::auth::keys::KeySet>,
    /// Unix seconds from which it no longer passes (`exp` + leeway).
    pub expires_at: i64,
    /// Monotonic bound from `token_cache.max_ttl`.
    pub valid_until: Instant,
}

/// Tokens that passed signature and claim checks, by the SHA-256 of the
/// whole token (a weaker key would let a collision authenticate). A hit
/// still goes through revocation and `require` on every request.
pub struct TokenCache {
    map: Option<Cache<[u8; 32], Arc<CachedToken>>>,
    door: Doorkeeper,
    pub max_ttl: Duration,
}

/// Admission to the token cache: a token is cached the second time it is
/// verified, not the first (TinyLFU's "doorkeeper", as in Caffeine). A
/// token used once, the bulk of some traffic (one-shot links, a client
/// minting a token per call), then never costs an entry: such a stream
/// used to fill the cache with ~2 KB entries nobody reads again, evicting
/// the tokens that are reused and costing every miss a quarter of its
/// throughput in memory traffic (docs/performance.md, the "every token
/// distinct" rows against "cache off"). The second
/// sighting is recorded in one slot of a fixed table of fingerprints,
/// without a lock or an allocation; a slot overwritten by another token in
/// between only delays admission. What is accepted never depends on it:
/// it decides what is cached, never what passes.
struct Doorkeeper {
    slots: Box<[AtomicU64]>,
}

impl Doorkeeper {
    /// Two slots per cache entry (1,024 to 4M; 8 bytes each).
    fn new(capacity: usize) -> Doorkeeper {
        let n = if capacity == 0 {
            0
        } else {
            capacity
                .saturating_mul(2)
                .clamp(1024, 1 << 22)
                .next_power_of_two()
        };
        Doorkeeper {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `key` was seen before (since its slot last changed); records
    /// it if not. The key is a SHA-256: its bytes are already uniform.
    fn admit(&self, key: &[u8; 32]) -> bool {
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&key[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let Some(mask) = self.slots.len().checked_sub(1) else {
            return false;
        };
        // `| 1`: never the empty slot's 0
        let fingerprint = word(8) | 1;
        let Some(slot) = self.slots.get(word(0) as usize & mask) else {
            return false;
        };
        if slot.load(Ordering::Relaxed) == fingerprint {
            return true;
        }
        slot.store(fingerprint, Ordering::Relaxed);
        false
    }
}

impl TokenCache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize, max_ttl: Duration) -> TokenCache {
        TokenCache {
            map: (capacity > 0).then(|| Cache::new(capacity)),
            door: Doorkeeper::new(capacity),
            max_ttl,
        }
    }

    /// Whether a token just verified should be cached: the second time its
    /// key is verified ([`Doorkeeper`]). `false` with the cache off.
    pub fn admit(&self, key: &[u8; 32]) -> bool {
        self.map.is_some() && self.door.admit(key)
    }

    pub fn enabled(&self) -> bool {
        self.map.is_some()
    }

    /// The cache key of a token: SHA-256 by aws-lc, whose assembly uses
    /// SHA-NI or AVX2 where the CPU has them (the `sha2` crate falls back to
    /// portable code on CPUs without SHA-NI: about 25,000 instructions for a
    /// 600-byte token, measured with callgrind).
    /// `None` only if the digest were not 32 bytes (it always is): the
    /// token is then verified without the cache.
    pub fn key(token: &str) -> Option<[u8; 32]> {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        d.as_ref().try_into().ok()
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let map = self.map.as_ref()?;
        let e = map.get(key)?;
        if Instant::now() >= e.valid_until {
            map.remove(key);
            return None;
        }
        Some(e)
    }

    pub fn insert(&self, key: [u8; 32], entry: Arc<CachedToken>) {
        if let Some(map) = &self.map {
            map.insert(key, entry);
        }
    }

    pub fn remove(&self, key: &[u8; 32]) {
        if let Some(map) = &self.map {
            map.remove(key);
        }
    }

    /// Forgets everything (config reloads).
    pub fn clear(&self) {
        if let Some(map) = &self.map {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;

    fn entry() -> Arc<CachedSession> {
        Arc::new(CachedSession {
            identity: Arc::new(Identity {
                method: AuthMethod::Session,
                subject: Some("u".into()),
                issuer: None,
                email: None,
                roles: vec![],
                scopes: vec![],
                claims: Arc::new(Default::default()),
                jti: None,
                iat: None,
                session: None,
                expires_at: None,
                rendered: Default::default(),
            }),
            expires_ms: None,
            original_max_age_ms: None,
            valid_until: Instant::now() + Duration::from_secs(60),
            last_touch_ms: AtomicI64::new(0),
        })
    }

    /// A token is admitted the second time it is verified; another token
    /// in between (a different slot) changes nothing; the cache off admits
    /// nothing.
    #[test]
    fn tokens_are_cached_on_their_second_verification() {
        let c = TokenCache::new(100, Duration::from_secs(60));
        let a = TokenCache::key("token-a").unwrap();
        let b = TokenCache::key("token-b").unwrap();
        assert!(!c.admit(&a), "admitted on first sight");
        assert!(!c.admit(&b));
        assert!(c.admit(&a), "not admitted on second sight");
        assert!(c.admit(&b));
        let off = TokenCache::new(0, Duration::from_secs(60));
        assert!(!off.admit(&a) && !off.admit(&a));
        // many distinct tokens: each seen once, none admitted
        let admitted = (0..10_000)
            .filter(|i| c.admit(&TokenCache::key(&format!("one-shot-{i}")).unwrap()))
            .count();
        assert_eq!(admitted, 0);
    }

    #[test]
    fn no_caching_without_tracking_and_invalidation_evicts() {
        let c = SessionCache::new(100, Duration::from_secs(60), "sess:".into());
        c.insert("a", c.generation(), entry());
        assert!(c.get("a").is_none(), "cached while not tracking");
        c.set_tracking(true);
        c.insert("a", c.generation(), entry());
        assert!(c.get("a").is_some());
        c.invalidate(Some(b"sess:a"));
        assert!(c.get("a").is_none());
        let g = c.generation();
        c.invalidate(Some(b"sess:other"));
        c.insert("a", g, entry());
        assert!(
            c.get("a").is_none(),
            "a lookup older than an invalidation was cached"
        );
    }
}
