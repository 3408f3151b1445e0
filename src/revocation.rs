//! The local mirror of revocations that every request consults: revoked
//! `jti`s (each until its `exp`) and per-subject "revoked before" cutoffs.
//! It never needs the store: the Redis watcher fills it on start, applies
//! pub/sub announcements as they arrive and re-reads everything on reconnect
//! and periodically (merging, since a revocation is never undone), so a lost
//! message heals. Expired `jti`s are pruned by time.

use crate::identity::Identity;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

/// Longest `jti` or subject accepted by the admin API (bytes).
pub const MAX_ID_LEN: usize = 512;
/// Most revoked `jti`s held; beyond it new revocations are refused (507)
/// rather than silently dropped. About 160-260 bytes each for 40-byte jtis
/// (measured, see docs/performance.md), so at most ~260 MB.
pub const MAX_JTIS: usize = 1_000_000;
/// Furthest a revoked token's `exp` may lie ahead (ten years): larger
/// values are not expiry times and would not survive the store as integers.
pub const MAX_EXP_AHEAD: i64 = 10 * 366 * 86_400;

/// One revocation, as announced on the channel and applied to mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Revocation {
    /// A token by its `jti`, until `exp` (unix seconds).
    Jti { jti: String, exp: i64 },
    /// Every token of `sub` (from issuer `iss` only, when set) whose `iat`
    /// is at or before `before` (unix seconds).
    Sub {
        sub: String,
        iss: Option<String>,
        before: i64,
    },
    /// A session by id.
    Session { sid: String },
}

impl Revocation {
    /// The metrics `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Revocation::Jti { .. } => "jti",
            Revocation::Sub { .. } => "sub",
            Revocation::Session { .. } => "session",
        }
    }
}

/// The field name of a subject cutoff in the store: issuer name (or `*`
/// for every issuer), a newline, the subject.
pub fn sub_field(sub: &str, iss: Option<&str>) -> String {
    format!("{}\n{}", iss.unwrap_or("*"), sub)
}

/// Splits a [`sub_field`] back.
pub fn parse_sub_field(field: &str) -> Option<(String, Option<String>)> {
    let (iss, sub) = field.split_once('\n')?;
    let iss = (iss != "*").then(|| iss.to_string());
    Some((sub.to_string(), iss))
}

#[derive(Default)]
struct Maps {
    jtis: HashMap<String, i64>,
    /// sub -> [(issuer name or every issuer, cutoff)]
    subs: HashMap<String, Vec<(Option<String>, i64)>>,
}

/// The mirror.
#[derive(Default)]
pub struct Revocations {
    maps: RwLock<Maps>,
    /// Fast path: nothing revoked at all.
    any: AtomicBool,
    jti_count: AtomicUsize,
    sub_count: AtomicUsize,
}

/// Why a revocation could not be recorded locally.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("the revocation list is full ({0} jtis)")]
    Full(usize),
}

