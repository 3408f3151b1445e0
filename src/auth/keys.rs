//! Per-issuer verification keys. A key knows which algorithms it can serve
//! (its family, and for EC its curve), so a token can never choose an
//! algorithm its key was not made for: HMAC with an RSA key's bytes
//! (algorithm confusion) is impossible by construction, and `check` rejects a
//! config whose pinned algorithm no key can serve.

use aws_lc_rs::{hmac, signature as sig};
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::DecodingKeyKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use std::str::FromStr;
use std::sync::Arc;

/// A small set of JWS algorithms (bitmask): copied by value on the hot path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

/// Every algorithm authgate verifies, in a fixed order (the bit index).
pub const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn bit(alg: Algorithm) -> u16 {
    let i = ALL_ALGS.iter().position(|a| *a == alg).unwrap_or(15);
    1u16 << i
}

impl AlgSet {
    pub const HMAC: AlgSet = AlgSet(0b111);
    pub const RSA: AlgSet = AlgSet(0b111_111_000);
    pub const ES256: AlgSet = AlgSet(1 << 9);
    pub const ES384: AlgSet = AlgSet(1 << 10);
    pub const ED: AlgSet = AlgSet(1 << 11);

    /// The set holding just `alg`.
    pub fn of(alg: Algorithm) -> Self {
        AlgSet(bit(alg))
    }
    pub fn insert(&mut self, alg: Algorithm) {
        self.0 |= bit(alg);
    }
    pub fn contains(self, alg: Algorithm) -> bool {
        self.0 & bit(alg) != 0
    }
    pub fn intersect(self, other: AlgSet) -> AlgSet {
        AlgSet(self.0 & other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The algorithms in the set, in [`ALL_ALGS`] order.
    pub fn iter(self) -> impl Iterator<Item = Algorithm> {
        ALL_ALGS.into_iter().filter(move |a| self.contains(*a))
    }
}

/// Parses a JWS `alg` name exactly as the RFC spells it; `none` and unknown
/// names are `None` (the caller decides how to report it).
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" | "HS384" | "HS512" | "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512"
        | "ES256" | "ES384" | "EdDSA" => Algorithm::from_str(name).ok(),
        _ => None,
    }
}

/// One verification key with the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algs: AlgSet,
    /// The key made ready once per algorithm it serves (see [`Verifier`]).
    ready: Arc<[(Algorithm, Verifier)]>,
}

impl VerifyKey {
    /// A key for `algs`, parsed now for each of them. Its set keeps only the
    /// algorithms aws-lc accepted it for (an RSA key under 2048 bits, an EC
    /// point off its curve serve nothing), so `check` reports a key that
    /// cannot verify a configured algorithm instead of every token failing
    /// with `bad_signature` at run time.
    pub fn new(kid: Option<String>, key: DecodingKey, algs: AlgSet) -> VerifyKey {
        let ready: Arc<[(Algorithm, Verifier)]> = algs
            .iter()
            .filter_map(|a| Verifier::for_key(&key, a).map(|v| (a, v)))
            .collect();
        let mut served = AlgSet::default();
        for (a, _) in ready.iter() {
            served.insert(*a);
        }
        VerifyKey {
            kid,
            key,
            algs: served,
            ready,
        }
    }

    /// The ready verifier for `alg`, if the key could be prepared for it.
    pub fn verifier(&self, alg: Algorithm) -> Option<&Verifier> {
        self.ready.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// A key parsed once for one algorithm. `jsonwebtoken`'s verification
/// parses the key on every call (DER, then for RSA a Montgomery context):
/// about 15 % of an RS256 verification (callgrind), paid on every cache
/// miss. The same aws-lc primitives and parameters as jsonwebtoken's
/// aws-lc provider, so what verifies is unchanged.
pub enum Verifier {
    Hmac(Box<hmac::Key>),
    Public(sig::ParsedPublicKey),
}

impl Verifier {
    fn for_key(key: &DecodingKey, alg: Algorithm) -> Option<Verifier> {
        use Algorithm::*;
        // A key serves only its own family (no HMAC with an RSA key's bytes).
        if key.family() != alg.family() {
            return None;
        }
        let hmac = |h| {
            let secret = key.try_get_hmac_secret().ok()?;
            Some(Verifier::Hmac(Box::new(hmac::Key::new(h, secret))))
        };
        // A JWK's RSA key comes as `n` and `e`: aws-lc parses them as
        // jsonwebtoken's aws-lc provider does (`RsaPublicKeyComponents`).
        let rsa = |params: &'static sig::RsaParameters| match key.kind() {
            _ if !rsa_size_ok(key) => None,
            DecodingKeyKind::SecretOrDer(der) => sig::ParsedPublicKey::new(params, der).ok(),
            DecodingKeyKind::RsaModulusExponent { n, e } => sig::RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(params)
                .ok(),
        };
        let other = |params: &'static dyn sig::VerificationAlgorithm| match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => sig::ParsedPublicKey::new(params, der).ok(),
            DecodingKeyKind::RsaModulusExponent { .. } => None,
        };
        let parsed = match alg {
            HS256 => return hmac(hmac::HMAC_SHA256),
            HS384 => return hmac(hmac::HMAC_SHA384),
            HS512 => return hmac(hmac::HMAC_SHA512),
            RS256 => rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
            RS384 => rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
            RS512 => rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
            PS256 => rsa(&sig::RSA_PSS_2048_8192_SHA256),
            PS384 => rsa(&sig::RSA_PSS_2048_8192_SHA384),
            PS512 => rsa(&sig::RSA_PSS_2048_8192_SHA512),
            ES256 => other(&sig::ECDSA_P256_SHA256_FIXED),
            ES384 => other(&sig::ECDSA_P384_SHA384_FIXED),
            EdDSA => other(&sig::ED25519),
        };
        parsed.map(Verifier::Public)
    }

