//! Config compilation: the one conversion from the file schema
//! ([`FileConfig`]) to the snapshot the proxy runs on ([`Runtime`]). Every
//! default and every check lives here, and nowhere else, so `check`, start-up
//! and reload all refuse the same files with the same messages. It lives
//! under `config/` because it is the second half of loading a file; the
//! snapshot types in `runtime.rs` know nothing of the file schema (the
//! dependency runs one way: `config::compile` imports `runtime`).
//!
//! This file holds the entry point ([`build`]), the `[admin]` token and
//! `[token_cache]` (a few lines each), and the helpers every section uses
//! (secrets, paths, durations, certificates); each other section compiles
//! in its own file.

mod assertion;
mod issuers;
mod routes;
mod server;
mod sessions;
mod store;
mod upstreams;

use crate::config::file::FileConfig;
use crate::config::Issues;
use crate::router::Router;
use crate::runtime::{Runtime, TokenCacheSettings};
use http::HeaderName;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use assertion::build_assertion;
use issuers::build_issuer;
use routes::{build_route, Built};
use server::build_server;
use sessions::build_sessions;
use store::build_store;
use upstreams::build_upstream;

static GENERATION: AtomicU64 = AtomicU64::new(1);

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Why a PEM certificate file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid X.509 certificate")]
    Invalid,
}

/// The DER certificates of a PEM file, each checked to parse as X.509 (so
/// nothing downstream can trip over a malformed one).
pub fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut out = Vec::new();
    for c in rustls_pemfile::certs(&mut r) {
        let der = c?.to_vec();
        if x509_parser::parse_x509_certificate(&der).is_err() {
            return Err(CertError::Invalid);
        }
        out.push(der);
    }
    Ok(out)
}

/// Reads a secret from a file: one trailing newline is dropped.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut v = std::fs::read(path)?;
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    Ok(v)
}

