//! Property tests (issue 8) for what decides where a request goes and how it
//! is counted: the router (`normalize`, `host_of`, `Router::resolve` against
//! a brute-force reference of the contract's rules), the config loader
//! (`config::load_str` on arbitrary and TOML-shaped text, durations included:
//! Ok or positioned errors, never a panic), and rate-limit keys
//! (`KeySpec::parse`, `key_for` with arbitrary headers and bodies).
//!
//! In-process (no gateway), so each property runs in well under ten seconds.

use authgate::testing::load_str;
use authgate::testing::Reason;
use authgate::testing::{host_of, normalize, Matcher, Router};
use authgate::testing::{key_for, BodyPrefix, KeySpec};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;

// ---------------------------------------------------------------------------
// router

#[path = "reference/rl_key.rs"]
mod rl_key;
use rl_key::key_shape_ok;

#[path = "reference/route.rs"]
mod route_reference;
use route_reference::{has_hidden_separator, is_dot_segment, reference, unsafe_path};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,4}",
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just("..;".to_string()),
        Just("%2f".to_string()),
        Just("..;x=1".to_string()),
        Just("%5C".to_string()),
        Just("a\\b".to_string()),
        Just(String::new()),
        "[ -~]{0,4}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
        1 => ".{0,20}",
        1 => Just("*".to_string()),
    ]
}

