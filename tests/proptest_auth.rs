//! Property tests (issue 8) for the credential parsers and signature checks:
//! the JWS parser and verifier, the claims check, the key loaders, the Bearer
//! header, the session cookie (express-session signature), the stored session
//! JSON and the CSRF check. Arbitrary input never panics and never
//! authenticates: random tokens never verify, a valid token changed in any way
//! never verifies, random cookies never unsign without the secret.
//!
//! In-process (no gateway), so each property runs in well under ten seconds.

use authgate::testing::bearer;
use authgate::testing::jwt::{check_claims, claims_of, parse, verify_jws, ClaimRules};
use authgate::testing::keys::{
    keys_from_jwks, pem_kind, public_key_from_pem, secret_key, AlgSet, KeySet,
};
use authgate::testing::session::{
    cookie, csrf_ok, parse_session, sign_cookie, unsign, SessionSettings, MAX_COOKIE_LEN,
};
use authgate::testing::Reason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

const HS_SECRET: &[u8] = b"proptest-hs-secret-0123456789abcdef0123456789";
const SESSION_SECRETS: [&[u8]; 2] = [b"proptest-session-current", b"proptest-session-previous"];
const ISSUER: &str = "https://prop.test";
const NOW: i64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every kind of key the gateway verifies with: HMAC, the RSA JWKS fixture
/// (kids k1, k2), EC P-256, EC P-384, Ed25519.
fn keyset() -> &'static (KeySet, AlgSet) {
    static K: OnceLock<(KeySet, AlgSet)> = OnceLock::new();
    K.get_or_init(|| {
        let mut set = keys_from_jwks(&fixture("jwks_rs.json")).unwrap();
        set.keys.push(secret_key(HS_SECRET));
        for f in ["ec256_pub.pem", "ec384_pub.pem", "ed25519_pub.pem"] {
            set.keys.push(public_key_from_pem(&fixture(f)).unwrap());
        }
        let algs = set.algs();
        (set, algs)
    })
}

fn valid_claims() -> Value {
    json!({"iss": ISSUER, "aud": "api", "sub": "alice", "iat": NOW, "exp": NOW + 300})
}

/// One valid token per key family, all of which verify with [`keyset`].
fn valid_tokens() -> &'static Vec<String> {
    static T: OnceLock<Vec<String>> = OnceLock::new();
    T.get_or_init(|| {
        let c = valid_claims();
        let mut rs = Header::new(Algorithm::RS256);
        rs.kid = Some("k1".into());
        let toks = vec![
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(HS_SECRET),
            )
            .unwrap(),
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &c,
                &EncodingKey::from_secret(HS_SECRET),
            )
            .unwrap(),
            jsonwebtoken::encode(
                &rs,
                &c,
                &EncodingKey::from_rsa_pem(&fixture("rsa_priv.pem")).unwrap(),
            )
            .unwrap(),
            jsonwebtoken::encode(
                &Header::new(Algorithm::ES256),
                &c,
                &EncodingKey::from_ec_pem(&fixture("ec256_priv.pem")).unwrap(),
            )
            .unwrap(),
            jsonwebtoken::encode(
                &Header::new(Algorithm::EdDSA),
                &c,
                &EncodingKey::from_ed_pem(&fixture("ed25519_priv.pem")).unwrap(),
            )
            .unwrap(),
        ];
        let (set, algs) = keyset();
        for t in &toks {
            assert!(
                verify_jws(t, set, *algs).is_ok(),
                "fixture token fails: {t}"
            );
        }
        toks
    })
}

fn verifies(token: &str) -> bool {
    let (set, algs) = keyset();
    verify_jws(token, set, *algs).is_ok()
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// JSON values of bounded size, with the shapes claims take.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(json!(ISSUER)),
        Just(json!("api")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claim maps built from the registered names with arbitrary values.
fn claims_map() -> impl Strategy<Value = Map<String, Value>> {
    let names = prop::sample::select(vec![
        "exp", "nbf", "iat", "iss", "aud", "sub", "jti", "email", "roles", "scope",
    ]);
    prop::collection::vec((names, json_value()), 0..8)
        .prop_map(|pairs| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// How a valid token is changed.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the character at (index mod len) with this one.
    Replace(usize, char),
    /// Insert a character at (index mod len+1).
    Insert(usize, char),
    /// Remove the character at (index mod len).
    Remove(usize),
    /// Keep only the first (n mod len) characters.
    Truncate(usize),
    /// Flip one bit of one decoded byte of segment (s mod 3), re-encode.
    FlipBit(usize, usize, u8),
    /// Replace the header with this JSON (same signature).
    Header(Value),
    /// Replace the payload with this JSON (same signature).
    Payload(Value),
}

fn b64url_char() -> impl Strategy<Value = char> {
    prop::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ \t%"
            .chars()
            .collect::<Vec<_>>(),
    )
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), b64url_char()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        (any::<usize>(), b64url_char()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(s, i, b)| Mutation::FlipBit(s, i, b)),
        prop_oneof![
            Just(json!({"alg": "none"})),
            Just(json!({"alg": "HS256", "kid": "k1"})),
            Just(json!({"alg": "RS256"})),
            Just(json!({"alg": "HS256", "typ": "JWT", "x": 1})),
            Just(json!({"alg": "EdDSA", "crit": ["b64"], "b64": false})),
            Just(json!({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}})),
        ]
        .prop_map(Mutation::Header),
        json_value().prop_map(Mutation::Payload),
    ]
}

