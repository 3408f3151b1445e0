//! Every supported JWT algorithm and key source is accepted and produces the identity
//! headers: HS256/384/512 (`secret_env`, `secret_file`), RS256/384/512 and PS256/384/512
//! and ES256/ES384 and EdDSA (`public_key_file`), RS256 from a `jwks_file` (kids k1, k2).
//! The upstream must see `X-Auth-Subject`, `X-Auth-Method: jwt`, `X-Auth-Issuer` (config
//! name), `X-Auth-Email`, `X-Auth-Roles` and `X-Auth-Scopes` built from the claim
//! variants (`roles` array, `role` string/array, `scope` string, `scp` array).
//! Each issuer also gets a tampered token, which must be refused, so that a gateway
//! accepting anything fails here too.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// Server + upstream, then per (name, alg, key line): an issuer `name` with iss
/// `https://<name>.test` and a route `/<name>/` bound to it.
fn config(issuers: &[(&str, &str, String)]) -> String {
    let mut cfg = GatewayConfig::new().upstream("app", &["{upstream}"]);
    for (name, alg, key_line) in issuers {
        cfg = cfg.issuer(
            name,
            &format!(
                "issuer = \"https://{name}.test\"\naudiences = [\"api\"]\n\
                 algorithms = [\"{alg}\"]\n{key_line}\nleeway = \"30s\""
            ),
        );
    }
    for (name, _, _) in issuers {
        cfg = cfg.jwt_route(&format!("r_{name}"), &format!("/{name}/"), &[name]);
    }
    cfg.toml()
}

fn key_file(key: &str, file: &str) -> String {
    format!("{key} = \"{{fixtures}}/{file}\"")
}

/// Claim variants and the X-Auth-Roles / X-Auth-Scopes they must produce.
fn identity(variant: usize) -> (Value, &'static str, &'static str) {
    match variant % 3 {
        0 => (json!({"roles": ["a", "b"], "scope": "x y"}), "a,b", "x,y"),
        1 => (json!({"role": "a", "scp": ["x", "y"]}), "a", "x,y"),
        _ => (json!({"role": ["c", "d"], "scope": "only"}), "c,d", "only"),
    }
}

/// Sends a valid token for issuer `name` and checks what the upstream saw; then a
/// tampered copy (payload changed, signature kept), which must be a 401.
fn accepts(
    gw: &Gateway,
    up: &Upstream,
    name: &str,
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    variant: usize,
) {
    let sub = format!("user-{name}");
    let (extra, roles, scopes) = identity(variant);
    let mut c = merge(claims(&format!("https://{name}.test"), &sub), extra);
    c["email"] = json!(format!("{name}@example.test"));
    let token = match kid {
        Some(kid) => sign_kid(alg, key, kid, &c),
        None => sign(alg, key, &c),
    };
    let path = format!("/{name}/resource?q=1");
    let before = up.hits();
    let r = gw.get_bearer(&path, &token);
    assert_eq!(r.status, 200, "{name} ({alg:?}): {}", r.text());
    assert_eq!(up.hits(), before + 1);
    let seen = up.last();
    assert_eq!(seen.path, path);
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some(sub.as_str()));
    assert_eq!(seen.header("x-auth-method").as_deref(), Some("jwt"));
    assert_eq!(seen.header("x-auth-issuer").as_deref(), Some(name));
    let email = format!("{name}@example.test");
    assert_eq!(seen.header("x-auth-email").as_deref(), Some(email.as_str()));
    assert_eq!(seen.header("x-auth-roles").as_deref(), Some(roles));
    assert_eq!(seen.header("x-auth-scopes").as_deref(), Some(scopes));
    // the echo travels back through the gateway
    assert_eq!(r.json()["headers"]["x-auth-subject"], json!([sub]));

    let mut forged = c.clone();
    forged["sub"] = json!("mallory");
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64u(forged.to_string().as_bytes()),
        parts[2]
    );
    let r = gw.get_bearer(&path, &tampered);
    assert_invalid(&r, "bad_signature", &tampered);
    assert_eq!(
        up.hits(),
        before + 1,
        "a tampered token reached the upstream"
    );
}

#[test]
fn hmac_secret_env() {
    let cfg = config(&[
        ("hs256", "HS256", "secret_env = \"T_HS256\"".into()),
        ("hs384", "HS384", "secret_env = \"T_HS384\"".into()),
        ("hs512", "HS512", "secret_env = \"T_HS512\"".into()),
    ]);
    let s256 = "secret-256-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let s384 = "secret-384-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let s512 = "secret-512-cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    let (gw, up) = Gateway::with_upstream(
        &cfg,
        &[("T_HS256", s256), ("T_HS384", s384), ("T_HS512", s512)],
    );
    accepts(&gw, &up, "hs256", Algorithm::HS256, &hs_key(s256), None, 0);
    accepts(&gw, &up, "hs384", Algorithm::HS384, &hs_key(s384), None, 1);
    accepts(&gw, &up, "hs512", Algorithm::HS512, &hs_key(s512), None, 2);
    // each issuer has its own secret: hs384's secret does not verify for hs256
    let t = sign(
        Algorithm::HS256,
        &hs_key(s384),
        &claims("https://hs256.test", "x"),
    );
    assert_invalid(&gw.get_bearer("/hs256/", &t), "bad_signature", &t);
}

