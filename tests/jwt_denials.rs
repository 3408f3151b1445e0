//! Every JWT denial reason, with its status, `WWW-Authenticate` and JSON body:
//! `missing_credentials` (401 `unauthorized`, `Bearer realm="authgate"`), and the 401
//! `invalid_token` family: `malformed`, `bad_signature`, `unknown_key`,
//! `alg_not_allowed`, `expired`, `not_yet_valid`, `wrong_issuer`, `wrong_audience`.
//! Also the edges that must pass (lower-case `bearer`, leeway on exp/nbf, an `aud`
//! array containing the audience). No denied request reaches the upstream and no
//! error body contains the token.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn start() -> (Gateway, Upstream) {
    GatewayConfig::rs().with_upstream(&[HS_ENV])
}

#[test]
fn missing_credentials() {
    let (gw, up) = start();
    let valid = hs_token(&hs_claims("alice", json!({})));
    let basic = format!("Basic {}", b64u(b"alice:secret"));
    for headers in [
        vec![],
        vec![("Authorization", "Basic xyz")],
        vec![("Authorization", basic.as_str())],
        vec![("Authorization", "")],
        vec![("Cookie", "sessionId=abc")],
    ] {
        let r = gw.get("/api/x", &headers);
        assert_error(&r, 401, "unauthorized", "missing_credentials");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="authgate""#),
            "{headers:?}"
        );
    }
    // the HTTP auth scheme is case-insensitive
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {valid}");
        let r = gw.get("/api/x", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    assert_eq!(up.hits(), 3);
}

#[test]
fn malformed() {
    let (gw, up) = start();
    for bad in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9.@@@@.xyz",
        "!!!.###.$$$",
        // header that is base64 but not JSON
        "bm90IGpzb24.eyJzdWIiOiJ4In0.c2ln",
    ] {
        assert_invalid(&gw.get_bearer("/api/x", bad), "malformed", bad);
    }
    // a validly signed token without exp
    let no_exp = hs_token(&hs_claims("alice", json!({"exp": null})));
    assert_invalid(&gw.get_bearer("/api/x", &no_exp), "malformed", &no_exp);
    // two Authorization headers, even both valid
    let valid = hs_token(&hs_claims("alice", json!({})));
    let auth = format!("Bearer {valid}");
    let r = gw.get(
        "/api/x",
        &[("Authorization", &auth), ("Authorization", &auth)],
    );
    assert_invalid(&r, "malformed", &valid);
    assert_eq!(up.hits(), 0);
}

#[test]
fn bad_signature() {
    let (gw, up) = start();
    let c = hs_claims("alice", json!({}));
    let wrong_secret = sign(Algorithm::HS256, &hs_key("not-the-secret"), &c);
    assert_invalid(
        &gw.get_bearer("/api/x", &wrong_secret),
        "bad_signature",
        &wrong_secret,
    );
    // signature truncated to 40 chars = 30 whole bytes (still canonical base64url)
    let good = hs_token(&c);
    let (msg, sig) = good.rsplit_once('.').unwrap();
    let t = format!("{msg}.{}", &sig[..40]);
    assert_invalid(&gw.get_bearer("/api/x", &t), "bad_signature", &t);
    // RS256 signed by the other RSA key
    let rc = claims("https://rs.test", "alice");
    let other = sign(Algorithm::RS256, &rsa_key("rsa2_priv.pem"), &rc);
    assert_invalid(&gw.get_bearer("/rs/x", &other), "bad_signature", &other);
    assert_eq!(up.hits(), 0);
}

#[test]
fn unknown_key() {
    let (gw, up) = start();
    let c = claims("https://jw.test", "alice");
    let t = sign_kid(Algorithm::RS256, &rsa_key("rsa_priv.pem"), "k9", &c);
    assert_invalid(&gw.get_bearer("/jwks/x", &t), "unknown_key", &t);
    assert_eq!(up.hits(), 0);
    let ok = sign_kid(Algorithm::RS256, &rsa_key("rsa_priv.pem"), "k1", &c);
    assert_eq!(gw.get_bearer("/jwks/x", &ok).status, 200);
}

