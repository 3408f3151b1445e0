//! Gateway-signed identity assertions (`[assertion]`, `X-Auth-Assertion`), checked the
//! way a zero-trust backend would: the JWT the upstream received is verified by an
//! independent implementation (Python PyJWT, `tests/assertion/verify.py`) against the
//! JWKS fetched from the gateway's proxy listener, for ES256 and EdDSA keys generated at
//! test time with the `openssl` CLI.
//!
//! - claims: `iss`, `aud`, `sub`, `exp - iat == ttl`, `email`, `roles`/`scopes` arrays,
//!   `auth_method`, `original_iss` (JWT only), `route`; sessions get `scopes: []`;
//! - each JWKS `kid` is the RFC 7638 thumbprint computed here from openssl's own view of
//!   the public key (not from the JWKS), and the JWKS `x`/`y` are that public key;
//! - only `assertion = true` routes get the header, and a client-sent `X-Auth-Assertion`
//!   never reaches any upstream;
//! - rotation by reload: pre-publish (`previous_key_files`), switch, retire; an assertion
//!   minted before the switch still verifies against the new JWKS;
//! - `authgate check` refuses a key of the wrong type, `assertion = true` without
//!   `[assertion]` and on an `auth = "none"` route (exit 2, `FILE:LINE:COL`).
//!
//! Runs `tests/python/setup.sh` (a venv with PyJWT under target/, quick when already
//! there) itself, and fails when it cannot.

mod common;

use common::ops::ADMIN_ENV;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ISS: &str = "https://gateway.test";
const AUD: &str = "backends";
const TTL: i64 = 90;
const JWKS_PATH: &str = "/.well-known/authgate/jwks.json";

#[derive(Clone, Copy, Debug)]
enum Alg {
    Es256,
    EdDsa,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

// ---------------------------------------------------------------------------
// keys, made and inspected with the openssl CLI

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); scripts/prereqs.sh installs it"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh PKCS#8 PEM private key in `dir`.
fn genkey(dir: &Path, name: &str, alg: Alg) -> PathBuf {
    let path = dir.join(format!("{name}.pem"));
    let p = path.to_str().unwrap();
    match alg {
        Alg::Es256 => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        Alg::EdDsa => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
    };
    let pem = fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    path
}

/// The public key as openssl sees it: the raw point (P-256: `04 || x || y`, 65 bytes)
/// or the Ed25519 public key (32 bytes), from the SubjectPublicKeyInfo DER.
fn public_raw(key: &Path, alg: Alg) -> Vec<u8> {
    let der = openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    match alg {
        Alg::Es256 => {
            // SEQUENCE { SEQUENCE { ecPublicKey, prime256v1 }, BIT STRING 00 04 x y }
            assert_eq!(der.len(), 91, "P-256 SPKI is 91 bytes: {der:02x?}");
            let point = der[26..].to_vec();
            assert_eq!(point[0], 4, "uncompressed point");
            point
        }
        Alg::EdDsa => {
            // SEQUENCE { SEQUENCE { Ed25519 }, BIT STRING 00 pk }
            assert_eq!(der.len(), 44, "Ed25519 SPKI is 44 bytes: {der:02x?}");
            der[12..].to_vec()
        }
    }
}

/// The members RFC 7638 hashes, in its canonical form (sorted keys, no whitespace).
fn canonical_jwk(alg: Alg, raw: &[u8]) -> String {
    match alg {
        Alg::Es256 => format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64u(&raw[1..33]),
            b64u(&raw[33..65])
        ),
        Alg::EdDsa => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64u(raw)),
    }
}

/// RFC 7638 JWK thumbprint, SHA-256, base64url.
fn thumbprint_of(canonical: &str) -> String {
    use sha2::{Digest, Sha256};
    b64u(&Sha256::digest(canonical.as_bytes()))
}

/// The RFC 7638 thumbprint of `key`'s public key, computed here.
fn thumbprint(key: &Path, alg: Alg) -> String {
    thumbprint_of(&canonical_jwk(alg, &public_raw(key, alg)))
}