fn matcher() -> impl Strategy<Value = Matcher> {
    let small_path = prop::collection::vec(
        prop::sample::select(vec!["api", "a", "b", "login", "admin", ""]),
        0..3,
    )
    .prop_map(|s| format!("/{}", s.join("/")));
    (
        prop::option::of(small_path.clone()),
        prop::option::of(prop_oneof![
            small_path.clone(),
            small_path.prop_map(|p| format!("{p}/"))
        ]),
        prop::option::of(prop::sample::select(vec![
            "a.example",
            "*.example",
            "A.EXAMPLE",
            "*.a.example",
            "",
        ])),
        prop::collection::vec(prop::sample::select(vec!["GET", "POST", "get"]), 0..3),
    )
        .prop_map(|(path, path_prefix, host, methods)| Matcher {
            path,
            path_prefix,
            host: host.map(String::from),
            methods: methods.into_iter().map(String::from).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// `normalize` never lets a dot-segment through (plain or %2e-encoded),
    /// merges `//`, is idempotent, and refuses only unsafe paths.
    #[test]
    fn normalize_is_safe_and_idempotent(p in path()) {
        match normalize(&p) {
            Ok(n) => {
                prop_assert!(n.starts_with('/') || n == "*");
                prop_assert!(!n.contains("//"), "{:?} -> {:?}", p, n);
                prop_assert!(!n.split('/').any(is_dot_segment), "{:?} -> {:?}", p, n);
                prop_assert!(!p.split('/').any(is_dot_segment), "{:?} had a dot segment", p);
                prop_assert!(!has_hidden_separator(&n), "{:?} -> {:?}", p, n);
                let again = normalize(&n);
                prop_assert_eq!(again.as_deref().ok(), Some(&*n));
            }
            Err(_) => prop_assert!(unsafe_path(&p), "refused the safe path {:?}", p),
        }
    }

    /// `host_of` never panics and returns a part of the header.
    #[test]
    fn host_of_is_a_substring(h in prop::option::of(".{0,30}")) {
        let host = host_of(h.as_deref());
        if let Some(h) = &h {
            prop_assert!(h.contains(host));
            if !h.starts_with('[') {
                prop_assert!(!host.contains(':') || h.matches(':').count() > 1);
            }
        } else {
            prop_assert_eq!(host, "");
        }
    }

    /// The router picks exactly what the contract's rules pick: an exact path
    /// first, then the longest matching prefix, file order breaking ties, a
    /// route whose host or methods don't match skipped.
    #[test]
    fn router_matches_reference(
        ms in prop::collection::vec(matcher(), 0..8),
        host_header in prop::option::of(prop::sample::select(vec![
            "a.example", "A.Example:8080", "x.a.example", "example", "b.example", "[::1]:80", "x.example:1",
        ])),
        method in prop::sample::select(vec!["GET", "POST", "DELETE", "get"]),
        p in path(),
    ) {
        let r = Router::new(ms.clone());
        let host = host_of(host_header);
        if let Ok(n) = normalize(&p) {
            prop_assert_eq!(r.resolve(host, method, &n), reference(&ms, host, method, &n));
        }
    }
}

// ---------------------------------------------------------------------------
// config

static ENV: Once = Once::new();

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(text: &str) -> Result<(), authgate::testing::ConfigErrors> {
    ENV.call_once(|| {
        std::env::set_var("PROP_HS_SECRET", "proptest-config-secret-0123456789abcdef");
        std::env::set_var("PROP_SESSION_SECRET", "proptest-session-secret-0123456789");
        std::env::set_var("PROP_ADMIN_TOKEN", "proptest-admin-token-0123456789");
    });
    load_str("prop.toml", text, &fixtures()).map(|_| ())
}

/// Loads and checks the error report's shape: every error positioned inside
/// the text, `FILE:LINE:COL: message` lines.
fn load_checked(text: &str) -> Result<bool, TestCaseError> {
    match load(text) {
        Ok(()) => Ok(true),
        Err(e) => {
            prop_assert!(!e.errors.is_empty());
            let lines = text.split('\n').count().max(1);
            for err in &e.errors {
                prop_assert!(err.line >= 1 && err.col >= 1, "{:?}", err);
                prop_assert!(
                    err.line <= lines,
                    "{:?} is past the end ({} lines)",
                    err,
                    lines
                );
            }
            let shown = e.to_string();
            for l in shown.lines() {
                prop_assert!(l.starts_with("prop.toml:"), "{}", l);
            }
            Ok(false)
        }
    }
}

/// A config that loads: the base for one-value mutations.
const VALID: &str = r#"[server]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:19090"
threads = 2
trusted_proxies = ["127.0.0.1/32"]
grace_period = "5s"

[admin]
token_env = "PROP_ADMIN_TOKEN"

[store]
kind = "redis"
url = "redis://127.0.0.1:6399/0"
on_error = "deny"

[token_cache]
size = 100
max_ttl = "5m"

[upstreams.app]
addrs = ["127.0.0.1:3000"]
connect_timeout = "2s"
read_timeout = "30s"

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "PROP_HS_SECRET"
leeway = "30s"

[issuers.rs]
issuer = "https://rs.test"
algorithms = ["RS256"]
public_key_file = "rsa_pub.pem"

[sessions]
cookie = "sid"
secrets_env = ["PROP_SESSION_SECRET"]
key_prefix = "sess:"
rolling = true
touch_interval = "1m"
cache_ttl = "10s"
identity = { subject = "userId", email = "email", roles = "role" }

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"
issuers = ["hs", "rs"]
require = { roles = ["admin"] }
headers = { "X-User-Id" = "sub" }

[[routes]]
name = "login"
path = "/login"
methods = ["POST"]
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "form:username"
limit = 5
window = "1m"
count = "failures"

[[routes]]
name = "app"
path_prefix = "/app/"
host = "*.example.com"
upstream = "app"
auth = "jwt_or_session"
login_redirect = "/login"
"#;

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("30s".to_string()),
        Just("0s".to_string()),
        Just("".to_string()),
        Just("-1s".to_string()),
        Just("1 h 2m".to_string()),
        Just("18446744073709551615s".to_string()),
        Just("18446744073709551616s".to_string()),
        Just("584942417355y".to_string()),
        Just("999999999999999999999999y".to_string()),
        Just("1e9s".to_string()),
        Just("1.5h".to_string()),
        Just("5ns".to_string()),
        Just("10000000000d".to_string()),
        (
            any::<u64>(),
            prop::sample::select(vec![
                "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "x", ""
            ])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        "[0-9a-z .]{0,10}",
    ]
}

/// A TOML value of some type (what a key might wrongly or rightly be given).
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        duration_text().prop_map(|d| format!("{d:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just(r#""redis://user:pw@127.0.0.1:1/0""#.to_string()),
        Just(r#""rediss://127.0.0.1:1/99999999999""#.to_string()),
        Just(r#""http://[::1""#.to_string()),
        Just(r#""ip""#.to_string()),
        Just(r#""json:a.b""#.to_string()),
        Just(r#""header:X Bad""#.to_string()),
        Just(r#""form:""#.to_string()),
        Just(r#"["HS256", "none", "RS256"]"#.to_string()),
        Just(r#"["0.0.0.0/0", "::/0", "300.1.1.1/40"]"#.to_string()),
        Just(r#"{ subject = "a.b.c" }"#.to_string()),
        Just(r#"{ "X-Auth-Subject" = "sub", "Host" = "x" }"#.to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        "\"[ -~]{0,12}\"".prop_map(|s| s.replace('\\', "")),
        "[ -~]{0,12}",
    ]
}

fn key_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "listen",
        "admin_listen",
        "threads",
        "trusted_proxies",
        "grace_period",
        "token_env",
        "token_file",
        "kind",
        "url",
        "urls",
        "sentinels",
        "master",
        "on_error",
        "ca_file",
        "size",
        "max_ttl",
        "addrs",
        "tls",
        "sni",
        "connect_timeout",
        "read_timeout",
        "issuer",
        "audiences",
        "algorithms",
        "jwks_url",
        "jwks_file",
        "public_key_file",
        "secret_env",
        "secret_file",
        "private_key_file",
        "leeway",
        "jwks_min_refresh",
        "jwks_max_refresh",
        "jwks_cooldown",
        "cookie",
        "secrets_env",
        "secrets_files",
        "key_prefix",
        "rolling",
        "touch_interval",
        "identity",
        "allowed_origins",
        "cache_ttl",
        "cache_size",
        "name",
        "path",
        "path_prefix",
        "host",
        "methods",
        "upstream",
        "auth",
        "issuers",
        "require",
        "login_redirect",
        "headers",
        "assertion",
        "key",
        "limit",
        "window",
        "count",
        "algorithm",
        "key_file",
        "audience",
        "ttl",
        "jwks_path",
        "bogus",
    ])
}

fn section() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "[server]",
        "[admin]",
        "[store]",
        "[token_cache]",
        "[upstreams.app]",
        "[issuers.hs]",
        "[issuers.x]",
        "[sessions]",
        "[assertion]",
        "[[routes]]",
        "[[routes.rate_limits]]",
        "[server.tls]",
        "[nope]",
        "[[issuers]]",
        "",
    ])
}

fn toml_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            section(),
            prop::collection::vec((key_name(), value_text()), 0..5),
        ),
        0..8,
    )
    .prop_map(|sections| {
        let mut s = String::new();
        for (header, kvs) in sections {
            s.push_str(header);
            s.push('\n');
            for (k, v) in kvs {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Arbitrary text: Ok or positioned errors, never a panic.
    #[test]
    fn config_arbitrary_text(text in ".{0,400}") {
        load_checked(&text)?;
    }

    /// Arbitrary bytes as (lossy) UTF-8, including NUL and control characters.
    #[test]
    fn config_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        load_checked(&String::from_utf8_lossy(&bytes))?;
    }

    /// TOML-shaped text: known sections and keys with values of every type,
    /// durations from valid to absurd.
    #[test]
    fn config_toml_shaped(text in toml_ish()) {
        load_checked(&text)?;
    }

    /// The valid config with one key's value replaced by a value of any type:
    /// Ok or positioned errors, never a panic.
    #[test]
    fn config_one_value_changed(line in 0usize..200, v in value_text()) {
        let lines: Vec<&str> = VALID.lines().collect();
        let idx = line % lines.len();
        prop_assume!(lines[idx].contains(" = "));
        let key = lines[idx].split(" = ").next().unwrap();
        let mut changed: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        changed[idx] = format!("{key} = {v}");
        let text = changed.join("\n");
        load_checked(&text)?;
    }

    /// Every duration key, given any duration text: never a panic.
    #[test]
    fn config_durations(
        key in prop::sample::select(vec![
            "grace_period", "max_ttl", "connect_timeout", "read_timeout", "leeway",
            "touch_interval", "cache_ttl", "window",
        ]),
        d in duration_text(),
    ) {
        let needle = format!("\n{key} = ");
        let start = VALID.find(&needle).unwrap() + needle.len();
        let end = start + VALID[start..].find('\n').unwrap();
        let text = format!("{}{:?}{}", &VALID[..start], d, &VALID[end..]);
        load_checked(&text)?;
    }
}

#[test]
fn the_valid_config_loads() {
    // The mutation properties above start from a config that really loads,
    // so they exercise the whole runtime build, not just the TOML parser.
    if let Err(e) = load(VALID) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------
// rate-limit keys

fn body(bytes: &[u8], complete: bool) -> BodyPrefix {
    BodyPrefix {
        bytes: bytes.to_vec(),
        complete,
    }
}

const IP: &str = "203.0.113.7";

fn key(spec: &KeySpec, headers: &HeaderMap, b: Option<&BodyPrefix>) -> String {
    try_key(spec, headers, b).unwrap()
}

fn try_key(spec: &KeySpec, headers: &HeaderMap, b: Option<&BodyPrefix>) -> Result<String, Reason> {
    key_for("login", 0, spec, IP.parse::<IpAddr>().unwrap(), headers, b)
}

fn form_body() -> impl Strategy<Value = (String, String)> {
    // (body, the username in it)
    (
        "[a-zA-Z0-9.@_-]{1,16}",
        prop::collection::vec(("[a-z]{1,6}", "[a-zA-Z0-9%+]{0,10}"), 0..4),
        0usize..4,
    )
        .prop_map(|(user, others, pos)| {
            let mut pairs: Vec<String> = others
                .into_iter()
                .filter(|(k, _)| k != "username")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let pos = pos.min(pairs.len());
            pairs.insert(pos, format!("username={user}"));
            (pairs.join("&"), user)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any key spec: parsed or refused with a message, never a panic.
    #[test]
    fn keyspec_parse_never_panics(s in ".{0,30}") {
        match KeySpec::parse(&s) {
            Ok(KeySpec::Ip) => prop_assert_eq!(s, "ip"),
            Ok(KeySpec::Form(f)) | Ok(KeySpec::Json(f)) => prop_assert!(!f.is_empty()),
            Ok(KeySpec::Header(_)) => prop_assert!(s.starts_with("header:")),
            Err(msg) => prop_assert!(!msg.is_empty()),
        }
    }

    /// Any spec, headers and body: a key of one fixed shape, the same for the
    /// same request; an absent field falls back to the client IP.
    #[test]
    fn keys_have_one_shape(
        spec in prop::sample::select(vec!["ip", "header:x-user", "form:username", "json:username", "json:user.name"]),
        hv in prop::collection::vec(any::<u8>(), 0..40),
        bytes in prop::collection::vec(any::<u8>(), 0..600),
        complete in any::<bool>(),
    ) {
        let spec = KeySpec::parse(spec).unwrap();
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&hv) {
            h.insert(HeaderName::from_static("x-user"), v);
        }
        let b = body(&bytes, complete);
        let k = key(&spec, &h, Some(&b));
        prop_assert!(key_shape_ok(&k, 0), "{}", k);
        prop_assert_eq!(&k, &key(&spec, &h, Some(&b)));
        let by_ip = key(&KeySpec::Ip, &HeaderMap::new(), None);
        if spec == KeySpec::Ip || (!spec.needs_body() && h.is_empty()) {
            prop_assert_eq!(&k, &by_ip);
        }
        if spec.needs_body() {
            prop_assert_eq!(key(&spec, &h, None), by_ip);
        }
    }

    /// A form field keys the same whatever its case and whatever comes
    /// around it; a prefix (not the whole body) keys nothing but the IP; a
    /// different user never shares the key; a second, different value of the
    /// field makes the body ambiguous (refused).
    #[test]
    fn form_keys_follow_the_field((b, user) in form_body(), (b2, user2) in form_body()) {
        let spec = KeySpec::parse("form:username").unwrap();
        let h = HeaderMap::new();
        let alone = key(&spec, &h, Some(&body(format!("username={user}").as_bytes(), true)));
        let upper = key(&spec, &h, Some(&body(format!("username={}", user.to_uppercase()).as_bytes(), true)));
        prop_assert_eq!(&alone, &upper);
        prop_assert_eq!(&key(&spec, &h, Some(&body(b.as_bytes(), true))), &alone);
        // a prefix that ends after the field: a later duplicate could decide
        prop_assert_eq!(
            &key(&spec, &h, Some(&body(&b.as_bytes()[..b.len()], false))),
            &key(&KeySpec::Ip, &h, None)
        );
        let other = key(&spec, &h, Some(&body(b2.as_bytes(), true)));
        prop_assert_eq!(other == alone, user.to_lowercase() == user2.to_lowercase());
        let twice = format!("{b}&username={user2}");
        match try_key(&spec, &h, Some(&body(twice.as_bytes(), true))) {
            Err(reason) => {
                prop_assert_eq!(reason, Reason::BadRequest);
                prop_assert!(user.to_lowercase() != user2.to_lowercase());
            }
            Ok(k) => {
                prop_assert_eq!(user.to_lowercase(), user2.to_lowercase());
                prop_assert_eq!(k, alone);
            }
        }
    }

    /// JSON: a field keys the same whatever comes around it; of duplicate
    /// keys the last one counts (as the backend's parser reads it); a prefix
    /// keys nothing but the IP.
    #[test]
    fn json_keys_follow_the_field(
        user in "[a-zA-Z0-9.@_ -]{1,16}",
        before in prop::collection::btree_map("[a-z]{1,6}", super_json(), 0..3),
        cut in any::<usize>(),
    ) {
        prop_assume!(!user.trim().is_empty());
        let spec = KeySpec::parse("json:username").unwrap();
        let h = HeaderMap::new();
        let mut obj = serde_json::Map::new();
        for (k, v) in before.into_iter().filter(|(k, _)| k != "username") {
            obj.insert(k, v);
        }
        obj.insert("username".into(), serde_json::json!(user));
        let text = serde_json::Value::Object(obj).to_string();
        let alone = key(&spec, &h, Some(&body(serde_json::json!({"username": user}).to_string().as_bytes(), true)));
        prop_assert_eq!(&key(&spec, &h, Some(&body(text.as_bytes(), true))), &alone);
        // a decoy before, the real one after: the last counts
        let decoy = format!("{{\"username\":\"decoy-{cut}\",{}", &text[1..]);
        prop_assert_eq!(&key(&spec, &h, Some(&body(decoy.as_bytes(), true))), &alone);
        let by_ip = key(&KeySpec::Ip, &h, None);
        let n = cut % text.len();
        prop_assert_eq!(key(&spec, &h, Some(&body(&text.as_bytes()[..n], false))), by_ip);
    }
}

fn super_json() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        any::<i32>().prop_map(serde_json::Value::from),
        "[ -~]{0,8}".prop_map(serde_json::Value::from),
        Just(serde_json::json!({"username": "nested", "a": ["}", "]", "\""]})),
        Just(serde_json::json!([1, {"x": "{"}])),
        Just(serde_json::Value::Null),
    ]
}

#[test]
fn fixtures_dir_exists() {
    assert!(Path::new(&fixtures()).join("rsa_pub.pem").exists());
}
