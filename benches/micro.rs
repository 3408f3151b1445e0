//! Micro-benchmarks of the request hot path (criterion), through the
//! library's public API only:
//!
//! - `jwt_uncached/<alg>`: `auth::jwt::verify_jws` (header parse, signature
//!   decode, one signature check) for HS256, RS256, PS256, ES256 and EdDSA,
//!   keys from `auth::keys` and the committed test fixtures;
//! - `jwt_signature/<alg>/...`: the signature check alone, as authgate makes
//!   it (`VerifyKey::verifier`: an aws-lc key parsed once at load) against
//!   `jsonwebtoken::crypto::verify` (a verifier built, the key re-parsed and
//!   the signature base64-decoded on every call; authgate's path before);
//! - `jwt_miss_path/<alg>`: `auth::verify_token` on a runtime built by
//!   `config::load_str` — what a cache miss costs before the cache insert
//!   (envelope, claims JSON, claim rules, `Identity`);
//! - `jwt_cached/<alg>`: `TokenCache::key` (SHA-256 of the whole token) and
//!   a `TokenCache::get` hit, cycling over 1,000 cached tokens; `sha256` alone
//!   for the split; a miss's insert into a full cache;
//! - `cookie/unsign`: the express-session cookie signature check, with one
//!   secret and with two (rotation: every secret is always tried);
//! - `router/*`: `Router::new` over 1,000 routes (exact, prefix, host,
//!   wildcard host, methods) and `resolve` for each kind of match;
//! - `metrics/*`: a labelled prometheus counter resolved per call versus a
//!   resolved handle (the cache-hit path resolves `token_cache{result}` on
//!   every request).
//!
//! Short on purpose (2 s measurement, 30 samples): the suite takes about two
//! minutes. Run with `cargo bench --bench micro`; `-- jwt_cached` filters.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authgate::testing::cache::{CachedToken, TokenCache};
use authgate::testing::keys::{
    public_key_from_pem, secret_key, signing_key_from_pem, AlgSet, KeySet,
};
use authgate::testing::session::{sign_cookie, unsign, CookieSecrets};
use authgate::testing::{jwt::verify_jws, now_unix};
use authgate::testing::{AuthMethod, Identity};
use authgate::testing::{Matcher, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const POOL: usize = 1_000;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(name)).expect("fixture")
}

/// One algorithm under test: its name, verification keys, signing key and
/// the issuer / route names used in the benchmark config.
struct Alg {
    alg: Algorithm,
    label: &'static str,
    keys: KeySet,
    signer: EncodingKey,
    issuer: &'static str,
    route: &'static str,
}

fn hs_secret() -> Vec<u8> {
    let mut s = fixture("hs_secret.txt");
    if s.last() == Some(&b'\n') {
        s.pop();
    }
    s
}

fn algs() -> Vec<Alg> {
    let asym = |alg, label, pubf: &str, privf: &str, issuer, route| {
        let key = public_key_from_pem(&fixture(pubf)).expect("public key");
        Alg {
            alg,
            label,
            keys: KeySet { keys: vec![key] },
            signer: signing_key_from_pem(&fixture(privf), alg).expect("signing key"),
            issuer,
            route,
        }
    };
    let secret = hs_secret();
    vec![
        Alg {
            alg: Algorithm::HS256,
            label: "HS256",
            keys: KeySet {
                keys: vec![secret_key(&secret)],
            },
            signer: EncodingKey::from_secret(&secret),
            issuer: "https://hs.bench",
            route: "hs",
        },
        asym(
            Algorithm::RS256,
            "RS256",
            "rsa_pub.pem",
            "rsa_priv.pem",
            "https://rs.bench",
            "rs",
        ),
        asym(
            Algorithm::PS256,
            "PS256",
            "rsa_pub.pem",
            "rsa_priv.pem",
            "https://ps.bench",
            "ps",
        ),
        asym(
            Algorithm::ES256,
            "ES256",
            "ec256_pub.pem",
            "ec256_priv.pem",
            "https://es.bench",
            "es",
        ),
        asym(
            Algorithm::EdDSA,
            "EdDSA",
            "ed25519_pub.pem",
            "ed25519_priv.pem",
            "https://ed.bench",
            "ed",
        ),
    ]
}