fn apply(token: &str, m: &Mutation) -> String {
    let chars: Vec<char> = token.chars().collect();
    let n = chars.len();
    match m {
        Mutation::Replace(i, c) => {
            let mut v = chars;
            v[i % n] = *c;
            v.into_iter().collect()
        }
        Mutation::Insert(i, c) => {
            let mut v = chars;
            v.insert(i % (n + 1), *c);
            v.into_iter().collect()
        }
        Mutation::Remove(i) => {
            let mut v = chars;
            v.remove(i % n);
            v.into_iter().collect()
        }
        Mutation::Truncate(i) => chars[..i % n].iter().collect(),
        Mutation::FlipBit(s, i, b) => {
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            let s = s % parts.len();
            let mut bytes = URL_SAFE_NO_PAD.decode(&parts[s]).unwrap();
            if bytes.is_empty() {
                return token.to_string();
            }
            let i = i % bytes.len();
            bytes[i] ^= 1 << b;
            parts[s] = b64(&bytes);
            parts.join(".")
        }
        Mutation::Header(h) => {
            let parts: Vec<&str> = token.split('.').collect();
            format!(
                "{}.{}.{}",
                b64(h.to_string().as_bytes()),
                parts[1],
                parts[2]
            )
        }
        Mutation::Payload(p) => {
            let parts: Vec<&str> = token.split('.').collect();
            format!(
                "{}.{}.{}",
                parts[0],
                b64(p.to_string().as_bytes()),
                parts[2]
            )
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary text is never a valid token, and never panics the parser.
    #[test]
    fn random_text_never_verifies(s in ".{0,300}") {
        let _ = parse(&s);
        prop_assert!(!verifies(&s));
    }

    /// Three base64url segments of random bytes never verify.
    #[test]
    fn random_segments_never_verify(
        h in prop::collection::vec(any::<u8>(), 0..80),
        p in prop::collection::vec(any::<u8>(), 0..80),
        s in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let t = format!("{}.{}.{}", b64(&h), b64(&p), b64(&s));
        prop_assert!(!verifies(&t));
    }

    /// A well-formed header naming any algorithm (and any kid), valid claims,
    /// and a random signature of a plausible length: never verifies.
    #[test]
    fn forged_signatures_never_verify(
        alg in prop::sample::select(vec![
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
            "PS512", "ES256", "ES384", "EdDSA", "none", "None", "", "hs256", "ES512",
        ]),
        kid in prop::option::of(prop::sample::select(vec!["k1", "k2", "", "../../k1"])),
        len in prop::sample::select(vec![0usize, 1, 32, 48, 64, 96, 256, 512]),
        seed in any::<u64>(),
    ) {
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid { header["kid"] = json!(k); }
        let mut sig = Vec::with_capacity(len);
        let mut x = seed | 1;
        for _ in 0..len {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            sig.push(x as u8);
        }
        let t = format!(
            "{}.{}.{}",
            b64(header.to_string().as_bytes()),
            b64(valid_claims().to_string().as_bytes()),
            b64(&sig)
        );
        prop_assert!(!verifies(&t));
    }

    /// A valid token (HS256, HS512, RS256, ES256, EdDSA) changed in any way
    /// never verifies: one character replaced, inserted or removed, the token
    /// truncated, a decoded bit flipped, the header or the payload swapped.
    #[test]
    fn mutated_valid_tokens_never_verify(which in 0usize..5, m in mutation()) {
        let original = &valid_tokens()[which];
        let t = apply(original, &m);
        prop_assume!(t != *original);
        prop_assert!(!verifies(&t), "mutated token verified: {:?} -> {}", m, t);
    }

    /// The claims check never panics on any value of any registered claim,
    /// any leeway and any clock, and what it accepts really is in time, from
    /// the issuer and for the audience.
    #[test]
    fn claims_check_accepts_only_what_it_should(
        claims in claims_map(),
        leeway in prop_oneof![0i64..120, any::<i64>()],
        now in prop_oneof![Just(NOW), any::<i64>()],
    ) {
        let aud = vec!["api".to_string()];
        let rules = ClaimRules { issuer: ISSUER, audiences: &aud, leeway };
        if check_claims(&claims, &rules, now).is_ok() {
            let exp = &claims["exp"];
            let exp = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64));
            prop_assert!(exp.is_some(), "accepted a non-numeric exp: {:?}", claims);
            prop_assert!((now as i128) < exp.unwrap() as i128 + leeway as i128);
            prop_assert_eq!(claims.get("iss"), Some(&json!(ISSUER)));
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => a == "api",
                Some(Value::Array(l)) => l.iter().any(|a| a == "api"),
                _ => false,
            };
            prop_assert!(aud_ok, "accepted without audience: {:?}", claims);
        }
    }

    /// A token with no `exp` is malformed, whatever else it carries.
    #[test]
    fn no_exp_is_malformed(mut claims in claims_map()) {
        claims.remove("exp");
        let aud: Vec<String> = vec![];
        let rules = ClaimRules { issuer: ISSUER, audiences: &aud, leeway: 30 };
        prop_assert_eq!(check_claims(&claims, &rules, NOW), Err(Reason::Malformed));
    }

    /// `claims_of` accepts exactly the JSON objects.
    #[test]
    fn claims_of_takes_only_objects(bytes in prop::collection::vec(any::<u8>(), 0..200), v in json_value()) {
        let _ = claims_of(&bytes);
        let text = v.to_string();
        prop_assert_eq!(claims_of(text.as_bytes()).is_ok(), v.is_object());
    }

    /// JWKS documents with arbitrary members, and arbitrary PEM-looking text,
    /// never panic the key loaders; a key loaded from arbitrary JWK fields is
    /// never usable by an algorithm outside its family.
    #[test]
    fn key_loaders_never_panic(
        kty in prop::sample::select(vec!["RSA", "EC", "OKP", "oct", "", "rsa"]),
        crv in prop::sample::select(vec!["P-256", "P-384", "P-521", "Ed25519", "X25519", "secp256k1", ""]),
        alg in prop::option::of(prop::sample::select(vec!["RS256", "HS256", "ES256", "EdDSA", "none", "PS512", "ES384"])),
        n in "[A-Za-z0-9_-]{0,40}",
        e in prop::sample::select(vec!["AQAB", "", "AA", "Aw", "////"]),
        xy in "[A-Za-z0-9_-]{0,50}",
        k in "[A-Za-z0-9_-]{0,30}",
        pem_body in prop::collection::vec(any::<u8>(), 0..120),
        label in prop::sample::select(vec!["PUBLIC KEY", "RSA PUBLIC KEY", "PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE", ""]),
    ) {
        let mut jwk = json!({"kty": kty, "crv": crv, "n": n, "e": e, "x": xy, "y": xy, "k": k, "kid": "p"});
        if let Some(a) = alg { jwk["alg"] = json!(a); }
        let doc = json!({"keys": [jwk]}).to_string();
        if let Ok(set) = keys_from_jwks(doc.as_bytes()) {
            let algs = set.algs();
            let family_ok = match kty {
                "RSA" => AlgSet::RSA.intersect(algs) == algs,
                "oct" => AlgSet::HMAC.intersect(algs) == algs,
                "EC" => algs == AlgSet::ES256 || algs == AlgSet::ES384,
                "OKP" => algs == AlgSet::ED,
                _ => false,
            };
            prop_assert!(family_ok, "{} key serves {:?}", kty, algs);
        }
        let pem = format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64::engine::general_purpose::STANDARD.encode(&pem_body)
        );
        let _ = pem_kind(pem.as_bytes());
        let _ = public_key_from_pem(pem.as_bytes());
        let _ = pem_kind(&pem_body);
        let _ = public_key_from_pem(&pem_body);
    }

    /// The Bearer extraction: never panics, and a token comes back only from a
    /// single `Bearer` header, trimmed and non-empty.
    #[test]
    fn bearer_header_rules(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3)) {
        let mut h = HeaderMap::new();
        for v in &values {
            if let Ok(v) = HeaderValue::from_bytes(v) {
                h.append(http::header::AUTHORIZATION, v);
            }
        }
        let n = h.get_all(http::header::AUTHORIZATION).iter().count();
        match bearer(&h) {
            Ok(t) => {
                prop_assert_eq!(n, 1);
                let v = h.get(http::header::AUTHORIZATION).unwrap().as_bytes();
                prop_assert!(v[..7].eq_ignore_ascii_case(b"bearer "));
                prop_assert!(!t.is_empty() && t == t.trim());
            }
            Err(r) => prop_assert!(matches!(r, Reason::MissingCredentials | Reason::Malformed)),
        }
    }
}