    /// Whether `signature` is a valid signature of `message`; HMAC tags are
    /// compared in constant time.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Hmac(k) => hmac::verify(k, message, signature).is_ok(),
            Verifier::Public(k) => k.verify_sig(message, signature).is_ok(),
        }
    }
}

/// Whether aws-lc accepts the RSA key's size (2048 to 8192 bits). Parsing
/// a key for verification does not check it; every verification then
/// fails. So the size is checked at load by aws-lc's own rule (building a
/// `PublicEncryptingKey` from the key's `n` and `e`), and a key outside it
/// serves nothing.
fn rsa_size_ok(key: &DecodingKey) -> bool {
    use aws_lc_rs::rsa::{PublicEncryptingKey, PublicKey, PublicKeyComponents};
    let components = match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => match PublicKey::from_der(der) {
            Ok(k) => PublicKeyComponents::<Vec<u8>>::from(&k),
            Err(_) => return false,
        },
        DecodingKeyKind::RsaModulusExponent { n, e } => PublicKeyComponents {
            n: n.to_vec(),
            e: e.to_vec(),
        },
    };
    TryInto::<PublicEncryptingKey>::try_into(components).is_ok()
}

/// An issuer's keys.
#[derive(Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// Why a key source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM file")]
    NotPem,
    #[error("unsupported key type in PEM (expected an RSA, EC P-256/P-384 or Ed25519 public key)")]
    UnsupportedPem,
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("invalid JWKS: {0}")]
    Jwks(String),
    #[error("JWKS holds no usable key")]
    EmptyJwks,
    /// The key parsed but the verifier refused it for every algorithm of
    /// its kind.
    #[error("the key cannot verify {0}: RSA keys need 2048 to 8192 bits, EC and Ed25519 keys a valid point")]
    Refused(String),
}

/// The kind of asymmetric key a PEM holds, found by its algorithm OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl PemKind {
    /// The algorithms a key of this kind can serve.
    pub fn algs(self) -> AlgSet {
        match self {
            PemKind::Rsa => AlgSet::RSA,
            PemKind::EcP256 => AlgSet::ES256,
            PemKind::EcP384 => AlgSet::ES384,
            PemKind::Ed25519 => AlgSet::ED,
        }
    }
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads the kind of key in a PEM document (public or private, PKCS#8,
/// SPKI, PKCS#1 or SEC1) from its label and algorithm identifier.
pub fn pem_kind(pem: &[u8]) -> Result<PemKind, KeyError> {
    let text = std::str::from_utf8(pem).map_err(|_| KeyError::NotPem)?;
    let mut label = None;
    let mut body = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line.strip_prefix("-----BEGIN ") {
            label = Some(l.trim_end_matches('-').to_string());
            inside = true;
        } else if line.starts_with("-----END ") {
            break;
        } else if inside {
            body.push_str(line);
        }
    }
    let label = label.ok_or(KeyError::NotPem)?;
    if label == "RSA PUBLIC KEY" || label == "RSA PRIVATE KEY" {
        return Ok(PemKind::Rsa);
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|_| KeyError::NotPem)?;
    // The algorithm identifier sits near the start of SPKI / PKCS#8.
    let head = &der[..der.len().min(40)];
    if contains(head, OID_ED25519) {
        Ok(PemKind::Ed25519)
    } else if contains(head, OID_RSA) {
        Ok(PemKind::Rsa)
    } else if contains(&der, OID_P256) {
        Ok(PemKind::EcP256)
    } else if contains(&der, OID_P384) {
        Ok(PemKind::EcP384)
    } else {
        Err(KeyError::UnsupportedPem)
    }
}

