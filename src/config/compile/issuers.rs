//! Compiles `[issuers.*]`: each JWT issuer's pinned algorithms, its one key
//! source (JWKS URL or file, PEM public key, or shared secret), audiences,
//! leeway and the optional signing key for `authgate token`. Its own file
//! because the key source and the algorithms are checked against each other.

use super::{duration, resolve, secret};
use crate::auth::jwks::{JwksTiming, KeySource, RemoteKeys};
use crate::auth::keys::{self, parse_alg, AlgSet, KeySet};
use crate::config::file::IssuerFile;
use crate::config::Issues;
use crate::runtime::Issuer;
use jsonwebtoken::EncodingKey;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn build_issuer(
    name: &str,
    i: &IssuerFile,
    base: &Path,
    issues: &mut Issues,
) -> Option<Issuer> {
    let at = |k: &str| format!("issuers.{name}.{k}");
    let before = issues.0.len();
    let issuer = match &i.issuer {
        Some(s) if !s.is_empty() => s.clone(),
        _ => {
            issues.at(
                format!("issuers.{name}"),
                "missing `issuer` (the value tokens' `iss` must equal)",
            );
            String::new()
        }
    };
    let mut algs = AlgSet::default();
    let mut algorithms = Vec::new();
    if i.algorithms.is_empty() {
        issues.at(
            format!("issuers.{name}"),
            "missing `algorithms` (pin the algorithms this issuer signs with, e.g. [\"RS256\"])",
        );
    }
    for (n, a) in i.algorithms.iter().enumerate() {
        match parse_alg(a) {
            Some(alg) => {
                algs.insert(alg);
                algorithms.push(alg);
            }
            None => issues.at(
                format!("issuers.{name}.algorithms.{n}"),
                format!("unsupported algorithm `{a}` (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"),
            ),
        }
    }
    let sources = [
        i.jwks_url.is_some(),
        i.jwks_file.is_some(),
        i.public_key_file.is_some(),
        i.secret_env.is_some(),
        i.secret_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if sources != 1 {
        issues.at(
            format!("issuers.{name}"),
            "exactly one key source is needed: jwks_url, jwks_file, public_key_file, secret_env or secret_file",
        );
    }
    let mut keys = KeySet::default();
    let mut secret_bytes = None;
    let mut key_path = String::new();
    let mut remote = None;
    if let Some(url) = &i.jwks_url {
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://"))
            || reqwest::Url::parse(url).is_err()
        {
            issues.at(at("jwks_url"), format!("`{url}` is not an http(s) URL"));
        }
        let mut dur = |k: &str, v: &Option<String>, d: u64| match v.as_deref().map(duration) {
            None => Duration::from_secs(d),
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                issues.at(at(k), e);
                Duration::from_secs(d)
            }
        };
        let timing = JwksTiming {
            min_refresh: dur("jwks_min_refresh", &i.jwks_min_refresh, 30)
                .max(Duration::from_secs(1)),
            max_refresh: dur("jwks_max_refresh", &i.jwks_max_refresh, 600),
            cooldown: dur("jwks_cooldown", &i.jwks_cooldown, 10),
        };
        if timing.max_refresh < timing.min_refresh {
            issues.at(
                at("jwks_max_refresh"),
                "jwks_max_refresh is shorter than jwks_min_refresh",
            );
        }
        remote = Some(Arc::new(RemoteKeys::new(name, url, timing)));
    } else if let Some(f) = &i.jwks_file {
        key_path = at("jwks_file");
        match std::fs::read(resolve(base, f)) {
            Ok(bytes) => match keys::keys_from_jwks(&bytes) {
                Ok(k) => keys = k,
                Err(e) => issues.at(at("jwks_file"), format!("`{f}`: {e}")),
            },
            Err(e) => issues.at(at("jwks_file"), format!("cannot read `{f}`: {e}")),
        }
    } else if let Some(f) = &i.public_key_file {
        key_path = at("public_key_file");
        match std::fs::read(resolve(base, f)) {
            Ok(bytes) => match keys::public_key_from_pem(&bytes) {
                Ok(k) => keys.keys.push(k),
                Err(e) => issues.at(at("public_key_file"), format!("`{f}`: {e}")),
            },
            Err(e) => issues.at(at("public_key_file"), format!("cannot read `{f}`: {e}")),
        }
    } else if i.secret_env.is_some() || i.secret_file.is_some() {
        key_path = if i.secret_env.is_some() {
            at("secret_env")
        } else {
            at("secret_file")
        };
        if let Some(s) = secret(
            i.secret_env.as_deref(),
            i.secret_file.as_deref(),
            base,
            &at("secret"),
            issues,
        ) {
            keys.keys.push(keys::secret_key(&s));
            secret_bytes = Some(s);
        }
    }
    if !keys.keys.is_empty() {
        let servable = keys.algs();
        for alg in algs.iter() {
            if !servable.contains(alg) {
                issues.at(
                    key_path.clone(),
                    format!("algorithm {alg:?} cannot be served by this key source (its keys serve {:?})", servable.iter().collect::<Vec<_>>()),
                );
            }
        }
    }
    let leeway = match i.leeway.as_deref().map(duration) {
        None => 60,
        Some(Ok(d)) => d.as_secs() as i64,
        Some(Err(e)) => {
            issues.at(at("leeway"), e);
            0
        }
    };
    if let Some(a) = &i.audiences {
        if a.is_empty() {
            issues.at(
                at("audiences"),
                "an empty list would accept no token; omit `audiences` to skip the aud check",
            );
        }
    }
    let first = algorithms.first().copied();
    let signing_key = match (&i.private_key_file, &secret_bytes, first) {
        (Some(f), _, Some(alg)) => match std::fs::read(resolve(base, f)) {
            Ok(pem) => match keys::signing_key_from_pem(&pem, alg) {
                Ok(k) => Some(k),
                Err(e) => {
                    issues.at(at("private_key_file"), format!("`{f}`: {e}"));
                    None
                }
            },
            Err(e) => {
                issues.at(at("private_key_file"), format!("cannot read `{f}`: {e}"));
                None
            }
        },
        (None, Some(s), Some(_)) => Some(EncodingKey::from_secret(s)),
        _ => None,
    };
    let signing_kid = {
        let kids: Vec<&String> = keys.keys.iter().filter_map(|k| k.kid.as_ref()).collect();
        if kids.len() == 1 {
            Some(kids[0].clone())
        } else {
            None
        }
    };
    if issues.0.len() > before {
        return None;
    }
    let keys = match remote {
        Some(r) => KeySource::Remote(r),
        None => KeySource::Static(Arc::new(keys)),
    };
    Some(Issuer {
        name: Arc::from(name),
        issuer,
        audiences: i.audiences.clone().unwrap_or_default(),
        algs,
        algorithms,
        keys,
        leeway,
        signing_key,
        signing_kid,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use crate::auth::jwks::KeySource;
    use jsonwebtoken::Algorithm;
    use std::time::Duration;

    const HS: &str = "[issuers.a]\nissuer = \"https://idp.example\"\nalgorithms = [\"HS256\"]\nsecret_file = \"hs_secret.txt\"\n";

    #[test]
    fn defaults_are_applied() {
        let rt = accepted(&format!("{HS}{MINIMAL}"));
        let i = rt.issuer("a").expect("issuer a");
        assert_eq!(i.issuer, "https://idp.example");
        assert!(i.audiences.is_empty(), "no aud check unless configured");
        assert_eq!(i.algorithms, [Algorithm::HS256]);
        assert_eq!(i.leeway, 60);
        assert!(i.signing_key.is_some(), "a shared secret signs too");
        assert!(i.signing_kid.is_none());
        match &i.keys {
            KeySource::Static(k) => assert_eq!(k.keys.len(), 1),
            KeySource::Remote(_) => panic!("a secret_file issuer has static keys"),
        }
    }

    #[test]
    fn bad_algorithm_is_refused_at_its_index() {
        let e = refused(&format!(
            "{}{MINIMAL}",
            HS.replace("[\"HS256\"]", "[\"HS256\", \"XS1\"]")
        ));
        has_line(&e, "g.toml:3:24: unsupported algorithm `XS1` (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)");
    }

    #[test]
    fn algorithms_must_fit_the_key_source() {
        let e = refused(&format!("{}{MINIMAL}", HS.replace("HS256", "RS256")));
        has(
            &e,
            "g.toml:4:15: algorithm RS256 cannot be served by this key source",
        );
        accepted(&format!(
            "[issuers.ec]\nissuer = \"i\"\nalgorithms = [\"ES256\"]\npublic_key_file = \"ec256_pub.pem\"\n{MINIMAL}"
        ));
    }

    #[test]
    fn exactly_one_key_source_and_the_required_keys() {
        let e = refused(&format!("[issuers.a]\nleeway = \"5s\"\n{MINIMAL}"));
        has(&e, "missing `issuer` (the value tokens' `iss` must equal)");
        has(
            &e,
            "missing `algorithms` (pin the algorithms this issuer signs with",
        );
        has(&e, "exactly one key source is needed: jwks_url, jwks_file, public_key_file, secret_env or secret_file");
        let e = refused(&format!(
            "{HS}public_key_file = \"ec256_pub.pem\"\n{MINIMAL}"
        ));
        has(&e, "exactly one key source is needed");
        let e = refused(&format!("{HS}audiences = []\n{MINIMAL}"));
        has_line(&e, "g.toml:5:13: an empty list would accept no token; omit `audiences` to skip the aud check");
    }

    #[test]
    fn jwks_url_is_checked_and_its_timing_applied() {
        let remote = "[issuers.r]\nissuer = \"i\"\nalgorithms = [\"RS256\"]\n";
        let rt = accepted(&format!(
            "{remote}jwks_url = \"https://idp.example/jwks\"\n{MINIMAL}"
        ));
        match &rt.issuer("r").expect("issuer r").keys {
            KeySource::Remote(k) => {
                assert_eq!(k.url, "https://idp.example/jwks");
                assert_eq!(k.timing.min_refresh, Duration::from_secs(30));
                assert_eq!(k.timing.max_refresh, Duration::from_secs(600));
                assert_eq!(k.timing.cooldown, Duration::from_secs(10));
            }
            KeySource::Static(_) => panic!("a jwks_url issuer has remote keys"),
        }
        let e = refused(&format!("{remote}jwks_url = \"ftp://idp/jwks\"\n{MINIMAL}"));
        has_line(&e, "g.toml:4:12: `ftp://idp/jwks` is not an http(s) URL");
        let e = refused(&format!(
            "{remote}jwks_url = \"https://idp/jwks\"\njwks_min_refresh = \"10m\"\njwks_max_refresh = \"1m\"\n{MINIMAL}"
        ));
        has_line(
            &e,
            "g.toml:6:20: jwks_max_refresh is shorter than jwks_min_refresh",
        );
    }
}