#[test]
fn hmac_secret_file_drops_one_trailing_newline() {
    let cfg = config(&[("hsfile", "HS256", key_file("secret_file", "hs_secret.txt"))]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    let file = std::fs::read_to_string(fixture("hs_secret.txt")).unwrap();
    let secret = file.strip_suffix('\n').unwrap();
    accepts(
        &gw,
        &up,
        "hsfile",
        Algorithm::HS256,
        &hs_key(secret),
        None,
        1,
    );
    // the newline is not part of the key
    let t = sign(
        Algorithm::HS256,
        &hs_key(&file),
        &claims("https://hsfile.test", "x"),
    );
    assert_invalid(&gw.get_bearer("/hsfile/", &t), "bad_signature", &t);
}

#[test]
fn rsa_pkcs1() {
    let pk = key_file("public_key_file", "rsa_pub.pem");
    let cfg = config(&[
        ("rs256", "RS256", pk.clone()),
        ("rs384", "RS384", pk.clone()),
        ("rs512", "RS512", pk),
    ]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    let key = rsa_key("rsa_priv.pem");
    accepts(&gw, &up, "rs256", Algorithm::RS256, &key, None, 0);
    accepts(&gw, &up, "rs384", Algorithm::RS384, &key, None, 1);
    accepts(&gw, &up, "rs512", Algorithm::RS512, &key, None, 2);
}

#[test]
fn rsa_pss() {
    let pk = key_file("public_key_file", "rsa_pub.pem");
    let cfg = config(&[
        ("ps256", "PS256", pk.clone()),
        ("ps384", "PS384", pk.clone()),
        ("ps512", "PS512", pk),
    ]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    let key = rsa_key("rsa_priv.pem");
    accepts(&gw, &up, "ps256", Algorithm::PS256, &key, None, 2);
    accepts(&gw, &up, "ps384", Algorithm::PS384, &key, None, 0);
    accepts(&gw, &up, "ps512", Algorithm::PS512, &key, None, 1);
}

#[test]
fn ecdsa_p256_p384() {
    let cfg = config(&[
        (
            "es256",
            "ES256",
            key_file("public_key_file", "ec256_pub.pem"),
        ),
        (
            "es384",
            "ES384",
            key_file("public_key_file", "ec384_pub.pem"),
        ),
    ]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    let k256 = ec_key("ec256_priv.pem");
    accepts(&gw, &up, "es256", Algorithm::ES256, &k256, None, 0);
    accepts(
        &gw,
        &up,
        "es384",
        Algorithm::ES384,
        &ec_key("ec384_priv.pem"),
        None,
        1,
    );
}

#[test]
fn eddsa_public_key_file() {
    let cfg = config(&[(
        "ed",
        "EdDSA",
        key_file("public_key_file", "ed25519_pub.pem"),
    )]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    accepts(
        &gw,
        &up,
        "ed",
        Algorithm::EdDSA,
        &ed_key("ed25519_priv.pem"),
        None,
        2,
    );
}

#[test]
fn rs256_from_jwks_file_by_kid() {
    let cfg = config(&[("jw", "RS256", key_file("jwks_file", "jwks_rs.json"))]);
    let (gw, up) = Gateway::with_upstream(&cfg, &[]);
    accepts(
        &gw,
        &up,
        "jw",
        Algorithm::RS256,
        &rsa_key("rsa_priv.pem"),
        Some("k1"),
        0,
    );
    accepts(
        &gw,
        &up,
        "jw",
        Algorithm::RS256,
        &rsa_key("rsa2_priv.pem"),
        Some("k2"),
        1,
    );
    // the kid selects the key: rsa2's signature under kid k1 does not verify
    let c = claims("https://jw.test", "x");
    let t = sign_kid(Algorithm::RS256, &rsa_key("rsa2_priv.pem"), "k1", &c);
    assert_invalid(&gw.get_bearer("/jw/", &t), "bad_signature", &t);
}

#[test]
fn email_header_absent_without_email_claim() {
    let (gw, up) = GatewayConfig::base().with_upstream(&[HS_ENV]);
    let t = hs_token(&hs_claims("bob", json!({"roles": "solo"})));
    let r = gw.get_bearer("/api/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-auth-subject").as_deref(), Some("bob"));
    assert_eq!(seen.header("x-auth-issuer").as_deref(), Some("hs"));
    assert_eq!(seen.header("x-auth-roles").as_deref(), Some("solo"));
    assert_eq!(seen.header("x-auth-email"), None);
}

#[test]
fn route_with_several_issuers_selects_by_iss() {
    let (gw, up) = GatewayConfig::base()
        .issuer(
            "rs",
            "issuer = \"https://rs.test\"\naudiences = [\"api\"]\n\
             algorithms = [\"RS256\"]\npublic_key_file = \"{fixtures}/rsa_pub.pem\"",
        )
        .jwt_route("both", "/both/", &["hs", "rs"])
        .with_upstream(&[HS_ENV]);
    let r = gw.get_bearer("/both/1", &hs_token(&hs_claims("h", json!({}))));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-issuer").as_deref(), Some("hs"));
    let t = sign(
        Algorithm::RS256,
        &rsa_key("rsa_priv.pem"),
        &claims("https://rs.test", "r"),
    );
    let r = gw.get_bearer("/both/2", &t);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-issuer").as_deref(), Some("rs"));
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("r"));
    // the `api` route only lists hs: the rs token is refused there
    // (the token's alg is not hs's either, so either reason is right)
    let r = gw.get_bearer("/api/3", &t);
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason == "wrong_issuer" || reason == "alg_not_allowed",
        "{}",
        r.text()
    );
    assert_invalid(&r, &reason, &t);
}
