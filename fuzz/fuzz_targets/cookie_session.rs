//! Cookie header -> session id (express-session signature) -> connect-redis
//! JSON, plus the CSRF check: arbitrary bytes never panic, and every cookie
//! that unsigns is re-checked here with an independent HMAC. Input lines:
//! Cookie header, Origin, Referer, Host, Sec-Fetch-Site, then the stored JSON.
#![no_main]

use authgate::testing::session::{cookie, csrf_ok, parse_session, unsign, SessionSettings};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;

const SECRETS: [&[u8]; 2] = [b"fuzz-session-current", b"fuzz-session-previous"];

fn settings() -> &'static SessionSettings {
    static S: OnceLock<SessionSettings> = OnceLock::new();
    S.get_or_init(|| SessionSettings {
        cookie: "sid".into(),
        secrets: SECRETS
            .iter()
            .map(|s| s.to_vec())
            .collect::<Vec<_>>()
            .into(),
        key_prefix: "sess:".into(),
        rolling: true,
        touch_interval: Duration::from_secs(60),
        subject: "user.id".into(),
        email: Some("user.email".into()),
        roles: Some("role".into()),
        allowed_origins: vec!["https://app.example".into()],
        cache_ttl: Duration::from_secs(60),
        cache_size: 16,
    })
}

/// cookie-signature's check, written independently of the gateway.
fn reference_sid(raw: &str) -> Option<String> {
    let raw = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    let signed = decoded.strip_prefix("s:")?;
    let dot = signed.rfind('.')?;
    let (sid, sig) = (&signed[..dot], &signed[dot + 1..]);
    SECRETS
        .iter()
        .any(|s| {
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(s).unwrap();
            m.update(sid.as_bytes());
            STANDARD_NO_PAD.encode(m.finalize().into_bytes()) == sig
        })
        .then(|| sid.to_string())
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(6, |b| *b == b'\n');
    let mut next = || lines.next().unwrap_or_default();
    let (cookie_line, origin, referer, host, fetch_site) = (next(), next(), next(), next(), next());
    let json = next();

    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("cookie", cookie_line),
        ("origin", origin),
        ("referer", referer),
        ("host", host),
        ("sec-fetch-site", fetch_site),
    ] {
        if value.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let s = settings();
    if let Some(raw) = cookie(&headers, &s.cookie) {
        match unsign(raw, &s.secrets) {
            Ok(sid) => {
                assert!(!sid.is_empty());
                assert_eq!(
                    reference_sid(raw).as_deref(),
                    Some(sid.as_str()),
                    "cookie {raw:?} unsigned but the reference HMAC disagrees"
                );
            }
            Err(_) => {
                // Also fine when the reference accepts: over-long cookies and
                // empty ids are refused by the gateway on purpose.
            }
        }
    }
    let ok = csrf_ok(&headers, "https", &s.allowed_origins);
    let cross = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("cross-site"));
    if cross {
        assert!(!ok, "Sec-Fetch-Site: cross-site passed the CSRF check");
    }
    if let Ok(text) = std::str::from_utf8(json) {
        if let Ok(p) = parse_session(text, s) {
            assert!(p.identity.subject.as_deref().is_some_and(|s| !s.is_empty()));
        }
    }
});
