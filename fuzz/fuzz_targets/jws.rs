//! JWS parse + verify + claims: arbitrary text never panics, and whatever
//! verifies is checked against an independent reference (for HMAC, the
//! signature is recomputed here; for the asymmetric keys, jsonwebtoken's own
//! verification, which parses the key on every call, must accept it with one
//! of the keys: authgate verifies with keys parsed once). A random or mutated
//! token that verifies without the key would be a finding.
#![no_main]

use authgate::testing::jwt::{check_claims, claims_of, parse, verify_jws, ClaimRules};
use authgate::testing::keys::{keys_from_jwks, public_key_from_pem, secret_key, AlgSet, KeySet};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzz-hs-secret-0123456789abcdef0123456789abcdef";

fn keys() -> &'static (KeySet, AlgSet) {
    static K: OnceLock<(KeySet, AlgSet)> = OnceLock::new();
    K.get_or_init(|| {
        let mut set = keys_from_jwks(include_bytes!("../../tests/fixtures/jwks_rs.json"))
            .expect("fixture JWKS");
        set.keys.push(secret_key(SECRET));
        for pem in [
            &include_bytes!("../../tests/fixtures/ec256_pub.pem")[..],
            &include_bytes!("../../tests/fixtures/ec384_pub.pem")[..],
            &include_bytes!("../../tests/fixtures/ed25519_pub.pem")[..],
        ] {
            set.keys
                .push(public_key_from_pem(pem).expect("fixture PEM"));
        }
        let allowed = set.algs();
        (set, allowed)
    })
}

fn hmac_ok(alg: &str, signing_input: &[u8], sig: &[u8]) -> bool {
    macro_rules! check {
        ($h:ty) => {{
            let mut m = <Hmac<$h> as Mac>::new_from_slice(SECRET).unwrap();
            m.update(signing_input);
            m.verify_slice(sig).is_ok()
        }};
    }
    match alg {
        "HS256" => check!(sha2::Sha256),
        "HS384" => check!(sha2::Sha384),
        "HS512" => check!(sha2::Sha512),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let (set, allowed) = keys();
    let parsed = parse(token).map(|j| (j.header.alg.clone(), j.header.kid.clone()));
    let Ok(payload) = verify_jws(token, set, *allowed) else {
        return;
    };
    // It verified: it must be a well-formed compact JWS whose signature the
    // reference accepts.
    let (alg, _kid) = parsed.expect("verify_jws accepted what parse refused");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "verified a token without exactly 3 parts");
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("verified a non-base64url signature");
    assert!(!sig.is_empty(), "verified an empty signature");
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    if alg.starts_with("HS") {
        assert!(
            hmac_ok(&alg, signing_input.as_bytes(), &sig),
            "HMAC token verified but the reference HMAC disagrees: {token}"
        );
    } else {
        assert!(
            matches!(
                alg.as_str(),
                "RS256"
                    | "RS384"
                    | "RS512"
                    | "PS256"
                    | "PS384"
                    | "PS512"
                    | "ES256"
                    | "ES384"
                    | "EdDSA"
            ),
            "verified with alg {alg:?}"
        );
        let a = authgate::testing::keys::parse_alg(&alg).expect("a known alg");
        assert!(
            set.keys.iter().any(|k| k.algs.contains(a)
                && jsonwebtoken::crypto::verify(parts[2], signing_input.as_bytes(), &k.key, a)
                    .unwrap_or(false)),
            "{alg} token verified but jsonwebtoken's verification refuses it: {token}"
        );
    }
    assert_eq!(
        URL_SAFE_NO_PAD.decode(parts[1]).ok().as_deref(),
        Some(payload.as_slice())
    );
    if let Ok(claims) = claims_of(&payload) {
        let aud = vec!["api".to_string()];
        let rules = ClaimRules {
            issuer: "https://fuzz.test",
            audiences: &aud,
            leeway: 30,
        };
        let now = 1_700_000_000;
        if check_claims(&claims, &rules, now).is_ok() {
            assert_eq!(
                claims.get("iss").and_then(|v| v.as_str()),
                Some("https://fuzz.test")
            );
            assert!(claims.get("exp").is_some(), "accepted a token without exp");
        }
    }
});
