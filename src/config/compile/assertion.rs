//! Compiles `[assertion]`: the gateway's signing key(s) for the
//! `X-Auth-Assertion` JWT it hands backends, and the JWKS it publishes.
//! Its own file because it is the one section that loads private keys for
//! the gateway itself (not for an issuer).

use super::{duration, resolve};
use crate::assertion::{AssertionSettings, SigningKey};
use crate::config::file::FileConfig;
use crate::config::Issues;
use jsonwebtoken::Algorithm;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn build_assertion(
    cfg: &FileConfig,
    base: &Path,
    issues: &mut Issues,
) -> Option<Arc<AssertionSettings>> {
    let a = cfg.assertion.as_ref()?;
    let before = issues.0.len();
    let algorithm = match a.algorithm.as_deref() {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some(other) => {
            issues.at(
                "assertion.algorithm",
                format!("unsupported algorithm `{other}` (expected \"ES256\" or \"EdDSA\")"),
            );
            Algorithm::ES256
        }
        None => {
            issues.at("assertion", "missing `algorithm` (\"ES256\" or \"EdDSA\")");
            Algorithm::ES256
        }
    };
    let load = |issues: &mut Issues, path: &str, file: &str| -> Option<SigningKey> {
        match std::fs::read(resolve(base, file)) {
            Ok(pem) => match SigningKey::from_pem(&pem, algorithm) {
                Ok(k) => Some(k),
                Err(e) => {
                    issues.at(path, format!("`{file}`: {e}"));
                    None
                }
            },
            Err(e) => {
                issues.at(path, format!("cannot read `{file}`: {e}"));
                None
            }
        }
    };
    let current = match &a.key_file {
        Some(f) => load(issues, "assertion.key_file", f),
        None => {
            issues.at(
                "assertion",
                "missing `key_file` (the gateway's private key, PEM)",
            );
            None
        }
    };
    let previous: Vec<SigningKey> = a
        .previous_key_files
        .iter()
        .enumerate()
        .filter_map(|(i, f)| load(issues, &format!("assertion.previous_key_files.{i}"), f))
        .collect();
    let issuer = a.issuer.clone().unwrap_or_default();
    if issuer.is_empty() {
        issues.at("assertion", "missing `issuer` (the assertion's iss)");
    }
    let audience = a.audience.clone().unwrap_or_default();
    if audience.is_empty() {
        issues.at("assertion", "missing `audience` (the assertion's aud)");
    }
    let ttl = match a.ttl.as_deref().map(duration) {
        None => Duration::from_secs(60),
        Some(Ok(d)) if d >= Duration::from_secs(1) => d,
        Some(Ok(_)) => {
            issues.at("assertion.ttl", "ttl must be at least 1s");
            Duration::from_secs(60)
        }
        Some(Err(e)) => {
            issues.at("assertion.ttl", e);
            Duration::from_secs(60)
        }
    };
    let jwks_path = a
        .jwks_path
        .clone()
        .unwrap_or_else(|| "/.well-known/authgate/jwks.json".into());
    if !jwks_path.starts_with('/') {
        issues.at("assertion.jwks_path", "paths start with `/`");
    }
    let current = current?;
    if issues.0.len() > before {
        return None;
    }
    let jwks = AssertionSettings::render_jwks(&current, &previous);
    Some(Arc::new(AssertionSettings {
        algorithm,
        current,
        previous,
        issuer,
        audience,
        ttl_secs: ttl.as_secs() as i64,
        jwks_path,
        jwks,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use jsonwebtoken::Algorithm;

    const ES: &str = "[assertion]\nalgorithm = \"ES256\"\nkey_file = \"ec256_priv.pem\"\nissuer = \"gw\"\naudience = \"backends\"\n";

    #[test]
    fn defaults_are_applied() {
        let rt = accepted(&format!("{ES}{MINIMAL}"));
        let a = rt.assertion.as_ref().expect("assertion compiled");
        assert_eq!(a.algorithm, Algorithm::ES256);
        assert_eq!(a.issuer, "gw");
        assert_eq!(a.audience, "backends");
        assert_eq!(a.ttl_secs, 60);
        assert_eq!(a.jwks_path, "/.well-known/authgate/jwks.json");
        assert!(a.previous.is_empty());
        assert!(a.jwks.contains("\"keys\""), "{}", a.jwks);
        assert_eq!(
            rt.kept_claims,
            ["iss"],
            "original_iss needs the token's iss"
        );
    }

    #[test]
    fn bad_algorithm_and_missing_keys_are_refused() {
        let e = refused(&format!(
            "[assertion]\nalgorithm = \"RS256\"\nkey_file = \"rsa_priv.pem\"\n{MINIMAL}"
        ));
        has_line(
            &e,
            "g.toml:2:13: unsupported algorithm `RS256` (expected \"ES256\" or \"EdDSA\")",
        );
        has(&e, "missing `issuer` (the assertion's iss)");
        has(&e, "missing `audience` (the assertion's aud)");
        let e = refused(&format!("[assertion]\nissuer = \"gw\"\n{MINIMAL}"));
        has(&e, "missing `algorithm` (\"ES256\" or \"EdDSA\")");
        has(&e, "missing `key_file` (the gateway's private key, PEM)");
    }

    #[test]
    fn key_ttl_and_path_are_checked() {
        let e = refused(&format!("{}{MINIMAL}", ES.replace("ES256", "EdDSA")));
        has(&e, "g.toml:3:12: `ec256_priv.pem`: ");
        let e = refused(&format!(
            "{ES}ttl = \"500ms\"\njwks_path = \"jwks\"\n{MINIMAL}"
        ));
        has_line(&e, "g.toml:6:7: ttl must be at least 1s");
        has_line(&e, "g.toml:7:13: paths start with `/`");
    }

    #[test]
    fn routes_asserting_need_the_section_and_an_identity() {
        let e = refused(&format!("{MINIMAL}assertion = true\n"));
        has(
            &e,
            "assertion = true needs an [assertion] section (the gateway's signing key)",
        );
        has(&e, "an auth = \"none\" route has no identity to assert");
    }
}
