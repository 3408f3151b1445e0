//! The verified identity and the header hygiene around it, in one auditable
//! place (rpxy's header_ops idea): which client headers are stripped, which
//! identity headers are injected, and how `X-Forwarded-For` is trusted.

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::sync::Arc;

/// How the identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    Session,
}

impl AuthMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::Session => "session",
        }
    }
}

/// Who the request is from, as verified by a token or session.
#[derive(Debug, Clone)]
pub struct Identity {
    pub method: AuthMethod,
    pub subject: Option<String>,
    /// The issuer's name in the config (JWT only).
    pub issuer: Option<Arc<str>>,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    /// Every claim (or session field), for route header mappings.
    pub claims: Arc<Map<String, Value>>,
    /// The token's `jti` (revocation by token).
    pub jti: Option<String>,
    /// The token's `iat` in unix seconds (revocation by subject).
    pub iat: Option<i64>,
    /// The session id, for an identity from a session cookie: a running
    /// stream ends when the session is destroyed (`streams.rs`).
    pub session: Option<Arc<str>>,
    /// Unix seconds from which the credential no longer passes (a
    /// token's `exp` plus its issuer's leeway): a running stream is ended
    /// then (`streams.rs`).
    pub expires_at: Option<i64>,
    /// The identity headers' values, rendered on first use.
    pub rendered: std::sync::OnceLock<Rendered>,
}

/// The identity headers' values, rendered once per identity: a cached
/// token's identity serves every later request with that token, and cloning
/// a `HeaderValue` is a reference count, not an allocation and a copy.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub subject: Option<HeaderValue>,
    pub issuer: Option<HeaderValue>,
    pub email: Option<HeaderValue>,
    pub roles: Option<HeaderValue>,
    pub scopes: Option<HeaderValue>,
}

/// Roles from `roles` or `role`: a string (one role) or an array of strings.
pub fn roles_of(claims: &Map<String, Value>) -> Vec<String> {
    let v = claims.get("roles").or_else(|| claims.get("role"));
    strings(v, false)
}

/// Scopes from `scope` (space-separated string) or `scp` (array, or string).
pub fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let v = claims.get("scope").or_else(|| claims.get("scp"));
    strings(v, true)
}

fn strings(v: Option<&Value>, split_spaces: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split_spaces => {
            s.split_whitespace().map(str::to_string).collect()
        }
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl Identity {
    /// Builds a JWT identity from verified claims. Of the claims map it
    /// keeps only the names in `keep` (the runtime's
    /// [`Runtime::kept_claims`](crate::runtime::Runtime::kept_claims): what
    /// route header mappings and the assertion read): a cached identity
    /// lives until the token expires, and the rest of the claims would be
    /// most of its memory.
    pub fn from_jwt(issuer: Arc<str>, mut claims: Map<String, Value>, keep: &[String]) -> Identity {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        let email = claims
            .get("email")
            .and_then(Value::as_str)
            .map(str::to_string);
        let jti = match claims.get("jti") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let iat = claims.get("iat").and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
        });
        let roles = roles_of(&claims);
        let scopes = scopes_of(&claims);
        claims.retain(|name, _| keep.iter().any(|k| k == name));
        Identity {
            method: AuthMethod::Jwt,
            subject,
            issuer: Some(issuer),
            email,
            roles,
            scopes,
            claims: Arc::new(claims),
            jti,
            iat,
            session: None,
            expires_at: None,
            rendered: Default::default(),
        }
    }

    /// The `X-Auth-*` values, rendered on the first call (control
    /// characters percent-encoded, lists comma-joined). All five are slices
    /// of one buffer: a cached identity is dropped cold when the cache
    /// evicts it, and each separate allocation is a cache miss to free
    /// (docs/performance.md, "Why a cache miss costs more than no cache").
    pub fn rendered(&self) -> &Rendered {
        self.rendered.get_or_init(|| {
            let mut buf = Vec::new();
            // appends the items comma-joined; their span in `buf`
            let mut put = |items: &mut dyn Iterator<Item = &str>| {
                let start = buf.len();
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(header_safe(item).as_bytes());
                }
                (start, buf.len())
            };
            let spans = [
                self.subject
                    .as_deref()
                    .map(|s| put(&mut std::iter::once(s))),
                self.issuer.as_deref().map(|s| put(&mut std::iter::once(s))),
                self.email.as_deref().map(|s| put(&mut std::iter::once(s))),
                (!self.roles.is_empty()).then(|| put(&mut self.roles.iter().map(String::as_str))),
                (!self.scopes.is_empty()).then(|| put(&mut self.scopes.iter().map(String::as_str))),
            ];
            let all = bytes::Bytes::from(buf);
            let value = |span: Option<(usize, usize)>| {
                let (a, b) = span?;
                HeaderValue::from_maybe_shared(all.slice(a..b)).ok()
            };
            Rendered {
                subject: value(spans[0]),
                issuer: value(spans[1]),
                email: value(spans[2]),
                roles: value(spans[3]),
                scopes: value(spans[4]),
            }
        })
    }

    /// A claim rendered as a header value: strings as they are, numbers and
    /// booleans in JSON form, arrays of scalars comma-joined, objects as
    /// compact JSON. `None` when the claim is absent or null.
    pub fn claim_value(&self, name: &str) -> Option<String> {
        let v = lookup(&self.claims, name)?;
        let s = match v {
            Value::Null => return None,
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        Some(s)
    }
}

