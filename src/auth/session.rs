//! Session cookies exactly as express-session + connect-redis write them:
//! the cookie is the URL-encoded `s:<sid>.<base64 HMAC-SHA256(sid) without
//! padding>` (cookie-signature), checked against every configured secret in
//! constant time (rotation); the session is connect-redis's JSON under
//! `<key_prefix><sid>`, whose `cookie.expires` is honoured. Lookups go
//! through the [`SessionCache`]; a store error is a 503, never "no session".

use super::cache::{CachedSession, SessionCache};
use crate::denial::Reason;
use crate::identity::{lookup, AuthMethod, Identity};
use crate::metrics::Metrics;
use crate::store::Store;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use http::{HeaderMap, Method};
use serde_json::{Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::{Choice, ConstantTimeEq};

/// Longest session cookie value accepted (bytes, before decoding).
pub const MAX_COOKIE_LEN: usize = 4096;

/// The compiled `[sessions]` section.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub cookie: String,
    pub secrets: CookieSecrets,
    pub key_prefix: String,
    pub rolling: bool,
    pub touch_interval: Duration,
    pub subject: String,
    pub email: Option<String>,
    pub roles: Option<String>,
    /// Origins (scheme://host[:port], lower-case) allowed to send unsafe
    /// cookie-authenticated requests besides the request's own.
    pub allowed_origins: Vec<String>,
    pub cache_ttl: Duration,
    pub cache_size: usize,
}

/// The first cookie named `name` among all `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

/// The cookie-signing secrets as HMAC-SHA256 keys, prepared once when the
/// config is loaded: a check then hashes only the session id (aws-lc, with
/// SHA-NI or AVX2 where the CPU has them), not the padded secret again.
#[derive(Clone)]
pub struct CookieSecrets(Vec<hmac::Key>);

impl FromIterator<Vec<u8>> for CookieSecrets {
    fn from_iter<I: IntoIterator<Item = Vec<u8>>>(secrets: I) -> Self {
        CookieSecrets(
            secrets
                .into_iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, &s))
                .collect(),
        )
    }
}

impl From<Vec<Vec<u8>>> for CookieSecrets {
    fn from(secrets: Vec<Vec<u8>>) -> Self {
        secrets.into_iter().collect()
    }
}

impl std::fmt::Debug for CookieSecrets {
    // never the secrets themselves
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieSecrets({} keys)", self.0.len())
    }
}

/// The cookie-signature of `value`: base64 of its HMAC, unpadded.
fn sign(key: &hmac::Key, value: &str) -> String {
    STANDARD_NO_PAD.encode(hmac::sign(key, value.as_bytes()))
}

/// The session id of a raw (still URL-encoded) cookie value, if its
/// signature verifies under any secret. Every secret is tried, whatever
/// matched, and each comparison is constant-time.
pub fn unsign(raw: &str, secrets: &CookieSecrets) -> Result<String, Reason> {
    if raw.len() > MAX_COOKIE_LEN {
        return Err(Reason::Malformed);
    }
    let raw = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Reason::BadCookieSignature)?;
    let signed = decoded
        .strip_prefix("s:")
        .ok_or(Reason::BadCookieSignature)?;
    let (sid, sig) = signed.rsplit_once('.').ok_or(Reason::BadCookieSignature)?;
    let mut ok = Choice::from(0);
    for key in &secrets.0 {
        // the expected signature on the stack: no allocation per request
        let mut buf = [0u8; 64];
        let tag = hmac::sign(key, sid.as_bytes());
        if let Some(expected) = STANDARD_NO_PAD
            .encode_slice(tag, &mut buf)
            .ok()
            .and_then(|n| buf.get(..n))
        {
            ok |= expected.ct_eq(sig.as_bytes());
        }
    }
    if bool::from(ok) && !sid.is_empty() {
        Ok(sid.to_string())
    } else {
        Err(Reason::BadCookieSignature)
    }
}

/// Signs a session id as express-session does (tests and tools).
pub fn sign_cookie(sid: &str, secret: &[u8]) -> String {
    let sig = sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), sid);
    let raw = format!("s:{sid}.{sig}");
    percent_encoding::utf8_percent_encode(&raw, COOKIE_ENCODE).to_string()
}

/// encodeURIComponent's set (what the `cookie` module applies).
const COOKIE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A parsed stored session.
#[derive(Debug)]
pub struct ParsedSession {
    pub identity: Identity,
    pub expires_ms: Option<i64>,
    pub original_max_age_ms: Option<u64>,
}