/// A public key from a PEM file.
pub fn public_key_from_pem(pem: &[u8]) -> Result<VerifyKey, KeyError> {
    let kind = pem_kind(pem)?;
    let key = match kind {
        PemKind::Rsa => DecodingKey::from_rsa_pem(pem),
        PemKind::EcP256 | PemKind::EcP384 => DecodingKey::from_ec_pem(pem),
        PemKind::Ed25519 => DecodingKey::from_ed_pem(pem),
    }
    .map_err(|e| KeyError::Invalid(e.to_string()))?;
    let key = VerifyKey::new(None, key, kind.algs());
    if key.algs.is_empty() {
        return Err(KeyError::Refused(alg_names(kind.algs())));
    }
    Ok(key)
}

/// `RS256, RS384, ...`: algorithm names for messages.
fn alg_names(algs: AlgSet) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A signing key for `authgate token`, checked against the algorithm.
pub fn signing_key_from_pem(pem: &[u8], alg: Algorithm) -> Result<EncodingKey, KeyError> {
    let kind = pem_kind(pem)?;
    if !kind.algs().contains(alg) {
        return Err(KeyError::Invalid(format!(
            "a {kind:?} key cannot sign {alg:?}"
        )));
    }
    match kind {
        PemKind::Rsa => EncodingKey::from_rsa_pem(pem),
        PemKind::EcP256 | PemKind::EcP384 => EncodingKey::from_ec_pem(pem),
        PemKind::Ed25519 => EncodingKey::from_ed_pem(pem),
    }
    .map_err(|e| KeyError::Invalid(e.to_string()))
}

/// An HMAC secret as a key.
pub fn secret_key(secret: &[u8]) -> VerifyKey {
    VerifyKey::new(None, DecodingKey::from_secret(secret), AlgSet::HMAC)
}

/// The algorithms one JWK can serve: its type and curve, narrowed by its
/// `alg` when it names one.
fn jwk_algs(jwk: &Jwk) -> AlgSet {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgSet::RSA,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => AlgSet::ES256,
            EllipticCurve::P384 => AlgSet::ES384,
            _ => AlgSet::default(),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => AlgSet::ED,
            _ => AlgSet::default(),
        },
        AlgorithmParameters::OctetKey(_) => AlgSet::HMAC,
    };
    match jwk.common.key_algorithm {
        None => by_type,
        Some(ka) => match key_alg(ka) {
            Some(a) => by_type.intersect(AlgSet::of(a)),
            None => AlgSet::default(),
        },
    }
}

fn key_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    parse_alg(&ka.to_string())
}

/// Parses a JWKS document. Keys whose `use` is not `sig`, whose `key_ops`
/// lack `verify`, that serve no algorithm authgate knows, or that the
/// verifier refuses, are skipped; none left is an error.
pub fn keys_from_jwks(json: &[u8]) -> Result<KeySet, KeyError> {
    let set: JwkSet = serde_json::from_slice(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        if let Some(u) = &jwk.common.public_key_use {
            if *u != jsonwebtoken::jwk::PublicKeyUse::Signature {
                continue;
            }
        }
        // RFC 7517 §4.3: a key whose `key_ops` do not include "verify" was
        // not published for verifying signatures.
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.contains(&jsonwebtoken::jwk::KeyOperations::Verify) {
                continue;
            }
        }
        let algs = jwk_algs(jwk);
        if algs.is_empty() {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Jwks(e.to_string()))?;
        let key = VerifyKey::new(jwk.common.key_id.clone(), key, algs);
        // A key the verifier refused (an RSA modulus under 2048 bits)
        // serves nothing: skipped like a key of an unknown type.
        if !key.algs.is_empty() {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(KeyError::EmptyJwks);
    }
    Ok(KeySet { keys })
}