/// A token like the load benchmark's: iss, aud, sub, iat, exp, jti, email,
/// roles and scope (about 300 bytes of claims).
fn mint(a: &Alg, user: usize) -> String {
    let now = now_unix();
    let claims = serde_json::json!({
        "iss": a.issuer,
        "aud": "api",
        "sub": format!("user-{user:06}"),
        "iat": now,
        "exp": now + 86_400,
        "jti": format!("{:032x}", (user as u128) << 64 | now as u128),
        "email": format!("user-{user:06}@example.com"),
        "roles": ["reader", "writer"],
        "scope": "orders:read orders:write",
    });
    jsonwebtoken::encode(&Header::new(a.alg), &claims, &a.signer).expect("sign")
}

/// Every algorithm's issuer and a JWT route for it (the miss-path bench).
fn runtime_config() -> String {
    let mut s = String::from(
        "[server]\nlisten = \"127.0.0.1:1\"\nadmin_listen = \"127.0.0.1:2\"\nthreads = 1\n\n\
         [upstreams.app]\naddrs = [\"127.0.0.1:3\"]\n\n",
    );
    for (name, iss, alg, key) in [
        (
            "hs",
            "https://hs.bench",
            "HS256",
            "secret_file = \"hs_secret.txt\"",
        ),
        (
            "rs",
            "https://rs.bench",
            "RS256",
            "public_key_file = \"rsa_pub.pem\"",
        ),
        (
            "ps",
            "https://ps.bench",
            "PS256",
            "public_key_file = \"rsa_pub.pem\"",
        ),
        (
            "es",
            "https://es.bench",
            "ES256",
            "public_key_file = \"ec256_pub.pem\"",
        ),
        (
            "ed",
            "https://ed.bench",
            "EdDSA",
            "public_key_file = \"ed25519_pub.pem\"",
        ),
    ] {
        s.push_str(&format!(
            "[issuers.{name}]\nissuer = \"{iss}\"\naudiences = [\"api\"]\nalgorithms = [\"{alg}\"]\n{key}\n\n\
             [[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"app\"\nauth = \"jwt\"\nissuers = [\"{name}\"]\n\n"
        ));
    }
    s
}

/// The cache key of a token (a SHA-256 digest is always 32 bytes).
fn key_of(token: &str) -> [u8; 32] {
    TokenCache::key(token).expect("a 32-byte digest")
}

fn identity(sub: usize) -> Arc<Identity> {
    Arc::new(Identity {
        method: AuthMethod::Jwt,
        subject: Some(format!("user-{sub:06}")),
        issuer: Some(Arc::from("bench")),
        email: None,
        roles: vec!["reader".into()],
        scopes: vec![],
        claims: Arc::new(Default::default()),
        jti: None,
        iat: None,
        session: None,
        expires_at: None,
        rendered: Default::default(),
    })
}