/// The longest duration any key accepts. Longer values are configuration
/// mistakes, and past about 292 billion years one no longer fits a monotonic
/// clock (`Instant + d` would panic on a request path): refusing them at
/// `check` keeps every timer computation in range.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses a humantime duration of at most [`MAX_DURATION`].
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("invalid duration `{s}` ({e}); use forms like \"30s\", \"15m\", \"24h\"")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{s}` is longer than 10 years, the longest accepted"
        ));
    }
    Ok(d)
}

fn secret(
    env: Option<&str>,
    file: Option<&str>,
    base: &Path,
    path: &str,
    issues: &mut Issues,
) -> Option<Vec<u8>> {
    match (env, file) {
        (Some(_), Some(_)) => {
            issues.at(path, "give either the `_env` or the `_file` form, not both");
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(v.into_bytes()),
            Ok(_) => {
                issues.at(
                    format!("{path}_env"),
                    format!("environment variable `{var}` is empty"),
                );
                None
            }
            Err(_) => {
                issues.at(
                    format!("{path}_env"),
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        },
        (None, Some(f)) => match read_secret_file(&resolve(base, f)) {
            Ok(v) if !v.is_empty() => Some(v),
            Ok(_) => {
                issues.at(
                    format!("{path}_file"),
                    format!("secret file `{f}` is empty"),
                );
                None
            }
            Err(e) => {
                issues.at(
                    format!("{path}_file"),
                    format!("cannot read secret file `{f}`: {e}"),
                );
                None
            }
        },
        (None, None) => None,
    }
}

/// Compiles a parsed file; every problem goes to `issues` (all are
/// collected) and the result is `None` if there was any.
pub fn build(cfg: FileConfig, base: &Path, issues: &mut Issues) -> Option<Runtime> {
    let before = issues.0.len();
    let server = build_server(&cfg, base, issues);

    let admin_token = cfg.admin.as_ref().and_then(|a| {
        secret(
            a.token_env.as_deref(),
            a.token_file.as_deref(),
            base,
            "admin.token",
            issues,
        )
    });

    let store = build_store(&cfg, base, issues);
    let assertion = build_assertion(&cfg, base, issues);
    let token_cache = {
        let tc = cfg.token_cache.as_ref();
        let max_ttl = match tc.and_then(|t| t.max_ttl.as_deref()).map(duration) {
            None => Duration::from_secs(300),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                issues.at("token_cache.max_ttl", e);
                Duration::ZERO
            }
        };
        TokenCacheSettings {
            size: tc.and_then(|t| t.size).unwrap_or(100_000),
            max_ttl,
        }
    };
    let sessions = build_sessions(&cfg, base, &store, issues);

    let mut upstream_names = Vec::new();
    let mut upstreams = Vec::new();
    for (name, u) in &cfg.upstreams {
        if let Some(up) = build_upstream(name, u, base, issues) {
            upstream_names.push(name.clone());
            upstreams.push(up);
        }
    }

    let mut issuer_names = Vec::new();
    let mut issuers = Vec::new();
    for (name, i) in &cfg.issuers {
        if let Some(iss) = build_issuer(name, i, base, issues) {
            issuer_names.push(name.clone());
            issuers.push(iss);
        }
    }

    let mut routes = Vec::new();
    let mut matchers = Vec::new();
    let mut mapped_headers: Vec<HeaderName> = Vec::new();
    if cfg.routes.is_empty() {
        issues.at("", "no [[routes]] defined: every request would be 404");
    }
    let mut names = std::collections::HashSet::new();
    for (idx, r) in cfg.routes.iter().enumerate() {
        if let Some(n) = &r.name {
            if !names.insert(n.as_str()) {
                issues.at(
                    format!("routes.{idx}.name"),
                    format!("duplicate route name `{n}` (names label metrics and logs)"),
                );
            }
        }
        let at = |k: &str| format!("routes.{idx}.{k}");
        let built = Built {
            cfg: &cfg,
            upstream_names: &upstream_names,
            issuer_names: &issuer_names,
            issuers: &issuers,
            have_sessions: sessions.is_some(),
        };
        if let Some((route, m)) = build_route(idx, r, &built, issues) {
            for (h, _) in &route.headers {
                if !mapped_headers.contains(h) {
                    mapped_headers.push(h.clone());
                }
            }
            routes.push(route);
            matchers.push(m);
        } else if r.upstream.is_none() {
            issues.at(at("upstream"), "missing `upstream`");
        }
    }

    if issues.0.len() > before {
        return None;
    }
    let mut kept_claims: Vec<String> = Vec::new();
    let mapped = routes
        .iter()
        .flat_map(|r| r.headers.iter().map(|(_, c)| c.as_str()));
    let firsts = mapped.clone().filter_map(|c| c.split('.').next());
    let iss = assertion.as_ref().map(|_| "iss");
    for c in mapped.chain(firsts).chain(iss) {
        if !kept_claims.iter().any(|k| k == c) {
            kept_claims.push(c.to_string());
        }
    }
    Some(Runtime {
        server: server?,
        admin_token,
        store,
        sessions,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
        assertion,
        token_cache,
        router: Router::new(matchers),
        routes,
        h2_upstreams: upstreams
            .iter()
            .any(|u| u.protocol != crate::upstream::Protocol::Http1),
        upstreams,
        issuers,
        mapped_headers,
        kept_claims,
    })
}

/// Helpers the section tests share: they compile TOML text through
/// [`crate::config::load_str`], so a refusal is checked as an operator sees
/// it (`FILE:LINE:COL: message`).
#[cfg(test)]
mod tests {
    use super::{duration, read_secret_file, resolve, MAX_DURATION};
    use crate::config::load_str;
    use crate::runtime::Runtime;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// The smallest valid file: one upstream and an `auth = "none"` route.
    pub(super) const MINIMAL: &str = r#"
[upstreams.app]
addrs = ["127.0.0.1:9"]

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#;

    /// The committed test keys; relative paths in test configs resolve here.
    pub(super) fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    /// `text` compiled, or the `check` output that refused it.
    pub(super) fn compile(text: &str) -> Result<Runtime, String> {
        load_str("g.toml", text, &fixtures()).map_err(|e| e.to_string())
    }

    /// `text` compiled; panics with the errors if it was refused.
    pub(super) fn accepted(text: &str) -> Runtime {
        match compile(text) {
            Ok(rt) => rt,
            Err(e) => panic!("refused:\n{e}\n--- config:\n{text}"),
        }
    }

    /// The errors `text` was refused with; panics if it was accepted.
    pub(super) fn refused(text: &str) -> String {
        match compile(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    /// Asserts that one error line of `errors` is exactly `line`.
    pub(super) fn has_line(errors: &str, line: &str) {
        assert!(
            errors.lines().any(|l| l == line),
            "expected the line\n  {line}\nin\n{errors}"
        );
    }

    /// Asserts that some error line of `errors` contains `part`.
    pub(super) fn has(errors: &str, part: &str) {
        assert!(
            errors.lines().any(|l| l.contains(part)),
            "expected an error containing\n  {part}\nin\n{errors}"
        );
    }

    /// A file under the temp dir with `contents`, unique to this process.
    pub(super) fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("authgate-compile-{}-{name}", std::process::id()));
        std::fs::write(&p, contents).expect("write temp file");
        p
    }

    #[test]
    fn minimal_file_compiles_with_token_cache_defaults() {
        let rt = accepted(MINIMAL);
        assert_eq!(rt.token_cache.size, 100_000);
        assert_eq!(rt.token_cache.max_ttl, Duration::from_secs(300));
        assert!(rt.admin_token.is_none());
        assert!(rt.sessions.is_none());
        assert!(rt.assertion.is_none());
        assert_eq!(rt.routes.len(), 1);
        assert_eq!(rt.upstreams.len(), 1);
        assert!(rt.kept_claims.is_empty());
    }

    #[test]
    fn token_cache_values_are_applied_and_checked() {
        let rt = accepted(&format!(
            "[token_cache]\nsize = 0\nmax_ttl = \"30s\"\n{MINIMAL}"
        ));
        assert_eq!(rt.token_cache.size, 0);
        assert_eq!(rt.token_cache.max_ttl, Duration::from_secs(30));
        let e = refused(&format!("[token_cache]\nmax_ttl = \"soon\"\n{MINIMAL}"));
        has(&e, "g.toml:2:11: invalid duration `soon`");
    }

    #[test]
    fn each_build_gets_a_new_generation() {
        let a = accepted(MINIMAL).generation;
        let b = accepted(MINIMAL).generation;
        assert_ne!(a, b);
    }

    #[test]
    fn durations_are_capped_at_ten_years() {
        assert_eq!(duration(" 15m "), Ok(Duration::from_secs(900)));
        assert_eq!(duration("3650d"), Ok(MAX_DURATION));
        assert_eq!(
            duration("3651d"),
            Err("duration `3651d` is longer than 10 years, the longest accepted".into())
        );
        let e = duration("ten").expect_err("not a duration");
        assert!(e.starts_with("invalid duration `ten` ("), "{e}");
        // and through a key: the message is positioned at its value
        let e = refused(&format!("[server]\ngrace_period = \"20y\"\n{MINIMAL}"));
        has_line(
            &e,
            "g.toml:2:16: duration `20y` is longer than 10 years, the longest accepted",
        );
    }

    #[test]
    fn admin_token_takes_one_form_only() {
        let e = refused(&format!(
            "[admin]\ntoken_env = \"AUTHGATE_TEST_UNUSED\"\ntoken_file = \"hs_secret.txt\"\n{MINIMAL}"
        ));
        has(&e, "give either the `_env` or the `_file` form, not both");
        let e = refused(&format!(
            "[admin]\ntoken_env = \"AUTHGATE_TEST_SURELY_UNSET_3f1c\"\n{MINIMAL}"
        ));
        has_line(
            &e,
            "g.toml:2:13: environment variable `AUTHGATE_TEST_SURELY_UNSET_3f1c` is not set",
        );
        let rt = accepted(&format!(
            "[admin]\ntoken_file = \"hs_secret.txt\"\n{MINIMAL}"
        ));
        assert_eq!(
            rt.admin_token.as_deref(),
            Some(&b"file-secret-for-hs-tests-0123456789abcdef"[..]),
            "one trailing newline is dropped"
        );
    }

    #[test]
    fn no_routes_is_refused() {
        let e = refused("[upstreams.app]\naddrs = [\"127.0.0.1:9\"]\n");
        has(&e, "no [[routes]] defined: every request would be 404");
    }

    #[test]
    fn secret_files_lose_one_line_end_and_paths_resolve_against_base() {
        let p = temp_file("secret-crlf", b"s3cret\r\n\n");
        assert_eq!(read_secret_file(&p).expect("read"), b"s3cret\r\n");
        let p = temp_file("secret-crlf1", b"s3cret\r\n");
        assert_eq!(read_secret_file(&p).expect("read"), b"s3cret");
        assert_eq!(
            resolve(Path::new("/etc/ag"), "k.pem"),
            Path::new("/etc/ag/k.pem")
        );
        assert_eq!(resolve(Path::new("/etc/ag"), "/k.pem"), Path::new("/k.pem"));
    }
}