// ---------------------------------------------------------------------------
// session cookies

fn settings() -> SessionSettings {
    SessionSettings {
        cookie: "sid".into(),
        secrets: SESSION_SECRETS.iter().map(|s| s.to_vec()).collect(),
        key_prefix: "sess:".into(),
        rolling: false,
        touch_interval: Duration::from_secs(60),
        subject: "user.id".into(),
        email: Some("user.email".into()),
        roles: Some("role".into()),
        allowed_origins: vec!["https://app.example".into()],
        cache_ttl: Duration::from_secs(60),
        cache_size: 16,
    }
}

fn decoded(raw: &str) -> String {
    let raw = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

fn cookie_char() -> impl Strategy<Value = char> {
    prop::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%:.+/=-_\"; "
            .chars()
            .collect::<Vec<_>>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Arbitrary cookie values never unsign, with or without the `s:` form.
    #[test]
    fn random_cookies_never_unsign(
        raw in ".{0,200}",
        sid in "[A-Za-z0-9_-]{1,40}",
        sig in "[A-Za-z0-9+/]{0,50}",
    ) {
        let s = settings();
        prop_assert!(unsign(&raw, &s.secrets).is_err());
        let plain = format!("s:{sid}.{sig}");
        let encoded = format!("s%3A{sid}.{sig}");
        prop_assert!(unsign(&plain, &s.secrets).is_err());
        prop_assert!(unsign(&encoded, &s.secrets).is_err());
    }

    /// A cookie signed with any other secret never unsigns; one signed with a
    /// configured secret does (rotation), and gives back its id.
    #[test]
    fn only_configured_secrets_sign(sid in "[A-Za-z0-9_-]{1,40}", other in prop::collection::vec(any::<u8>(), 1..40)) {
        let s = settings();
        prop_assume!(!SESSION_SECRETS.contains(&other.as_slice()));
        let forged = sign_cookie(&sid, &other);
        prop_assert_eq!(unsign(&forged, &s.secrets), Err(Reason::BadCookieSignature));
        for secret in SESSION_SECRETS {
            let good = sign_cookie(&sid, secret);
            prop_assert_eq!(unsign(&good, &s.secrets), Ok(sid.clone()));
        }
    }

    /// A valid cookie changed in any way unsigns only when it still decodes to
    /// the same `s:<sid>.<sig>` (percent-encoding is not part of the signed text).
    #[test]
    fn mutated_cookies_never_unsign(
        sid in "[A-Za-z0-9_-]{1,40}",
        which in 0usize..2,
        op in 0u8..3,
        i in any::<usize>(),
        c in cookie_char(),
    ) {
        let s = settings();
        let good = sign_cookie(&sid, SESSION_SECRETS[which]);
        let mut v: Vec<char> = good.chars().collect();
        match op {
            0 => { let n = v.len(); v[i % n] = c; }
            1 => { let n = v.len(); v.insert(i % (n + 1), c); }
            _ => { let n = v.len(); v.remove(i % n); }
        }
        let bad: String = v.into_iter().collect();
        if let Ok(got) = unsign(&bad, &s.secrets) {
            prop_assert_eq!(decoded(&bad), decoded(&good), "{} unsigned from {}", bad, good);
            prop_assert_eq!(got, sid);
        }
    }

    /// Cookie headers of any shape (many pairs, odd separators, duplicates,
    /// 60 KB values) never panic the cookie lookup, and an over-long session
    /// cookie is refused before any HMAC.
    #[test]
    fn cookie_header_parsing(
        pairs in prop::collection::vec(("[a-z]{0,4}", "[ -~]{0,30}"), 0..40),
        sep in prop::sample::select(vec![";", "; ", ";;", " ; ", ","]),
        big in 0usize..70_000,
    ) {
        let line = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(sep);
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&line) {
            h.append(http::header::COOKIE, v);
        }
        h.append(http::header::COOKIE, HeaderValue::from_str(&format!("sid={}", "a".repeat(big))).unwrap());
        if let Some(raw) = cookie(&h, "sid") {
            let r = unsign(raw, &settings().secrets);
            prop_assert!(r.is_err());
            if raw.len() > MAX_COOKIE_LEN {
                prop_assert_eq!(r, Err(Reason::Malformed));
            }
        }
    }

    /// Stored session JSON of any shape never panics; one without the
    /// configured subject never authenticates; a subject comes back as text.
    #[test]
    fn session_json_never_panics(
        fields in prop::collection::btree_map(
            prop::sample::select(vec!["cookie", "user", "role", "userId", "passport"]),
            json_value(),
            0..5,
        ),
        expires in prop::option::of(prop_oneof![
            ".{0,30}".boxed(),
            Just("2030-01-01T00:00:00.000Z".to_string()).boxed(),
            Just("+275760-09-13T00:00:00.000Z".to_string()).boxed(),
            Just("9999-12-31T23:59:59.999Z".to_string()).boxed(),
            Just("1969-01-01T00:00:00Z".to_string()).boxed(),
        ]),
        max_age in prop::option::of(any::<f64>()),
    ) {
        let mut m: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let mut c = Map::new();
        if let Some(e) = expires { c.insert("expires".into(), json!(e)); }
        if let Some(a) = max_age { c.insert("originalMaxAge".into(), json!(a)); }
        if !c.is_empty() { m.insert("cookie".into(), Value::Object(c)); }
        let text = Value::Object(m.clone()).to_string();
        let subject = m.get("user").and_then(|u| u.get("id")).filter(|v| match v {
            Value::String(s) => !s.is_empty(),
            Value::Number(_) => true,
            _ => false,
        });
        if let Ok(p) = parse_session(&text, &settings()) {
            prop_assert!(subject.is_some(), "authenticated without a subject: {}", text);
            prop_assert!(p.identity.subject.as_deref().is_some_and(|s| !s.is_empty()));
        }
        let half: String = text.chars().take(text.chars().count() / 2).collect();
        prop_assert!(parse_session(&half, &settings()).is_err());
    }

    /// CSRF: `Sec-Fetch-Site: cross-site` always fails; an Origin equal to the
    /// request's own origin, or an allowed one, passes; any other origin fails.
    #[test]
    fn csrf_rules(
        host in "[a-z]{1,8}(\\.[a-z]{1,5})?(:[0-9]{1,5})?",
        other in "[a-z]{1,8}\\.evil(:[0-9]{2,4})?",
        scheme in prop::sample::select(vec!["http", "https"]),
        fetch_site in prop::option::of(prop::sample::select(vec!["cross-site", "same-origin", "same-site", "none", "CROSS-SITE"])),
        junk in "[ -~]{0,30}",
    ) {
        prop_assume!(!host.contains("evil"));
        let allowed = settings().allowed_origins;
        let mk = |origin: Option<&str>, referer: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, HeaderValue::from_str(&host).unwrap());
            if let Some(o) = origin { h.insert(http::header::ORIGIN, HeaderValue::from_str(o).unwrap()); }
            if let Some(r) = referer { h.insert(http::header::REFERER, HeaderValue::from_str(r).unwrap()); }
            if let Some(f) = fetch_site {
                h.insert(HeaderName::from_static("sec-fetch-site"), HeaderValue::from_static(f));
            }
            h
        };
        let cross = fetch_site.is_some_and(|f| f.eq_ignore_ascii_case("cross-site"));
        let own = format!("{scheme}://{host}");
        let foreign = format!("{scheme}://{other}");
        prop_assert_eq!(csrf_ok(&mk(Some(&own), None), scheme, &allowed), !cross);
        prop_assert_eq!(csrf_ok(&mk(Some("https://app.example"), None), scheme, &allowed), !cross);
        prop_assert!(!csrf_ok(&mk(Some(&foreign), None), scheme, &allowed));
        let foreign_referer = format!("{foreign}/x?{junk}");
        let own_referer = format!("{own}/page");
        prop_assert!(!csrf_ok(&mk(None, Some(&foreign_referer)), scheme, &allowed));
        prop_assert_eq!(csrf_ok(&mk(None, Some(&own_referer)), scheme, &allowed), !cross);
        // Origin decides over Referer
        prop_assert!(!csrf_ok(&mk(Some(&foreign), Some(&own)), scheme, &allowed));
        if let Ok(v) = HeaderValue::from_str(&junk) {
            let mut h = mk(None, None);
            h.insert(http::header::ORIGIN, v);
            let _ = csrf_ok(&h, scheme, &allowed);
        }
    }
}