#[test]
fn alg_not_allowed() {
    let (gw, up) = start();
    let key = rsa_key("rsa_priv.pem");
    let c = claims("https://rs.test", "alice");
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let t = sign(alg, &key, &c);
        assert_invalid(&gw.get_bearer("/rs/x", &t), "alg_not_allowed", &t);
    }
    let t = sign_kid(
        Algorithm::RS384,
        &key,
        "k1",
        &claims("https://jw.test", "alice"),
    );
    assert_invalid(&gw.get_bearer("/jwks/x", &t), "alg_not_allowed", &t);
    // HS384 with the right secret on an HS256-only issuer
    let t = sign(
        Algorithm::HS384,
        &hs_key(HS_SECRET),
        &hs_claims("alice", json!({})),
    );
    assert_invalid(&gw.get_bearer("/api/x", &t), "alg_not_allowed", &t);
    assert_eq!(up.hits(), 0);
}

#[test]
fn expired_and_exp_leeway() {
    let (gw, up) = start();
    let t = hs_token(&hs_claims(
        "alice",
        json!({"iat": now() - 600, "exp": now() - 120}),
    ));
    assert_invalid(&gw.get_bearer("/api/x", &t), "expired", &t);
    assert_eq!(up.hits(), 0);
    // 10 s past exp is inside the 30 s leeway
    let t = hs_token(&hs_claims(
        "alice",
        json!({"iat": now() - 600, "exp": now() - 10}),
    ));
    let r = gw.get_bearer("/api/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn not_yet_valid_and_leeway() {
    let (gw, up) = start();
    let nbf = hs_token(&hs_claims("alice", json!({"nbf": now() + 120})));
    assert_invalid(&gw.get_bearer("/api/x", &nbf), "not_yet_valid", &nbf);
    let iat = hs_token(&hs_claims(
        "alice",
        json!({"iat": now() + 120, "exp": now() + 600}),
    ));
    assert_invalid(&gw.get_bearer("/api/x", &iat), "not_yet_valid", &iat);
    assert_eq!(up.hits(), 0);
    // 10 s in the future is inside the leeway
    let t = hs_token(&hs_claims(
        "alice",
        json!({"nbf": now() + 10, "iat": now() + 10}),
    ));
    let r = gw.get_bearer("/api/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn wrong_issuer() {
    let (gw, up) = start();
    for iss in [
        "https://evil.test",
        "https://hs.test/",
        "https://HS.test",
        "hs",
    ] {
        let t = hs_token(&hs_claims("alice", json!({"iss": iss})));
        assert_invalid(&gw.get_bearer("/api/x", &t), "wrong_issuer", &t);
    }
    let t = hs_token(&hs_claims("alice", json!({"iss": null})));
    assert_invalid(&gw.get_bearer("/api/x", &t), "wrong_issuer", &t);
    assert_eq!(up.hits(), 0);
}

#[test]
fn wrong_audience() {
    let (gw, up) = start();
    for aud in [
        json!("other"),
        json!(["other", "web"]),
        json!("API"),
        json!([]),
    ] {
        let t = hs_token(&hs_claims("alice", json!({"aud": aud})));
        assert_invalid(&gw.get_bearer("/api/x", &t), "wrong_audience", &t);
    }
    let t = hs_token(&hs_claims("alice", json!({"aud": null})));
    assert_invalid(&gw.get_bearer("/api/x", &t), "wrong_audience", &t);
    assert_eq!(up.hits(), 0);
    let t = hs_token(&hs_claims("alice", json!({"aud": ["other", "api"]})));
    let r = gw.get_bearer("/api/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn issuer_without_audiences_does_not_check_aud() {
    let cfg = GatewayConfig::new()
        .upstream("app", &["{upstream}"])
        .issuer(
            "hs",
            "issuer = \"https://hs.test\"\nalgorithms = [\"HS256\"]\n\
             secret_env = \"TEST_HS_SECRET\"\nleeway = \"30s\"",
        )
        .jwt_route("api", "/api/", &["hs"])
        .toml();
    let (gw, _up) = Gateway::with_upstream(&cfg, &[HS_ENV]);
    for aud in [json!("anything"), json!(null)] {
        let t = hs_token(&hs_claims("alice", json!({"aud": aud})));
        let r = gw.get_bearer("/api/x", &t);
        assert_eq!(r.status, 200, "aud {aud}: {}", r.text());
    }
}