#[test]
fn the_thumbprint_helper_matches_rfc_8037() {
    // RFC 8037 appendix A.3: the thumbprint of the A.2 Ed25519 public key.
    assert_eq!(
        thumbprint_of(&canonical_jwk(
            Alg::EdDsa,
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
            )
            .unwrap()
        )),
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
}

// ---------------------------------------------------------------------------
// the independent verifier

/// Runs verify.py on `tokens` against `jwks`: the decoded (header, claims) of each, or
/// the verifier's complaint.
fn py_verify(jwks: &Value, alg: Alg, tokens: &[&str]) -> Result<Vec<(Value, Value)>, String> {
    let dir = temp_dir("pyjwt");
    let jwks_file = dir.join("jwks.json");
    fs::write(&jwks_file, jwks.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/assertion/verify.py");
    let out = Command::new(common::python::python())
        .arg(&script)
        .arg("--jwks")
        .arg(&jwks_file)
        .args(["--alg", alg.name(), "--iss", ISS, "--aud", AUD])
        .args(tokens)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Ok(v.as_array()
        .unwrap()
        .iter()
        .map(|x| (x["header"].clone(), x["claims"].clone()))
        .collect())
}

#[track_caller]
fn py_verify_ok(jwks: &Value, alg: Alg, tokens: &[&str]) -> Vec<(Value, Value)> {
    py_verify(jwks, alg, tokens).unwrap_or_else(|e| panic!("PyJWT rejected: {e}\nJWKS {jwks}"))
}

// ---------------------------------------------------------------------------
// the gateway

/// `GatewayConfig::base()` (route `api`: JWT, no assertion) plus an admin token, `[assertion]`,
/// a JWT route `asserted`, and an open route `open`.
fn config(alg: Alg, key: &Path, previous: &[&Path]) -> String {
    let previous: Vec<String> = previous
        .iter()
        .map(|p| format!("{:?}", p.to_str().unwrap()))
        .collect();
    GatewayConfig::base()
        .extra(&format!(
            r#"[[routes]]
name = "asserted"
path_prefix = "/asserted/"
upstream = "app"
auth = "jwt"
issuers = ["hs"]
assertion = true

[[routes]]
name = "open"
path_prefix = "/open/"
upstream = "app"
auth = "none"

[admin]
token_env = "AUTHGATE_ADMIN_TOKEN"

[assertion]
algorithm = "{alg}"
key_file = {key:?}
previous_key_files = [{previous}]
issuer = "{ISS}"
audience = "{AUD}"
ttl = "{TTL}s"
"#,
            alg = alg.name(),
            key = key.to_str().unwrap(),
            previous = previous.join(", "),
        ))
        .toml()
}

/// GETs the JWKS from the proxy listener without credentials and checks the answer.
fn fetch_jwks(gw: &Gateway) -> Value {
    let r = gw.get(JWKS_PATH, &[]);
    assert_eq!(r.status, 200, "JWKS: {}", r.text());
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("application/json"), "{ctype:?}");
    let doc = r.json();
    let keys = doc["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty(), "{doc}");
    doc
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The JWKS entry for `key`: kid = our thumbprint, alg, use, and the public key openssl
/// derives from the private key file.
#[track_caller]
fn assert_jwk_is(jwk: &Value, key: &Path, alg: Alg) {
    let raw = public_raw(key, alg);
    assert_eq!(jwk["kid"], thumbprint(key, alg), "{jwk}");
    assert_eq!(jwk["alg"], alg.name(), "{jwk}");
    assert_eq!(jwk["use"], "sig", "{jwk}");
    match alg {
        Alg::Es256 => {
            assert_eq!(jwk["kty"], "EC", "{jwk}");
            assert_eq!(jwk["crv"], "P-256", "{jwk}");
            assert_eq!(jwk["x"], b64u(&raw[1..33]), "{jwk}");
            assert_eq!(jwk["y"], b64u(&raw[33..65]), "{jwk}");
        }
        Alg::EdDsa => {
            assert_eq!(jwk["kty"], "OKP", "{jwk}");
            assert_eq!(jwk["crv"], "Ed25519", "{jwk}");
            assert_eq!(jwk["x"], b64u(&raw), "{jwk}");
        }
    }
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        assert!(
            jwk.get(private).is_none(),
            "private member {private}: {jwk}"
        );
    }
}

/// A JWT request on `/asserted/...`: the `X-Auth-Assertion` the upstream got.
fn asserted(gw: &Gateway, up: &Upstream, path: &str, token: &str) -> String {
    let r = gw.get_bearer(path, token);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    let req = up.last();
    assert_eq!(req.path, path);
    req.header("x-auth-assertion")
        .unwrap_or_else(|| panic!("no X-Auth-Assertion on {path}: {:?}", req.headers))
}

fn alice_token() -> String {
    hs_token(&hs_claims(
        "alice",
        json!({
            "email": "alice@example.test",
            "roles": ["admin", "ops"],
            "scope": "orders:read orders:write",
        }),
    ))
}

fn keys_dir() -> PathBuf {
    temp_dir("assert-keys")
}

// ---------------------------------------------------------------------------
// the tests

fn jwt_assertion_verifies_independently(alg: Alg) {
    let dir = keys_dir();
    let key = genkey(&dir, "current", alg);
    let (gw, up) = Gateway::with_upstream(&config(alg, &key, &[]), &[HS_ENV, ADMIN_ENV]);

    let jwks = fetch_jwks(&gw);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
    assert_jwk_is(&jwks["keys"][0], &key, alg);
    let kid = thumbprint(&key, alg);

    // A forged X-Auth-Assertion from the client is replaced by the gateway's own.
    let token = alice_token();
    let auth = format!("Bearer {token}");
    let r = gw.get(
        "/asserted/orders?x=1",
        &[
            ("Authorization", &auth),
            ("X-Auth-Assertion", "forged.by.client"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let assertion = up
        .last()
        .header("x-auth-assertion")
        .expect("no X-Auth-Assertion");
    assert_ne!(assertion, "forged.by.client");
    assert!(
        !assertion.contains(&token),
        "the assertion embeds the token"
    );

    // The token's second verification caches it, so `second` is a hit.
    asserted(&gw, &up, "/asserted/admit", &token);
    let before = now();
    let second = asserted(&gw, &up, "/asserted/two", &token);
    let after = now();
    let hits = metric(
        &gw.metrics(),
        "authgate_token_cache_total",
        &[("result", "hit")],
    );
    assert_eq!(hits, Some(1.0), "`second` was not a token-cache hit");
    let verified = py_verify_ok(&jwks, alg, &[&assertion, &second]);
    let (header, claims) = &verified[0];
    assert_eq!(header["alg"], alg.name(), "{header}");
    assert_eq!(header["kid"], kid.as_str(), "{header}");
    assert_eq!(claims["iss"], ISS, "{claims}");
    assert_eq!(claims["aud"], AUD, "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["email"], "alice@example.test", "{claims}");
    assert_eq!(claims["roles"], json!(["admin", "ops"]), "{claims}");
    assert_eq!(
        claims["scopes"],
        json!(["orders:read", "orders:write"]),
        "{claims}"
    );
    assert_eq!(claims["auth_method"], "jwt", "{claims}");
    assert_eq!(claims["original_iss"], "https://hs.test", "{claims}");
    assert_eq!(claims["route"], "asserted", "{claims}");
    let iat = claims["iat"].as_i64().expect("iat is an integer");
    let exp = claims["exp"].as_i64().expect("exp is an integer");
    assert_eq!(exp - iat, TTL, "{claims}");
    let (_, claims2) = &verified[1];
    let iat2 = claims2["iat"].as_i64().unwrap();
    assert!(
        (before - 1..=after + 1).contains(&iat2),
        "iat {iat2} not within [{before}, {after}]"
    );
    assert_eq!(claims2["exp"].as_i64().unwrap() - iat2, TTL);
    // `second` was a token-cache hit: a cached identity keeps only
    // the claims something reads (`iss` for `original_iss`), and its
    // assertion must say what the verifying request's did.
    for k in [
        "sub",
        "email",
        "roles",
        "scopes",
        "auth_method",
        "original_iss",
    ] {
        assert_eq!(
            claims2[k], claims[k],
            "cache hit's assertion differs in {k}"
        );
    }

    // A token with `role` as a string, no email and no scope: arrays all the same.
    let plain = hs_token(&hs_claims("bob", json!({"role": "viewer"})));
    let a = asserted(&gw, &up, "/asserted/plain", &plain);
    let (_, c) = py_verify_ok(&jwks, alg, &[&a]).remove(0);
    assert_eq!(c["sub"], "bob", "{c}");
    assert_eq!(c["roles"], json!(["viewer"]), "{c}");
    assert_eq!(c["scopes"], json!([]), "{c}");
    assert!(c.get("email").is_none(), "{c}");

    // Negative controls: the verifier does reject a tampered payload, a signature
    // moved onto another payload, and a JWKS that lacks the key.
    let parts: Vec<&str> = assertion.split('.').collect();
    let mut evil = token_part(&assertion, 1);
    evil["sub"] = json!("mallory");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64u(evil.to_string().as_bytes()),
        parts[2]
    );
    assert!(py_verify(&jwks, alg, &[&tampered]).is_err());
    let other = keys_dir();
    let stranger = genkey(&other, "stranger", alg);
    let mut wrong = jwks.clone();
    let mut jwk = wrong["keys"][0].clone();
    let raw = public_raw(&stranger, alg);
    match alg {
        Alg::Es256 => {
            jwk["x"] = json!(b64u(&raw[1..33]));
            jwk["y"] = json!(b64u(&raw[33..65]));
        }
        Alg::EdDsa => jwk["x"] = json!(b64u(&raw)),
    }
    wrong["keys"][0] = jwk;
    let err = py_verify(&wrong, alg, &[&assertion]).unwrap_err();
    assert!(err.contains("Signature"), "{err}");
    assert!(py_verify(&json!({"keys": []}), alg, &[&assertion]).is_err());

    // Only assertion = true routes get the header; a client-sent one never passes.
    for (path, with_token) in [("/api/x", true), ("/open/x", false)] {
        let mut headers = vec![("X-Auth-Assertion", "forged.by.client")];
        if with_token {
            headers.push(("Authorization", &auth));
        }
        let r = gw.get(path, &headers);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(up.last().path, path);
        assert_eq!(up.last().header("x-auth-assertion"), None, "{path}");
    }

    // Denied requests never reach the upstream, so they carry no assertion.
    let hits = up.hits();
    assert_eq!(gw.get("/asserted/x", &[]).status, 401);
    assert_eq!(up.hits(), hits);

    // HEAD on the JWKS: the same headers, no body; other methods are not served.
    let r = request(&gw.proxy_addr, "HEAD", JWKS_PATH, &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = request(&gw.proxy_addr, "POST", JWKS_PATH, &[], b"{}");
    assert_ne!(r.status, 200, "POST {JWKS_PATH}: {}", r.text());
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&other);
}

#[test]
fn es256_assertion_verifies_with_pyjwt_against_the_gateway_jwks() {
    jwt_assertion_verifies_independently(Alg::Es256);
}

#[test]
fn eddsa_assertion_verifies_with_pyjwt_against_the_gateway_jwks() {
    jwt_assertion_verifies_independently(Alg::EdDsa);
}

/// Key rotation by reload, as the runbook in docs/operations.md does it:
/// 1. publish the next key in `previous_key_files` (still signing with the old one);
/// 2. switch: `key_file` = next, `previous_key_files` = [old];
/// 3. retire the old key once no assertion signed by it can still be valid.
fn rotation(alg: Alg) {
    let dir = keys_dir();
    let old = genkey(&dir, "old", alg);
    let next = genkey(&dir, "next", alg);
    let (old_kid, next_kid) = (thumbprint(&old, alg), thumbprint(&next, alg));
    assert_ne!(old_kid, next_kid);
    let (gw, up) = Gateway::with_upstream(&config(alg, &old, &[]), &[HS_ENV, ADMIN_ENV]);
    let write = |key: &Path, previous: &[&Path]| {
        gw.write_config(&config(alg, key, previous).replace("{upstream}", &up.addr));
        let r = gw.reload();
        assert_eq!(r.status, 200, "reload: {}", r.text());
    };
    let token = alice_token();

    let jwks0 = fetch_jwks(&gw);
    assert_eq!(kids(&jwks0), vec![old_kid.clone()]);
    let a_old = asserted(&gw, &up, "/asserted/0", &token);
    assert_eq!(token_part(&a_old, 0)["kid"], old_kid.as_str());

    // 1. pre-publish
    write(&old, &[&next]);
    let jwks1 = fetch_jwks(&gw);
    assert_eq!(kids(&jwks1), vec![old_kid.clone(), next_kid.clone()]);
    assert_jwk_is(&jwks1["keys"][1], &next, alg);
    let a1 = asserted(&gw, &up, "/asserted/1", &token);
    assert_eq!(
        token_part(&a1, 0)["kid"],
        old_kid.as_str(),
        "a published key must not sign before it is key_file"
    );

    // 2. switch
    write(&next, &[&old]);
    let jwks2 = fetch_jwks(&gw);
    assert_eq!(kids(&jwks2), vec![next_kid.clone(), old_kid.clone()]);
    assert_jwk_is(&jwks2["keys"][0], &next, alg);
    assert_jwk_is(&jwks2["keys"][1], &old, alg);
    let a_next = asserted(&gw, &up, "/asserted/2", &token);
    assert_eq!(token_part(&a_next, 0)["kid"], next_kid.as_str());
    // the assertion minted before the switch still verifies against the new JWKS, and
    // a backend that fetched the JWKS during step 1 already knows the new key
    let v = py_verify_ok(&jwks2, alg, &[&a_old, &a1, &a_next]);
    assert_eq!(v[0].1["sub"], "alice");
    py_verify_ok(&jwks1, alg, &[&a_next]);
    // ...while a JWKS from before step 1 does not (the reason for pre-publishing)
    let err = py_verify(&jwks0, alg, &[&a_next]).unwrap_err();
    assert!(err.contains("not in the JWKS"), "{err}");

    // 3. retire: the old key's assertions no longer verify
    write(&next, &[]);
    let jwks3 = fetch_jwks(&gw);
    assert_eq!(kids(&jwks3), vec![next_kid.clone()]);
    py_verify_ok(&jwks3, alg, &[&a_next]);
    assert!(py_verify(&jwks3, alg, &[&a_old]).is_err());

    // An invalid key on reload keeps the running keys.
    let bad = dir.join("bad.pem");
    fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    gw.write_config(&config(alg, &bad, &[]).replace("{upstream}", &up.addr));
    let r = gw.reload();
    assert_eq!(r.status, 422, "reload with a bad key: {}", r.text());
    assert_eq!(kids(&fetch_jwks(&gw)), vec![next_kid.clone()]);
    let a = asserted(&gw, &up, "/asserted/3", &token);
    assert_eq!(token_part(&a, 0)["kid"], next_kid.as_str());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn es256_rotation_keeps_earlier_assertions_verifiable() {
    rotation(Alg::Es256);
}

#[test]
fn eddsa_rotation_keeps_earlier_assertions_verifiable() {
    rotation(Alg::EdDsa);
}

/// Two instances configured with the same key publish the same kid (no coordination).
#[test]
fn instances_sharing_a_key_agree_on_the_kid() {
    let dir = keys_dir();
    let key = genkey(&dir, "shared", Alg::Es256);
    let cfg = config(Alg::Es256, &key, &[]).replace(
        &format!("ttl = \"{TTL}s\"\n"),
        &format!("ttl = \"{TTL}s\"\njwks_path = \"/keys/assert.json\"\n"),
    );
    let (a, _ua) = Gateway::with_upstream(&cfg, &[HS_ENV, ADMIN_ENV]);
    let (b, _ub) = Gateway::with_upstream(&cfg, &[HS_ENV, ADMIN_ENV]);
    let ja = a.get("/keys/assert.json", &[]);
    let jb = b.get("/keys/assert.json", &[]);
    assert_eq!(ja.status, 200, "custom jwks_path: {}", ja.text());
    assert_eq!(ja.json(), jb.json());
    assert_eq!(kids(&ja.json()), vec![thumbprint(&key, Alg::Es256)]);
    // with a custom jwks_path, the default path is an ordinary (unrouted) path
    let r = a.get(JWKS_PATH, &[]);
    assert_error(&r, 404, "not_found", "no_route");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn session_assertion_has_no_original_iss_and_empty_scopes() {
    let dir = keys_dir();
    let key = genkey(&dir, "sess", Alg::EdDsa);
    let redis = RedisServer::start();
    let cfg = format!(
        r#"{}
[store]
kind = "redis"
url = "{url}"

[sessions]
cookie = "sid"
secrets_env = ["SESSION_SECRET_CURRENT", "SESSION_SECRET_PREVIOUS"]
identity = {{ subject = "userId", email = "email", roles = "role" }}

[[routes]]
name = "app"
path_prefix = "/app/"
upstream = "app"
auth = "jwt_or_session"
assertion = true
"#,
        config(Alg::EdDsa, &key, &[]),
        url = redis.url()
    );
    let mut env = vec![HS_ENV, ADMIN_ENV];
    env.extend(SESSION_ENV);
    let (gw, up) = Gateway::with_upstream(&cfg, &env);
    let sid = new_sid("assert");
    let value = session_value(
        json!({"userId": "u-42", "email": "u42@example.test", "role": ["editor", "viewer"]}),
        3_600_000,
        3_600_000,
    );
    redis.cmd(&["SET", &format!("sess:{sid}"), &value, "PX", "3600000"]);
    let cookie = format!("sid={}", session_cookie(&sid, SESSION_SECRET_CURRENT));
    let r = gw.get("/app/home", &[("Cookie", &cookie)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let a = up.last().header("x-auth-assertion").expect("no assertion");
    // a Bearer token on the same route: a JWT assertion naming the same route
    let b = asserted(&gw, &up, "/app/api", &alice_token());

    let jwks = fetch_jwks(&gw);
    let v = py_verify_ok(&jwks, Alg::EdDsa, &[&a, &b]);
    let (_, s) = &v[0];
    assert_eq!(s["sub"], "u-42", "{s}");
    assert_eq!(s["email"], "u42@example.test", "{s}");
    assert_eq!(s["roles"], json!(["editor", "viewer"]), "{s}");
    assert_eq!(s["scopes"], json!([]), "{s}");
    assert_eq!(s["auth_method"], "session", "{s}");
    assert!(s.get("original_iss").is_none(), "{s}");
    assert_eq!(s["route"], "app", "{s}");
    assert_eq!(s["exp"].as_i64().unwrap() - s["iat"].as_i64().unwrap(), TTL);
    let (_, j) = &v[1];
    assert_eq!(j["auth_method"], "jwt", "{j}");
    assert_eq!(j["original_iss"], "https://hs.test", "{j}");
    assert_eq!(j["route"], "app", "{j}");
    drop(gw);
    let _ = fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// authgate check

fn check(dir: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let o = run_cli(&["check", "--config", "gateway.toml"], env, dir);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Asserts exit 2 and a `gateway.toml:LINE:COL: message` line at `needle`'s line.
#[track_caller]
fn assert_check_error(text: &str, needle: &str, what: &str) {
    let dir = temp_dir("assert-check");
    fs::write(dir.join("gateway.toml"), text).unwrap();
    let (code, stdout, stderr) = check(&dir, &[HS_ENV, ADMIN_ENV]);
    assert_eq!(
        code, 2,
        "{what}: expected exit 2; stdout {stdout:?} stderr {stderr}"
    );
    let line = line_of(text, needle);
    let found = stderr.lines().any(|l| {
        let mut p = l.splitn(4, ':');
        p.next() == Some("gateway.toml")
            && p.next().and_then(|n| n.parse::<usize>().ok()) == Some(line)
            && p.next()
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|c| c >= 1)
            && p.next().is_some_and(|m| !m.trim().is_empty())
    });
    assert!(
        found,
        "{what}: no `gateway.toml:{line}:COL: message` line; stderr:\n{stderr}"
    );
    let _ = fs::remove_dir_all(&dir);
}

fn check_text(alg: &str, key: &Path, previous: &str) -> String {
    let c = config(Alg::Es256, key, &[])
        .replace("algorithm = \"ES256\"", &format!("algorithm = \"{alg}\""))
        .replace(
            "previous_key_files = []",
            &format!("previous_key_files = [{previous}]"),
        );
    render(&c, "127.0.0.1:18080", "127.0.0.1:19090").replace("{upstream}", "127.0.0.1:3000")
}

#[test]
fn check_accepts_good_keys_and_refuses_the_wrong_key_type() {
    let dir = keys_dir();
    let ec = genkey(&dir, "ec", Alg::Es256);
    let ed = genkey(&dir, "ed", Alg::EdDsa);
    let p384 = dir.join("p384.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        p384.to_str().unwrap(),
    ]);
    let sec1 = dir.join("sec1.pem");
    openssl(&[
        "ecparam",
        "-genkey",
        "-name",
        "prime256v1",
        "-noout",
        "-out",
        sec1.to_str().unwrap(),
    ]);
    let rsa = fixture("rsa_priv.pem");
    let public = fixture("ec256_pub.pem");

    for (alg, key, prev) in [("ES256", &ec, &ec), ("EdDSA", &ed, &ed)] {
        let text = check_text(alg, key, &format!("{:?}", prev.to_str().unwrap()));
        let d = temp_dir("assert-check");
        fs::write(d.join("gateway.toml"), &text).unwrap();
        let (code, stdout, stderr) = check(&d, &[HS_ENV, ADMIN_ENV]);
        assert_eq!(code, 0, "{alg}: {stderr}");
        assert!(stdout.contains("config ok"), "{stdout}");
        let _ = fs::remove_dir_all(&d);
    }

    for (alg, key, what) in [
        ("ES256", &ed, "an Ed25519 key for ES256"),
        ("EdDSA", &ec, "a P-256 key for EdDSA"),
        ("ES256", &p384, "a P-384 key for ES256"),
        ("ES256", &rsa, "an RSA key for ES256"),
        ("EdDSA", &rsa, "an RSA key for EdDSA"),
        ("ES256", &public, "a public key"),
        ("ES256", &sec1, "a SEC1 (not PKCS#8) EC key"),
    ] {
        let text = check_text(alg, key, "");
        assert_check_error(&text, "key_file = ", what);
    }
    // a previous key of the wrong type, and a missing key file
    let text = check_text("ES256", &ec, &format!("{:?}", ed.to_str().unwrap()));
    assert_check_error(
        &text,
        "previous_key_files = ",
        "an Ed25519 previous key for ES256",
    );
    let text = check_text("EdDSA", &dir.join("missing.pem"), "");
    assert_check_error(&text, "key_file = ", "a missing key file");
    let text = check_text("RS256", &ec, "");
    assert_check_error(&text, "algorithm = \"RS256\"", "RS256");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_assertion_without_section_or_identity() {
    let dir = keys_dir();
    let key = genkey(&dir, "ec", Alg::Es256);
    // assertion = true without [assertion]
    let full = check_text("ES256", &key, "");
    let cut = full.find("[assertion]").unwrap();
    assert_check_error(&full[..cut], "assertion = true", "no [assertion]");
    // assertion = true on an auth = "none" route
    let text = format!(
        "{full}
[[routes]]
name = \"public\"
path_prefix = \"/public/\"
upstream = \"app\"
auth = \"none\"
assertion = true
"
    );
    let line = text.lines().count(); // the last line
    let needle = text.lines().nth(line - 1).unwrap().to_string();
    assert_eq!(needle, "assertion = true");
    let dir2 = temp_dir("assert-check");
    fs::write(dir2.join("gateway.toml"), &text).unwrap();
    let (code, _, stderr) = check(&dir2, &[HS_ENV, ADMIN_ENV]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("gateway.toml:{line}:"))),
        "no error at line {line}: {stderr}"
    );
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(&dir2);
}