impl KeySet {
    /// Every algorithm some key here can serve.
    pub fn algs(&self) -> AlgSet {
        let mut s = AlgSet::default();
        for k in &self.keys {
            s.0 |= k.algs.0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alg_names_are_exact() {
        assert_eq!(parse_alg("RS256"), Some(Algorithm::RS256));
        assert_eq!(parse_alg("none"), None);
        assert_eq!(parse_alg("rs256"), None);
        assert_eq!(parse_alg("ES512"), None);
    }

    #[test]
    fn algset_families() {
        assert!(AlgSet::HMAC.contains(Algorithm::HS384));
        assert!(!AlgSet::HMAC.contains(Algorithm::RS256));
        assert!(AlgSet::RSA.contains(Algorithm::PS512));
        assert!(AlgSet::RSA.contains(Algorithm::RS256));
        assert!(!AlgSet::RSA.contains(Algorithm::ES256));
        assert_eq!(
            AlgSet::ES256.iter().collect::<Vec<_>>(),
            vec![Algorithm::ES256]
        );
        assert!(AlgSet::ED.contains(Algorithm::EdDSA));
    }

    /// Every kind of key authgate loads is parsed up front for each of its
    /// algorithms, and the ready verifier agrees with jsonwebtoken on good
    /// and tampered signatures.
    #[test]
    fn keys_are_ready_and_agree_with_jsonwebtoken() {
        let fx = |f: &str| {
            std::fs::read(format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap()
        };
        let cases: Vec<(VerifyKey, Algorithm, EncodingKey)> = vec![
            (
                public_key_from_pem(&fx("rsa_pub.pem")).unwrap(),
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&fx("rsa_priv.pem")).unwrap(),
            ),
            (
                public_key_from_pem(&fx("rsa_pub.pem")).unwrap(),
                Algorithm::PS512,
                EncodingKey::from_rsa_pem(&fx("rsa_priv.pem")).unwrap(),
            ),
            (
                public_key_from_pem(&fx("ec256_pub.pem")).unwrap(),
                Algorithm::ES256,
                EncodingKey::from_ec_pem(&fx("ec256_priv.pem")).unwrap(),
            ),
            (
                public_key_from_pem(&fx("ec384_pub.pem")).unwrap(),
                Algorithm::ES384,
                EncodingKey::from_ec_pem(&fx("ec384_priv.pem")).unwrap(),
            ),
            (
                public_key_from_pem(&fx("ed25519_pub.pem")).unwrap(),
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(&fx("ed25519_priv.pem")).unwrap(),
            ),
            (
                secret_key(b"0123456789abcdef0123456789abcdef"),
                Algorithm::HS384,
                EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            ),
            (
                keys_from_jwks(&fx("jwks_rs.json")).unwrap().keys[0].clone(),
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(&fx("rsa_priv.pem")).unwrap(),
            ),
        ];
        for (key, alg, signer) in cases {
            let v = key
                .verifier(alg)
                .unwrap_or_else(|| panic!("{alg:?}: no ready verifier"));
            let msg = b"header.payload";
            let good = jsonwebtoken::crypto::sign(msg, &signer, alg).unwrap();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&good)
                .unwrap();
            assert!(v.verify(msg, &raw), "{alg:?}: good signature refused");
            assert!(jsonwebtoken::crypto::verify(&good, msg, &key.key, alg).unwrap());
            let mut bad = raw.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(!v.verify(msg, &bad), "{alg:?}: tampered signature accepted");
            assert!(!v.verify(b"header.payloaD", &raw), "{alg:?}: other message");
        }
        // Keys are pinned to their family: no HMAC verifier for an RSA key.
        let rsa = public_key_from_pem(&fx("rsa_pub.pem")).unwrap();
        assert!(rsa.verifier(Algorithm::HS256).is_none());
        assert!(rsa.verifier(Algorithm::ES256).is_none());
    }

    /// A key the verifier refuses (RSA under 2048 bits) serves no
    /// algorithm: a PEM file is an error naming why, a JWKS skips it.
    #[test]
    fn refused_keys_serve_nothing() {
        let pem = std::fs::read(format!(
            "{}/tests/fixtures/rsa1024_pub.pem",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        match public_key_from_pem(&pem) {
            Err(e @ KeyError::Refused(_)) => {
                let m = e.to_string();
                assert!(m.contains("RS256") && m.contains("2048"), "{m}");
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(k) => panic!("a 1024-bit RSA key serves {:?}", k.algs),
        }
        // the same modulus as a JWK, beside good keys
        let json = |f: &str| -> serde_json::Value {
            let path = format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        };
        let small = json("jwks_rsa1024.json")["keys"][0].clone();
        let mut keys = json("jwks_rs.json")["keys"].as_array().unwrap().clone();
        keys.push(small.clone());
        let doc = serde_json::json!({ "keys": keys }).to_string();
        let set = keys_from_jwks(doc.as_bytes()).unwrap();
        assert!(set.keys.iter().all(|k| k.kid.as_deref() != Some("small")));
        assert_eq!(set.keys.len(), keys.len() - 1);
        let only = serde_json::json!({ "keys": [small] });
        assert!(matches!(
            keys_from_jwks(only.to_string().as_bytes()),
            Err(KeyError::EmptyJwks)
        ));
    }
}