/// Looks up a claim by name, or by a dotted path into nested objects when no
/// claim has the full name.
pub fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Makes a claim safe to put in a header: control characters (CR, LF, NUL,
/// ...) are percent-encoded, so a claim can never split or end a header.
/// `%` itself is left alone; backends see the claim otherwise unchanged.
pub fn header_safe(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.bytes().any(breaks_header) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if c.is_ascii() && breaks_header(c as u8) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A byte no header value may hold (what `HeaderValue::from_str` refuses):
/// a control character other than tab, or DEL.
pub fn breaks_header(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// True for a header the gateway owns and a client must never set: any
/// `X-Auth-*`, or one named in some route's `headers` map.
pub fn is_reserved(name: &HeaderName, mapped: &[HeaderName]) -> bool {
    is_reserved_name(name.as_str(), mapped)
}

/// [`is_reserved`] for a name as the client spelled it (any case), with
/// no allocation: the direct path checks each client header with it.
/// Many frameworks (CGI, PHP, nginx with underscores_in_headers) read
/// `X_Auth_Subject` as `X-Auth-Subject`, so `_` counts as `-` here.
pub fn is_reserved_name(name: &str, mapped: &[HeaderName]) -> bool {
    // `m` is a lowercase header name; `n` matches it with `_` for `-`
    fn same(m: &[u8], n: &[u8]) -> bool {
        m.len() == n.len()
            && m.iter()
                .zip(n)
                .all(|(&m, &n)| m == n.to_ascii_lowercase() || (m == b'-' && n == b'_'))
    }
    let n = name.as_bytes();
    n.get(..7).is_some_and(|p| same(b"x-auth-", p))
        || mapped.iter().any(|m| same(m.as_str().as_bytes(), n))
        || OVERRIDES.names().iter().any(|m| same(m.as_bytes(), n))
        || (memchr::memchr(b'_', n).is_some()
            && (UNDERSCORED.names().iter().any(|m| same(m.as_bytes(), n))
                || n.get(..12).is_some_and(|p| same(b"x-forwarded-", p))))
}

/// The one list of header names the gateway has a rule for, and which
/// rules: both transports, the config check and the identity writer read
/// it, so a name cannot be stripped on one path and passed on the other.
/// A name may carry several rules.
pub const HEADER_RULES: &[(&str, u16)] = &[
    ("content-length", UNDERSCORE | PROTECTED | DIRECT_REFUSES),
    ("transfer-encoding", UNDERSCORE | PROTECTED | DIRECT_REFUSES),
    ("host", UNDERSCORE | PROTECTED),
    ("connection", UNDERSCORE | PROTECTED | RESPONSE_HOP),
    (
        "keep-alive",
        UNDERSCORE | PROTECTED | DIRECT_REFUSES | RESPONSE_HOP,
    ),
    (
        "proxy-connection",
        UNDERSCORE | PROTECTED | DIRECT_REFUSES | RESPONSE_HOP,
    ),
    ("te", UNDERSCORE | PROTECTED | DIRECT_REFUSES),
    ("trailer", UNDERSCORE | PROTECTED | DIRECT_REFUSES),
    ("upgrade", UNDERSCORE | PROTECTED | DIRECT_REFUSES),
    ("proxy-authenticate", DIRECT_REFUSES),
    ("proxy-authorization", DIRECT_REFUSES),
    ("http2-settings", DIRECT_REFUSES),
    ("expect", DIRECT_REFUSES),
    ("forwarded", UNDERSCORE | PROXY_SET),
    ("x-real-ip", UNDERSCORE | PROXY_SET),
    ("x-forwarded-host", PROXY_SET),
    ("x-forwarded-port", PROXY_SET),
    ("x-forwarded-prefix", PROXY_SET),
    ("x-forwarded-server", PROXY_SET),
    ("content-type", UNDERSCORE),
    ("authorization", PROTECTED),
    ("cookie", PROTECTED),
    ("x-forwarded-for", PROTECTED),
    ("x-forwarded-proto", PROTECTED),
    ("x-original-url", OVERRIDE),
    ("x-rewrite-url", OVERRIDE),
    ("x-http-method-override", OVERRIDE),
    ("x-http-method", OVERRIDE),
    ("x-method-override", OVERRIDE),
];

/// Framing, routing and forwarding fields whose `_` spellings a
/// CGI/Rack-style backend reads as the real field (Puma CVE-2024-45614;
/// nginx drops every name with `_` by default): a client's
/// `Content_Length` or `X_Forwarded_For` (every `X_Forwarded_*`) never
/// reaches the upstream. The `-` spellings are the gateway's to handle.
pub const UNDERSCORE: u16 = 1;
/// Fields some frameworks read in place of the request line: a URL
/// (Symfony and IIS's `X-Original-URL`, `X-Rewrite-URL`) or a method
/// (`X-HTTP-Method-Override` and kin). A client's copy would make the
/// backend serve a path or method other than the one the route was
/// chosen for, so no client's copy reaches it, in any spelling.
pub const OVERRIDE: u16 = 1 << 1;
/// Forwarding fields only a proxy in front may set: a backend that trusts
/// them takes its host, port, path prefix or client address from them.
/// They reach the upstream only from a peer in `trusted_proxies`.
pub const PROXY_SET: u16 = 1 << 2;
/// Fields a route's claim mapping (`headers`) may not name: framing,
/// hop-by-hop, the credentials forwarded unchanged, and the forwarding
/// fields the gateway writes.
pub const PROTECTED: u16 = 1 << 3;
/// Fields that send a request to the general transport: framing,
/// hop-by-hop fields that need stripping or nominating (RFC 9110 §7.6.1),
/// upgrades and expectations. (`Connection: keep-alive|close` alone is
/// the direct transport's.)
pub const DIRECT_REFUSES: u16 = 1 << 4;
/// Hop-by-hop fields of an upstream response that the gateway replaces
/// with its own (`Connection`) on the direct transport.
pub const RESPONSE_HOP: u16 = 1 << 5;

/// The names of [`HEADER_RULES`] that carry one rule, picked out at
/// compile time: the per-header checks of the request path walk only
/// these (a handful of names), not the whole table.
pub struct RuleNames {
    names: [&'static str; HEADER_RULES.len()],
    len: usize,
}

impl RuleNames {
    const fn of(rule: u16) -> RuleNames {
        let mut names = [""; HEADER_RULES.len()];
        let mut len = 0;
        let mut i = 0;
        while i < HEADER_RULES.len() {
            if HEADER_RULES[i].1 & rule != 0 {
                names[len] = HEADER_RULES[i].0;
                len += 1;
            }
            i += 1;
        }
        RuleNames { names, len }
    }

    /// The names, lower case.
    pub fn names(&self) -> &[&'static str] {
        &self.names[..self.len]
    }

    /// Whether `name` (any case) is one of them.
    pub fn has(&self, name: &str) -> bool {
        self.names().iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// [`OVERRIDE`] names.
pub const OVERRIDES: RuleNames = RuleNames::of(OVERRIDE);
/// [`UNDERSCORE`] names.
pub const UNDERSCORED: RuleNames = RuleNames::of(UNDERSCORE);
/// [`PROXY_SET`] names.
pub const PROXY_SET_NAMES: RuleNames = RuleNames::of(PROXY_SET);
/// [`DIRECT_REFUSES`] names.
pub const DIRECT_REFUSED: RuleNames = RuleNames::of(DIRECT_REFUSES);
/// [`RESPONSE_HOP`] names.
pub const RESPONSE_HOPS: RuleNames = RuleNames::of(RESPONSE_HOP);

/// Whether `name` (any case, `-` spelling) carries `rule` (the config
/// check's question; the request path uses the [`RuleNames`] lists).
pub fn has_rule(name: &str, rule: u16) -> bool {
    HEADER_RULES
        .iter()
        .any(|&(n, r)| r & rule != 0 && n.eq_ignore_ascii_case(name))
}

/// Whether `name` (any case) only reaches the upstream from a trusted
/// proxy ([`PROXY_SET`]).
pub fn is_proxy_set(name: &str) -> bool {
    PROXY_SET_NAMES.has(name)
}

/// An IP address as text in a stack buffer: IPv4 (nearly every peer) is
/// written digit by digit, since `Display` runs the formatting machinery
/// (about 2,600 instructions, twice per request: `X-Forwarded-For` and the
/// request log); IPv6 goes through `Display`.
pub struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    /// Renders `ip`.
    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 46],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
                // at most 45 bytes ("ffff:...:255.255.255.255"): always fits
                if write!(cursor, "{v6}").is_ok() {
                    t.len = usize::try_from(cursor.position()).unwrap_or(0);
                }
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// The text (ASCII digits, dots, colons and hex).
    pub fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }
}

/// The client address the backend should see: the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy when the peer itself
/// is trusted; the peer otherwise (a client cannot choose its own address).
pub fn client_ip(peer: IpAddr, xff: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(xff) = xff else { return peer };
    let mut last = peer;
    for entry in xff.rsplit(',') {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                last = ip;
                if !trusted.iter().any(|n| n.contains(&ip)) {
                    return ip;
                }
            }
            Err(_) => return last,
        }
    }
    last
}

#[cfg(test)]
mod tests {
    /// Each name once, lower case, with at least one rule: a second
    /// entry would let one path read another rule than the other.
    #[test]
    fn header_rules_name_each_field_once() {
        let mut seen = std::collections::HashSet::new();
        for (name, rules) in HEADER_RULES {
            assert!(seen.insert(*name), "{name} listed twice");
            assert_eq!(*name, name.to_ascii_lowercase());
            assert_ne!(*rules, 0, "{name}");
        }
        assert!(has_rule("Transfer-Encoding", DIRECT_REFUSES));
        assert!(has_rule("KEEP-ALIVE", RESPONSE_HOP));
        assert!(!has_rule("connection", DIRECT_REFUSES));
        assert!(has_rule("cookie", PROTECTED));
        assert!(is_proxy_set("X-Forwarded-Host"));
        assert_eq!(OVERRIDES.names().len(), 5);
        assert_eq!(DIRECT_REFUSED.names().len(), 11);
        assert_eq!(
            RESPONSE_HOPS.names(),
            ["connection", "keep-alive", "proxy-connection"]
        );
        assert!(!is_proxy_set("X-Forwarded-For"));
    }

    #[test]
    fn underscore_spellings_of_framing_and_forwarding_are_reserved() {
        use super::is_reserved_name;
        for n in [
            "Content_Length",
            "TRANSFER_ENCODING",
            "X_Forwarded_For",
            "x_forwarded-host",
            "X-Forwarded_Proto",
            "X_Auth_Subject",
            "Host_",
        ] {
            assert_eq!(is_reserved_name(n, &[]), n != "Host_", "{n}");
        }
        for n in [
            "Content-Length",
            "X-Forwarded-For",
            "Host",
            "X_Custom",
            "Accept",
        ] {
            assert!(!is_reserved_name(n, &[]), "{n}");
        }
        for n in ["X-Original-URL", "x_rewrite_url", "X-HTTP-Method-Override"] {
            assert!(is_reserved_name(n, &[]), "{n}");
        }
        assert!(super::is_proxy_set("X-Forwarded-Host"));
        assert!(super::is_proxy_set("forwarded"));
        assert!(!super::is_proxy_set("X-Forwarded-For"));
    }

    use super::*;

    #[test]
    fn a_jwt_identity_keeps_only_the_claims_it_is_asked_for() {
        let claims = serde_json::json!({
            "sub": "u1", "email": "u1@example.com", "jti": "j1", "iat": 7,
            "roles": ["a"], "scope": "s1 s2", "tenant": {"id": "t1"}, "plan": "pro",
            "big": "x".repeat(1000)
        });
        let claims = claims.as_object().cloned().unwrap_or_default();
        let keep = ["tenant.id".to_string(), "tenant".to_string()];
        let id = Identity::from_jwt("iss".into(), claims, &keep);
        // the identity's own fields come from every claim
        assert_eq!(id.subject.as_deref(), Some("u1"));
        assert_eq!(id.email.as_deref(), Some("u1@example.com"));
        assert_eq!(id.jti.as_deref(), Some("j1"));
        assert_eq!(id.iat, Some(7));
        assert_eq!(id.roles, vec!["a"]);
        assert_eq!(id.scopes, vec!["s1", "s2"]);
        // the map holds only what a mapping or the assertion can read
        assert_eq!(id.claim_value("tenant.id").as_deref(), Some("t1"));
        assert_eq!(id.claims.len(), 1);
        assert_eq!(id.claim_value("plan"), None);
        assert_eq!(id.claim_value("big"), None);
    }

    #[test]
    fn roles_and_scopes_shapes() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            roles_of(&c(serde_json::json!({"roles":["a","b"]}))),
            vec!["a", "b"]
        );
        assert_eq!(
            roles_of(&c(serde_json::json!({"role":"admin"}))),
            vec!["admin"]
        );
        assert_eq!(
            scopes_of(&c(serde_json::json!({"scope":"x y"}))),
            vec!["x", "y"]
        );
        assert_eq!(
            scopes_of(&c(serde_json::json!({"scp":["x","y"]}))),
            vec!["x", "y"]
        );
        assert!(roles_of(&c(serde_json::json!({}))).is_empty());
    }

    #[test]
    fn control_chars_never_reach_a_header() {
        assert_eq!(header_safe("a\r\nX-Evil: 1"), "a%0D%0AX-Evil: 1");
        assert_eq!(header_safe("plain"), "plain");
    }

    #[test]
    fn xff_trust() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let outsider: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!(client_ip(outsider, Some("9.9.9.9"), &trusted), outsider);
        assert_eq!(
            client_ip(peer, Some("9.9.9.9, 5.5.5.5, 10.0.0.7"), &trusted),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, None, &trusted), peer);
    }

    #[test]
    fn rendered_values_are_encoded_joined_and_absent_when_unset() {
        let claims = serde_json::json!({
            "sub": "alice\nX-Evil: 1",
            "email": "a@example.com",
            "roles": ["admin", "ops\u{7f}"],
            "scope": "",
        });
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        let id = Identity::from_jwt(Arc::from("corp"), claims, &[]);
        let r = id.rendered();
        let text = |v: &Option<HeaderValue>| v.as_ref().map(|v| v.to_str().unwrap().to_string());
        assert_eq!(text(&r.subject).as_deref(), Some("alice%0AX-Evil: 1"));
        assert_eq!(text(&r.issuer).as_deref(), Some("corp"));
        assert_eq!(text(&r.email).as_deref(), Some("a@example.com"));
        assert_eq!(text(&r.roles).as_deref(), Some("admin,ops%7F"));
        assert_eq!(text(&r.scopes), None);
        let id = Identity::from_jwt(Arc::from(""), Map::new(), &[]);
        let r = id.rendered();
        assert_eq!(text(&r.issuer).as_deref(), Some(""));
        assert!(r.subject.is_none() && r.email.is_none() && r.roles.is_none());
    }

    #[test]
    fn ip_text_is_display() {
        use super::IpText;
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.99.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