/// Parses connect-redis's JSON. A session without the configured subject is
/// an anonymous session (express-session `saveUninitialized`) and does not
/// authenticate: `session_not_found`.
pub fn parse_session(json: &str, s: &SessionSettings) -> Result<ParsedSession, Reason> {
    let map: Map<String, Value> = match serde_json::from_str(json) {
        Ok(Value::Object(m)) => m,
        _ => return Err(Reason::Malformed),
    };
    let cookie = map.get("cookie").and_then(Value::as_object);
    let expires_ms = match cookie.and_then(|c| c.get("expires")) {
        Some(Value::String(t)) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|_| Reason::Malformed)?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        ),
        _ => None,
    };
    let original_max_age_ms = cookie
        .and_then(|c| c.get("originalMaxAge"))
        .and_then(Value::as_f64)
        .filter(|v| *v > 0.0)
        .map(|v| v as u64);
    let subject = lookup(&map, &s.subject)
        .and_then(as_text)
        .ok_or(Reason::SessionNotFound)?;
    let email = s
        .email
        .as_deref()
        .and_then(|p| lookup(&map, p))
        .and_then(as_text);
    let roles = match s.roles.as_deref().and_then(|p| lookup(&map, p)) {
        Some(Value::String(r)) if !r.is_empty() => vec![r.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(as_text).collect(),
        _ => Vec::new(),
    };
    Ok(ParsedSession {
        identity: Identity {
            method: AuthMethod::Session,
            subject: Some(subject),
            issuer: None,
            email,
            roles,
            scopes: Vec::new(),
            claims: Arc::new(map),
            jti: None,
            iat: None,
            session: None,
            expires_at: None,
            rendered: Default::default(),
        },
        expires_ms,
        original_max_age_ms,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Authenticates by session cookie: signature, cache, store, expiry, and a
/// rolling touch when due (in the background, never on the request's time).
pub async fn authenticate(
    s: &SessionSettings,
    cache: &SessionCache,
    store: &Arc<dyn Store>,
    metrics: &Metrics,
    headers: &HeaderMap,
) -> Result<Arc<Identity>, Reason> {
    let raw = cookie(headers, &s.cookie).ok_or(Reason::MissingCredentials)?;
    let sid = unsign(raw, &s.secrets)?;
    let now = now_ms();
    let entry = match cache.get(&sid) {
        Some(e) => e,
        None => {
            let generation = cache.generation();
            let key = format!("{}{}", s.key_prefix, sid);
            let rec = match store.get_session(&key).await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(Reason::SessionNotFound),
                Err(e) => {
                    metrics
                        .store_errors
                        .with_label_values(&["session_get"])
                        .inc();
                    tracing::warn!(error = %e, op = "session_get", "store error");
                    return Err(Reason::StoreUnavailable);
                }
            };
            let mut parsed = parse_session(&rec.json, s)?;
            parsed.identity.session = Some(Arc::from(sid.as_str()));
            let mut life = cache.ttl;
            if let Some(ttl) = rec.ttl_ms {
                life = life.min(Duration::from_millis(ttl));
            }
            let e = Arc::new(CachedSession {
                identity: Arc::new(parsed.identity),
                expires_ms: parsed.expires_ms,
                original_max_age_ms: parsed.original_max_age_ms,
                valid_until: Instant::now() + life,
                // The key's remaining TTL tells when it was last armed (by
                // any instance): no touch is due before touch_interval.
                last_touch_ms: std::sync::atomic::AtomicI64::new(
                    match (parsed.original_max_age_ms, rec.ttl_ms) {
                        (Some(max), Some(ttl)) if ttl <= max => now - (max - ttl) as i64,
                        _ => 0,
                    },
                ),
            });
            cache.insert(&sid, generation, e.clone());
            e
        }
    };
    if entry.expires_ms.is_some_and(|exp| exp <= now) {
        return Err(Reason::Expired);
    }
    if s.rolling {
        if let Some(max_age) = entry.original_max_age_ms {
            let last = entry.last_touch_ms.load(Ordering::Relaxed);
            let due = now - last >= s.touch_interval.as_millis() as i64;
            if due
                && entry
                    .last_touch_ms
                    .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                let store = store.clone();
                let key = format!("{}{}", s.key_prefix, sid);
                let errors = metrics.store_errors.with_label_values(&["session_touch"]);
                tokio::spawn(async move {
                    if let Err(e) = store.touch_session(&key, max_age).await {
                        errors.inc();
                        tracing::warn!(error = %e, op = "session_touch", "store error");
                    }
                });
            }
        }
    }
    Ok(entry.identity.clone())
}

/// True for the methods CSRF protection applies to.
pub fn is_unsafe(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// `scheme://host[:port]`, lower-case, default port dropped.
fn normalize_origin(scheme: &str, hostport: &str) -> String {
    let hp = hostport.to_ascii_lowercase();
    let hp = match (scheme, hp.rsplit_once(':')) {
        ("http", Some((h, "80"))) | ("https", Some((h, "443"))) => h.to_string(),
        _ => hp,
    };
    format!("{scheme}://{hp}")
}

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let hostport = rest.split(['/', '?', '#']).next()?;
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    if hostport.is_empty() {
        return None;
    }
    Some(normalize_origin(&scheme, hostport))
}

/// Whether a cookie-authenticated unsafe request is same-site enough: not
/// `Sec-Fetch-Site: cross-site`, and its `Origin` (else `Referer`'s origin)
/// is the request's own (`scheme` + `Host`) or an allowed one. A request with
/// neither header (not a browser) passes.
pub fn csrf_ok(headers: &HeaderMap, scheme: &str, allowed: &[String]) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if h("sec-fetch-site").is_some_and(|v| v.eq_ignore_ascii_case("cross-site")) {
        return false;
    }
    let presented = match h("origin") {
        Some(o) => match origin_of(o) {
            Some(o) => o,
            None => return false, // "null" or garbage: an opaque origin
        },
        None => match h("referer") {
            Some(r) => match origin_of(r) {
                Some(o) => o,
                None => return false,
            },
            None => return true,
        },
    };
    let own = h("host").map(|host| normalize_origin(scheme, host));
    own.as_deref() == Some(presented.as_str()) || allowed.contains(&presented)
}

