//! Hostile tokens: `alg: none` in any case, HS256 signed with the RSA public key
//! (algorithm confusion), `jku` / `x5u` / `jwk` header fields (never fetched: the
//! attacker's server must see zero connections), unknown `crit`, a 20 KiB token,
//! garbage base64, a path-like `kid`. Every one is a 401 and reaches no upstream.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::time::Duration;

fn start() -> (Gateway, Upstream) {
    GatewayConfig::rs().with_upstream(&[HS_ENV])
}

#[test]
fn alg_none_in_any_case() {
    let (gw, up) = start();
    let targets = [
        ("/api/x", hs_claims("admin", json!({}))),
        ("/rs/x", claims("https://rs.test", "admin")),
    ];
    for (path, payload) in &targets {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = json!({"alg": alg, "typ": "JWT"});
            let unsigned = raw_token(&header, payload, b""); // "h.p."
            let signed = raw_token(&header, payload, b"some-signature-bytes");
            for t in [unsigned, signed] {
                let r = gw.get_bearer(path, &t);
                assert_invalid(&r, "alg_not_allowed", &t);
            }
        }
    }
    assert_eq!(up.hits(), 0);
}

#[test]
fn hs256_signed_with_rsa_public_key_is_rejected() {
    let (gw, up) = start();
    let pem = std::fs::read_to_string(fixture("rsa_pub.pem")).unwrap();
    for secret in [pem.as_str(), pem.trim_end()] {
        let t = sign(
            Algorithm::HS256,
            &hs_key(secret),
            &claims("https://rs.test", "admin"),
        );
        assert_invalid(&gw.get_bearer("/rs/x", &t), "alg_not_allowed", &t);
        let t = sign_kid(
            Algorithm::HS256,
            &hs_key(secret),
            "k1",
            &claims("https://jw.test", "admin"),
        );
        assert_invalid(&gw.get_bearer("/jwks/x", &t), "alg_not_allowed", &t);
    }
    // the JWKS modulus as an HMAC key
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks_rs.json")).unwrap()).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    let t = sign_kid(
        Algorithm::HS256,
        &hs_key(n),
        "k1",
        &claims("https://jw.test", "admin"),
    );
    assert_invalid(&gw.get_bearer("/jwks/x", &t), "alg_not_allowed", &t);
    assert_eq!(up.hits(), 0);
}

#[test]
fn jku_x5u_jwk_are_never_used() {
    let (gw, up) = start();
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks_rs.json")).unwrap()).unwrap();
    // the attacker's key (rsa2) published under kid "evil"
    let mut evil_jwk = jwks["keys"][1].clone();
    evil_jwk["kid"] = json!("evil");
    let attacker = ConnCounter::start(json!({"keys": [evil_jwk.clone()]}).to_string());
    let jku = format!("http://{}/jwks.json", attacker.addr);
    let x5u = format!("http://{}/cert.pem", attacker.addr);
    let real = rsa_key("rsa_priv.pem");
    let evil = rsa_key("rsa2_priv.pem");

    for (path, iss, real_kid) in [
        ("/rs/x", "https://rs.test", None),
        ("/jwks/x", "https://jw.test", Some("k1")),
    ] {
        let payload = claims(iss, "admin");
        let mut headers = vec![
            (
                json!({"alg": "RS256", "typ": "JWT", "kid": "evil", "jku": jku}),
                &evil,
            ),
            (
                json!({"alg": "RS256", "typ": "JWT", "kid": "evil", "x5u": x5u}),
                &evil,
            ),
            (
                json!({"alg": "RS256", "typ": "JWT", "kid": "evil", "jwk": evil_jwk}),
                &evil,
            ),
            (json!({"alg": "RS256", "typ": "JWT", "jku": jku}), &real),
            (json!({"alg": "RS256", "typ": "JWT", "x5u": x5u}), &real),
            (
                json!({"alg": "RS256", "typ": "JWT", "jwk": jwks["keys"][0]}),
                &real,
            ),
        ];
        if let Some(kid) = real_kid {
            // otherwise perfect tokens: only the extra field is wrong
            for (h, _) in headers.iter_mut().skip(3) {
                h["kid"] = json!(kid);
            }
        }
        for (header, key) in headers {
            let t = raw_signed(&header, &payload, Algorithm::RS256, key);
            let r = gw.get_bearer(path, &t);
            assert_invalid(&r, "malformed", &t);
        }
    }
    // give a lazy fetch a chance to show up before counting
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        attacker.count(),
        0,
        "the gateway contacted the jku/x5u host"
    );
    assert_eq!(up.hits(), 0);
}

#[test]
fn unknown_crit_is_rejected() {
    let (gw, up) = start();
    let header = json!({"alg": "HS256", "typ": "JWT", "crit": ["exp-unknown"], "exp-unknown": 1});
    let t = raw_signed(
        &header,
        &hs_claims("alice", json!({})),
        Algorithm::HS256,
        &hs_key(HS_SECRET),
    );
    assert_invalid(&gw.get_bearer("/api/x", &t), "malformed", &t);
    let header = json!({"alg": "RS256", "crit": ["exp-unknown"]});
    let t = raw_signed(
        &header,
        &claims("https://rs.test", "alice"),
        Algorithm::RS256,
        &rsa_key("rsa_priv.pem"),
    );
    assert_invalid(&gw.get_bearer("/rs/x", &t), "malformed", &t);
    assert_eq!(up.hits(), 0);
}

#[test]
fn oversized_token_is_a_clean_4xx() {
    let (gw, up) = start();
    // correctly signed: only its size is wrong
    let big = hs_token(&hs_claims("alice", json!({"pad": "A".repeat(20 * 1024)})));
    assert!(big.len() > 20 * 1024);
    let auth = format!("Bearer {big}");
    let r = try_request(
        &gw.proxy_addr,
        "GET",
        "/api/x",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("20 KiB token: the gateway dropped the connection instead of answering");
    assert!(
        (400..500).contains(&r.status),
        "20 KiB token got {}",
        r.status
    );
    assert_invalid(&r, "malformed", &big);
    // random bytes, no structure at all
    let junk = "x".repeat(20 * 1024);
    let auth = format!("Bearer {junk}");
    let r = try_request(
        &gw.proxy_addr,
        "GET",
        "/api/x",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("20 KiB junk: connection dropped");
    assert!((400..500).contains(&r.status), "got {}", r.status);
    assert_eq!(up.hits(), 0);
    // the gateway is still serving
    let ok = hs_token(&hs_claims("alice", json!({})));
    assert_eq!(gw.get_bearer("/api/x", &ok).status, 200);
}

#[test]
fn garbage_base64_is_malformed() {
    let (gw, up) = start();
    for t in ["!!!.###.$$$", "...", "e30.e30.", "%00.%00.%00"] {
        assert_invalid(&gw.get_bearer("/api/x", t), "malformed", t);
    }
    assert_eq!(up.hits(), 0);
}

#[test]
fn path_like_kid_is_just_an_unknown_key() {
    let (gw, up) = start();
    let c = claims("https://jw.test", "admin");
    for kid in ["../../../../etc/passwd", "/dev/null", "k1' OR '1'='1"] {
        let t = sign_kid(Algorithm::RS256, &rsa_key("rsa_priv.pem"), kid, &c);
        assert_invalid(&gw.get_bearer("/jwks/x", &t), "unknown_key", &t);
    }
    assert_eq!(up.hits(), 0);
}