fn jwt(c: &mut Criterion) {
    let algs = algs();
    let rt = authgate::testing::load_str("bench.toml", &runtime_config(), Path::new(FIXTURES))
        .unwrap_or_else(|e| panic!("bench config: {e:?}"));

    // Uncached: the JWS envelope and one signature check.
    let mut g = c.benchmark_group("jwt_uncached");
    for a in &algs {
        let token = mint(a, 1);
        let allowed = AlgSet::of(a.alg);
        assert!(verify_jws(&token, &a.keys, allowed).is_ok(), "{}", a.label);
        g.bench_function(a.label, |b| {
            b.iter(|| verify_jws(black_box(&token), &a.keys, allowed))
        });
    }
    g.finish();

    // The signature alone: authgate's key parsed once by aws-lc, against
    // jsonwebtoken (per call: verifier, key parse).
    let mut g = c.benchmark_group("jwt_signature");
    for a in algs.iter().filter(|a| a.alg != Algorithm::HS256) {
        let token = mint(a, 3);
        let (msg, sig_b64) = token.rsplit_once('.').expect("jws");
        let key = &a.keys.keys[0].key;
        let ready = a.keys.keys[0].verifier(a.alg).expect("a ready verifier");
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).expect("b64");
        assert!(jsonwebtoken::crypto::verify(sig_b64, msg.as_bytes(), key, a.alg).expect("verify"));
        assert!(ready.verify(msg.as_bytes(), &decode(sig_b64)));
        g.bench_function(format!("{}/jsonwebtoken", a.label), |b| {
            b.iter(|| jsonwebtoken::crypto::verify(black_box(sig_b64), msg.as_bytes(), key, a.alg))
        });
        g.bench_function(format!("{}/authgate pre-parsed", a.label), |b| {
            b.iter(|| ready.verify(msg.as_bytes(), &decode(black_box(sig_b64))))
        });
    }
    g.finish();

    // The whole miss path short of the cache insert.
    let mut g = c.benchmark_group("jwt_miss_path");
    for a in &algs {
        let token = mint(a, 2);
        let route = rt.routes.iter().find(|r| r.name == a.route).expect("route");
        let now = now_unix();
        assert!(
            authgate::testing::verify_token(&rt, route, &token, now).is_ok(),
            "{}",
            a.label
        );
        g.bench_function(a.label, |b| {
            b.iter(|| authgate::testing::verify_token(&rt, route, black_box(&token), now))
        });
    }
    g.finish();

    // Cached: SHA-256 of the token + a hit, over a pool of 1,000 tokens.
    let mut g = c.benchmark_group("jwt_cached");
    for a in &algs {
        let tokens: Vec<String> = (0..POOL).map(|u| mint(a, u)).collect();
        let cache = TokenCache::new(100_000, Duration::from_secs(300));
        let keys = Arc::new(a.keys.clone());
        for (u, t) in tokens.iter().enumerate() {
            cache.insert(
                key_of(t),
                Arc::new(CachedToken {
                    identity: identity(u),
                    generation: 1,
                    issuer: 0,
                    keys: keys.clone(),
                    expires_at: now_unix() + 86_400,
                    valid_until: Instant::now() + Duration::from_secs(3_600),
                }),
            );
        }
        let mut i = 0usize;
        g.bench_function(format!("{}/key+get", a.label), |b| {
            b.iter(|| {
                i = (i + 1) % POOL;
                let k = key_of(black_box(&tokens[i]));
                cache.get(&k).expect("hit").expires_at
            })
        });
        let mut i = 0usize;
        g.bench_function(format!("{}/sha256", a.label), |b| {
            b.iter(|| {
                i = (i + 1) % POOL;
                TokenCache::key(black_box(&tokens[i]))
            })
        });
        println!("{}: token length {} bytes", a.label, tokens[0].len());
    }
    // A miss's insert into a full cache (every insert evicts), as when every
    // token is distinct.
    let cache = TokenCache::new(10_000, Duration::from_secs(300));
    let keys = Arc::new(algs[0].keys.clone());
    let entry = |u: usize| {
        Arc::new(CachedToken {
            identity: identity(u),
            generation: 1,
            issuer: 0,
            keys: keys.clone(),
            expires_at: now_unix() + 86_400,
            valid_until: Instant::now() + Duration::from_secs(3_600),
        })
    };
    let mut n = 0usize;
    for _ in 0..20_000 {
        n += 1;
        cache.insert(key_of(&n.to_string()), entry(n));
    }
    g.bench_function("insert (full, evicting)", |b| {
        b.iter_batched(
            || {
                n += 1;
                (key_of(&n.to_string()), entry(n))
            },
            |(k, e)| cache.insert(k, e),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn cookie(c: &mut Criterion) {
    let current = b"bench-session-secret-current-0123456789".to_vec();
    let previous = b"bench-session-secret-previous-012345678".to_vec();
    let value = sign_cookie("0123456789abcdefghijKLMNOPQRSTUV", &current);
    let one = CookieSecrets::from(vec![current.clone()]);
    let two = CookieSecrets::from(vec![current, previous]);
    assert!(unsign(&value, &one).is_ok() && unsign(&value, &two).is_ok());
    let mut g = c.benchmark_group("cookie");
    g.bench_function("unsign/1 secret", |b| {
        b.iter(|| unsign(black_box(&value), &one))
    });
    g.bench_function("unsign/2 secrets", |b| {
        b.iter(|| unsign(black_box(&value), &two))
    });
    g.finish();
}

/// 1,000 routes: 400 exact paths (a third restricted to POST), 500
/// prefixes at two depths, 50 host-bound prefixes, 49 wildcard-host
/// prefixes and a catch-all `/` (the last, shortest prefix).
fn route_table(catch_all: bool) -> Vec<Matcher> {
    let mut m = Vec::with_capacity(1_000);
    let s = |x: String| Some(x);
    for i in 0..400 {
        m.push(Matcher {
            path: s(format!("/svc{:03}/exact/{i}", i % 250)),
            methods: if i % 3 == 0 {
                vec!["POST".into()]
            } else {
                vec![]
            },
            ..Default::default()
        });
    }
    for i in 0..250 {
        m.push(Matcher {
            path_prefix: s(format!("/svc{i:03}/")),
            ..Default::default()
        });
        m.push(Matcher {
            path_prefix: s(format!("/svc{i:03}/v2/items/")),
            ..Default::default()
        });
    }
    for i in 0..50 {
        m.push(Matcher {
            path_prefix: s(format!("/tenant/{i}/")),
            host: s(format!("t{i}.example.com")),
            ..Default::default()
        });
    }
    for i in 0..49 {
        m.push(Matcher {
            path_prefix: s(format!("/w{i}/")),
            host: s(format!("*.w{i}.example.org")),
            ..Default::default()
        });
    }
    if catch_all {
        m.push(Matcher {
            path_prefix: s("/".into()),
            ..Default::default()
        });
    }
    assert_eq!(m.len(), if catch_all { 1_000 } else { 999 });
    m
}

/// (name, router, host, path, expected route index)
type Case<'a> = (&'a str, &'a Router, &'a str, &'a str, Option<usize>);

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.bench_function("new/1000 routes", |b| {
        b.iter_batched(
            || route_table(true),
            Router::new,
            criterion::BatchSize::SmallInput,
        )
    });
    let r = Router::new(route_table(true));
    let no_catch_all = Router::new(route_table(false));
    let api = "api.example.com";
    // (name, router, host, path, expected route index); all GET.
    let cases: [Case; 7] = [
        ("exact", &r, api, "/svc120/exact/370", Some(370)),
        (
            "longest prefix (long)",
            &r,
            api,
            "/svc120/v2/items/42",
            Some(641),
        ),
        ("prefix (short)", &r, api, "/svc120/other", Some(640)),
        (
            "host prefix",
            &r,
            "t17.example.com",
            "/tenant/17/x",
            Some(917),
        ),
        (
            "wildcard host",
            &r,
            "a.w30.example.org",
            "/w30/x",
            Some(980),
        ),
        ("catch-all", &r, api, "/nothing", Some(999)),
        ("no match (404)", &no_catch_all, api, "/nothing", None),
    ];
    for (name, router, host, path, want) in cases {
        let method = "GET";
        assert_eq!(router.resolve(host, method, path), want, "{name}");
        g.bench_function(format!("resolve/{name}"), |b| {
            b.iter(|| router.resolve(black_box(host), black_box(method), black_box(path)))
        });
    }
    g.finish();
}

fn metrics(c: &mut Criterion) {
    let vec =
        prometheus::IntCounterVec::new(prometheus::Opts::new("bench_total", "bench"), &["result"])
            .expect("counter");
    let handle = vec.with_label_values(&["hit"]);
    let mut g = c.benchmark_group("metrics");
    g.bench_function("with_label_values+inc", |b| {
        b.iter(|| vec.with_label_values(black_box(&["hit"])).inc())
    });
    g.bench_function("resolved handle inc", |b| b.iter(|| handle.inc()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    targets = jwt, cookie, router, metrics
}
criterion_main!(benches);