/// Lower-cases and normalises a configured allowed origin.
pub fn normalize_allowed(origin: &str) -> Option<String> {
    origin_of(origin.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SessionSettings {
        SessionSettings {
            cookie: "sid".into(),
            secrets: vec![b"new".to_vec(), b"old".to_vec()].into(),
            key_prefix: "sess:".into(),
            rolling: false,
            touch_interval: Duration::from_secs(60),
            subject: "user.id".into(),
            email: Some("user.email".into()),
            roles: Some("role".into()),
            allowed_origins: vec![],
            cache_ttl: Duration::from_secs(60),
            cache_size: 10,
        }
    }

    #[test]
    fn express_session_cookie_vector() {
        // cookie-signature: sign('hello', 'tobiiscool')
        assert_eq!(
            sign(&hmac::Key::new(hmac::HMAC_SHA256, b"tobiiscool"), "hello"),
            "DGDUkGlIkCzPz+C0B064FNgHdEjox7ch8tOBGslZ5QI"
        );
        let c = sign_cookie("abc", b"old");
        assert!(c.starts_with("s%3Aabc."));
        assert_eq!(unsign(&c, &settings().secrets).unwrap(), "abc");
        assert_eq!(
            unsign("s%3Aabc.AAAA", &settings().secrets),
            Err(Reason::BadCookieSignature)
        );
        assert_eq!(
            unsign("abc", &settings().secrets),
            Err(Reason::BadCookieSignature)
        );
        let other = sign_cookie("abc", b"unknown");
        assert_eq!(
            unsign(&other, &settings().secrets),
            Err(Reason::BadCookieSignature)
        );
    }

    #[test]
    fn session_json() {
        let j = r#"{"cookie":{"originalMaxAge":60000,"expires":"2030-01-01T00:00:00.000Z","httpOnly":true,"path":"/"},"user":{"id":42,"email":"a@b"},"role":["admin","x"]}"#;
        let p = parse_session(j, &settings()).unwrap();
        assert_eq!(p.identity.subject.as_deref(), Some("42"));
        assert_eq!(p.identity.email.as_deref(), Some("a@b"));
        assert_eq!(p.identity.roles, vec!["admin", "x"]);
        assert_eq!(p.expires_ms, Some(1_893_456_000_000));
        assert_eq!(p.original_max_age_ms, Some(60000));
        assert!(matches!(
            parse_session(r#"{"cookie":{}}"#, &settings()),
            Err(Reason::SessionNotFound)
        ));
    }

    #[test]
    fn csrf_rules() {
        let mk = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let allowed = vec!["https://app.example".to_string()];
        assert!(csrf_ok(
            &mk(&[("host", "gw:8080"), ("origin", "http://gw:8080")]),
            "http",
            &allowed
        ));
        assert!(!csrf_ok(
            &mk(&[("host", "gw:8080"), ("origin", "http://evil")]),
            "http",
            &allowed
        ));
        assert!(csrf_ok(
            &mk(&[("host", "gw"), ("origin", "https://app.example")]),
            "http",
            &allowed
        ));
        assert!(!csrf_ok(
            &mk(&[("host", "gw"), ("origin", "null")]),
            "http",
            &allowed
        ));
        assert!(csrf_ok(
            &mk(&[("host", "gw"), ("referer", "http://gw/page?x")]),
            "http",
            &allowed
        ));
        assert!(!csrf_ok(
            &mk(&[("host", "gw"), ("referer", "http://evil/page")]),
            "http",
            &allowed
        ));
        assert!(!csrf_ok(
            &mk(&[("host", "gw"), ("sec-fetch-site", "cross-site")]),
            "http",
            &allowed
        ));
        assert!(csrf_ok(&mk(&[("host", "gw")]), "http", &allowed));
        assert!(csrf_ok(
            &mk(&[("host", "gw:80"), ("origin", "http://GW")]),
            "http",
            &allowed
        ));
    }
}