impl Revocations {
    /// Whether this identity's token is revoked. Sessions are destroyed in
    /// the store instead, so only JWT identities are checked here.
    pub fn is_revoked(&self, id: &Identity) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let Ok(maps) = self.maps.read() else {
            return true; // poisoned: fail closed
        };
        if let Some(jti) = id.jti.as_deref() {
            if maps.jtis.contains_key(jti) {
                return true;
            }
        }
        if let Some(sub) = id.subject.as_deref() {
            if let Some(cutoffs) = maps.subs.get(sub) {
                let issuer = id.issuer.as_deref();
                for (iss, before) in cutoffs {
                    if iss.is_none() || iss.as_deref() == issuer {
                        match id.iat {
                            Some(iat) if iat > *before => {}
                            _ => return true,
                        }
                    }
                }
            }
        }
        false
    }

    /// Applies one revocation (idempotent; a later cutoff replaces an
    /// earlier one). Expired `jti`s are ignored.
    pub fn apply(&self, r: &Revocation, now: i64) -> Result<(), MirrorError> {
        let Ok(mut maps) = self.maps.write() else {
            return Ok(());
        };
        match r {
            Revocation::Jti { jti, exp } => {
                if *exp <= now {
                    return Ok(());
                }
                if maps.jtis.len() >= MAX_JTIS && !maps.jtis.contains_key(jti) {
                    return Err(MirrorError::Full(MAX_JTIS));
                }
                let e = maps.jtis.entry(jti.clone()).or_insert(*exp);
                *e = (*e).max(*exp);
            }
            Revocation::Sub { sub, iss, before } => {
                let list = maps.subs.entry(sub.clone()).or_default();
                match list.iter_mut().find(|(i, _)| i == iss) {
                    Some((_, b)) => *b = (*b).max(*before),
                    None => list.push((iss.clone(), *before)),
                }
            }
            Revocation::Session { .. } => return Ok(()),
        }
        self.recount(&maps);
        Ok(())
    }

    /// Drops `jti`s whose `exp` has passed.
    pub fn prune(&self, now: i64) {
        let Ok(mut maps) = self.maps.write() else {
            return;
        };
        maps.jtis.retain(|_, exp| *exp > now);
        self.recount(&maps);
    }

    fn recount(&self, maps: &Maps) {
        let subs: usize = maps.subs.values().map(Vec::len).sum();
        self.jti_count.store(maps.jtis.len(), Ordering::Relaxed);
        self.sub_count.store(subs, Ordering::Relaxed);
        self.any
            .store(!maps.jtis.is_empty() || subs > 0, Ordering::Release);
    }

    /// What the mirror holds that `stored` (the store's whole list, just
    /// read) lacks: unexpired `jti`s it does not have (or has with an
    /// earlier `exp`), and subject cutoffs it does not have (or has
    /// earlier). After a store lost data (`FLUSHALL`, a failover to a
    /// replica that missed writes) these are written back, so the store
    /// converges to the union and an instance started later enforces them.
    pub fn missing_from(&self, stored: &[Revocation], now: i64) -> Vec<Revocation> {
        let Ok(maps) = self.maps.read() else {
            return Vec::new();
        };
        let mut jtis: HashMap<&str, i64> = HashMap::with_capacity(stored.len());
        let mut subs: HashMap<(&str, Option<&str>), i64> = HashMap::new();
        for r in stored {
            match r {
                Revocation::Jti { jti, exp } => {
                    let e = jtis.entry(jti.as_str()).or_insert(*exp);
                    *e = (*e).max(*exp);
                }
                Revocation::Sub { sub, iss, before } => {
                    let b = subs
                        .entry((sub.as_str(), iss.as_deref()))
                        .or_insert(*before);
                    *b = (*b).max(*before);
                }
                Revocation::Session { .. } => {}
            }
        }
        let mut out = Vec::new();
        for (jti, exp) in &maps.jtis {
            if *exp > now && jtis.get(jti.as_str()).is_none_or(|e| e < exp) {
                out.push(Revocation::Jti {
                    jti: jti.clone(),
                    exp: *exp,
                });
            }
        }
        for (sub, cutoffs) in &maps.subs {
            for (iss, before) in cutoffs {
                let have = subs.get(&(sub.as_str(), iss.as_deref()));
                if have.is_none_or(|b| b < before) {
                    out.push(Revocation::Sub {
                        sub: sub.clone(),
                        iss: iss.clone(),
                        before: *before,
                    });
                }
            }
        }
        out
    }

    /// (revoked jtis, subject cutoffs) currently mirrored.
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.jti_count.load(Ordering::Relaxed),
            self.sub_count.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthMethod;
    use std::sync::Arc;

    fn id(sub: &str, jti: Option<&str>, iat: Option<i64>, iss: &str) -> Identity {
        Identity {
            method: AuthMethod::Jwt,
            subject: Some(sub.into()),
            issuer: Some(Arc::from(iss)),
            email: None,
            roles: vec![],
            scopes: vec![],
            claims: Arc::new(Default::default()),
            jti: jti.map(String::from),
            iat,
            session: None,
            expires_at: None,
            rendered: Default::default(),
        }
    }

    #[test]
    fn what_the_store_lost_is_found_for_writing_back() {
        let m = Revocations::default();
        let now = 1_000;
        let jti = |j: &str, exp| Revocation::Jti { jti: j.into(), exp };
        let sub = |s: &str, iss: Option<&str>, before| Revocation::Sub {
            sub: s.into(),
            iss: iss.map(str::to_string),
            before,
        };
        let all = [
            jti("kept", 2_000),
            jti("lost", 2_000),
            jti("longer", 3_000),
            sub("alice", None, 900),
            sub("bob", Some("hs"), 800),
            sub("carol", None, 950),
        ];
        for r in &all {
            m.apply(r, now).unwrap();
        }
        let stored = [
            jti("kept", 2_000),
            jti("longer", 2_500),
            sub("alice", None, 900),
            sub("carol", None, 700),
        ];
        let mut missing = m.missing_from(&stored, now);
        missing.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            missing,
            [
                jti("longer", 3_000),
                jti("lost", 2_000),
                sub("bob", Some("hs"), 800),
                sub("carol", None, 950),
            ]
        );
        // jtis that expired meanwhile are not written back
        let later = m.missing_from(&stored, 3_000);
        assert!(later.iter().all(|r| !matches!(r, Revocation::Jti { .. })));
        assert_eq!(later.len(), 2);
        // nothing is missing from a store that has all of it
        assert!(m.missing_from(&all, now).is_empty());
    }

    #[test]
    fn jti_and_subject_rules() {
        let r = Revocations::default();
        assert!(!r.is_revoked(&id("a", Some("j1"), Some(100), "main")));
        r.apply(
            &Revocation::Jti {
                jti: "j1".into(),
                exp: 200,
            },
            150,
        )
        .unwrap();
        assert!(r.is_revoked(&id("a", Some("j1"), Some(100), "main")));
        assert!(!r.is_revoked(&id("a", Some("j2"), Some(100), "main")));
        r.apply(
            &Revocation::Sub {
                sub: "a".into(),
                iss: None,
                before: 120,
            },
            150,
        )
        .unwrap();
        assert!(
            r.is_revoked(&id("a", Some("j2"), Some(120), "main")),
            "iat at the cutoff is revoked"
        );
        assert!(!r.is_revoked(&id("a", Some("j2"), Some(121), "main")));
        assert!(
            r.is_revoked(&id("a", Some("j2"), None, "main")),
            "no iat: revoked"
        );
        r.apply(
            &Revocation::Sub {
                sub: "b".into(),
                iss: Some("other".into()),
                before: 120,
            },
            150,
        )
        .unwrap();
        assert!(
            !r.is_revoked(&id("b", None, Some(100), "main")),
            "narrowed to another issuer"
        );
        assert!(r.is_revoked(&id("b", None, Some(100), "other")));
        r.prune(250);
        assert!(!r.is_revoked(&id("x", Some("j1"), Some(100), "main")));
        assert_eq!(r.sizes(), (0, 2));
    }

    #[test]
    fn wire_format() {
        let m = Revocation::Jti {
            jti: "x".into(),
            exp: 5,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(s, r#"{"kind":"jti","jti":"x","exp":5}"#);
        assert_eq!(serde_json::from_str::<Revocation>(&s).unwrap(), m);
        assert_eq!(
            parse_sub_field(&sub_field("u", Some("i"))),
            Some(("u".into(), Some("i".into())))
        );
        assert_eq!(
            parse_sub_field(&sub_field("u", None)),
            Some(("u".into(), None))
        );
    }
}
