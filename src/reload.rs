//! Reload policy: what a re-read config file may change in a running
//! gateway. [`reload`] re-reads the file named on the command line,
//! compiles it, and swaps it into [`State`] whole, or refuses it and
//! changes nothing. `State` only holds what is swapped; the rules of what
//! may be swapped live here, in one place:
//!
//! - **Refused** ([`ReloadError::NeedsRestart`]): any change to `[store]`
//!   (kind, URLs, `on_error`, credentials, TLS roots); `[sessions]` added
//!   or removed; a change to `[sessions]` `key_prefix`, `cache_size` or
//!   `cache_ttl` (the session cache is sized and keyed at start-up).
//! - **Restart-only, kept with a warning** (the running value stays):
//!   `server.listen`, `server.admin_listen`, `server.threads`,
//!   `server.tls`, `server.http2`, `server.h2c`, `server.grace_period`,
//!   `server.request_header_timeout`,
//!   `server.max_header_bytes`, and `[token_cache]` (`size`, `max_ttl`:
//!   `State`'s cache keeps its start-up sizing; the new runtime carries the
//!   file's values, which nothing reads after start-up, so the warning
//!   compares against the last loaded file, not the running cache).
//!   The running `[server]` is kept whole except `trusted_proxies` and
//!   `direct_path`.
//! - **Applied**: `server.trusted_proxies`, `server.direct_path` (the
//!   operator's switch for the direct transport, meant for an incident:
//!   a restart must not be needed to turn it off), routes, upstreams (with fresh
//!   health and idle pools), issuers, `[admin]` token, `[assertion]`, and
//!   the other `[sessions]` keys.
//! - **Carried over**: the fetched key set of a `jwks_url` issuer with the
//!   same name and URL (with its refresh schedule when the timing is
//!   unchanged; with new timing it adopts the fetched keys), so a reload
//!   never leaves an issuer without keys while it refetches.
//! - **Cleared**: the verified-token cache (entries name issuers by index
//!   in the old runtime).

use crate::auth::jwks::KeySource;
use crate::state::State;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(crate::config::ConfigErrors),
    #[error("{0}: restart the gateway to apply it")]
    NeedsRestart(String),
    #[error("another reload is in progress")]
    Busy,
}

/// Re-reads the config file. A valid file is swapped in atomically
/// (requests in flight finish on the config they started with); an
/// invalid one changes nothing. Settings bound at start-up (listeners,
/// threads, TLS) keep their running values with a warning; a change to
/// the store or to whether sessions exist is refused (restart needed).
pub fn reload(state: &State) -> Result<String, ReloadError> {
    let Ok(_one_at_a_time) = state.reload_lock.lock() else {
        return Err(ReloadError::Busy);
    };
    let result = try_reload(state);
    let label = if result.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .config_reloads
        .with_label_values(&[label])
        .inc();
    match &result {
        Ok(summary) => tracing::info!(summary = summary.as_str(), "config reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the running config is kept")
        }
    }
    result
}

fn try_reload(state: &State) -> Result<String, ReloadError> {
    let mut new = crate::config::load(&state.config_path).map_err(ReloadError::Invalid)?;
    let old = state.runtime();
    if new.store != old.store {
        return Err(ReloadError::NeedsRestart("[store] changed".into()));
    }
    match (&new.sessions, &old.sessions) {
        (Some(a), Some(b))
            if a.key_prefix != b.key_prefix
                || a.cache_size != b.cache_size
                || a.cache_ttl != b.cache_ttl =>
        {
            return Err(ReloadError::NeedsRestart(
                "[sessions] key_prefix, cache_size or cache_ttl changed".into(),
            ));
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(ReloadError::NeedsRestart(
                "[sessions] added or removed".into(),
            ));
        }
        _ => {}
    }
    let s = &new.server;
    let o = &old.server;
    for (what, changed) in [
        ("server.listen", s.listen != o.listen),
        ("server.admin_listen", s.admin_listen != o.admin_listen),
        ("server.threads", s.threads != o.threads),
        ("server.tls", s.tls != o.tls),
        ("server.http2", s.http2 != o.http2),
        ("server.h2c", s.h2c != o.h2c),
        ("server.grace_period", s.grace_period != o.grace_period),
        (
            "server.request_header_timeout",
            s.head.timeout != o.head.timeout,
        ),
        (
            "server.max_header_bytes",
            s.head.max_bytes != o.head.max_bytes,
        ),
        ("token_cache", new.token_cache != old.token_cache),
    ] {
        if changed {
            tracing::warn!(
                setting = what,
                "this setting only changes on restart; the running value is kept"
            );
        }
    }
    // Keep what is bound at start-up; trusted_proxies and direct_path
    // apply now.
    let trusted = std::mem::take(&mut new.server.trusted_proxies);
    let direct_path = new.server.direct_path;
    new.server = old.server.clone();
    new.server.trusted_proxies = trusted;
    new.server.direct_path = direct_path;
    // Keep fetched key sets (and their schedules) for unchanged issuers.
    for issuer in &mut new.issuers {
        if let KeySource::Remote(r) = &issuer.keys {
            let same = old.issuers.iter().find_map(|o| match &o.keys {
                KeySource::Remote(or) if o.name == issuer.name && or.url == r.url => {
                    Some(or.clone())
                }
                _ => None,
            });
            match same {
                Some(existing) if existing.timing == r.timing => {
                    issuer.keys = KeySource::Remote(existing)
                }
                // New timing, same provider: keep serving the keys.
                Some(existing) => r.adopt_keys(&existing),
                None => {}
            }
        }
    }
    let summary = new.summary();
    state.swap(new);
    // Entries name issuers by index in the old runtime: start afresh.
    state.token_cache.clear();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::{reload, ReloadError};
    use crate::auth::jwks::KeySource;
    use crate::metrics::Metrics;
    use crate::state::State;
    use std::sync::Arc;

    const ROUTE: &str = "[upstreams.app]\naddrs = [\"127.0.0.1:9\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n";

    /// A state running `text`, from a config file of its own.
    fn running(name: &str, text: &str) -> (State, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "authgate-reload-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write config");
        let p = path.to_string_lossy().into_owned();
        let rt = crate::config::load(&p).expect("the starting config is valid");
        let state = State::new(rt, Metrics::new().expect("metrics"), p).expect("state");
        (state, path)
    }

    fn reloads(state: &State, label: &str) -> u64 {
        state
            .metrics
            .config_reloads
            .with_label_values(&[label])
            .get()
    }

    #[test]
    fn a_valid_file_is_swapped_in_and_restart_only_settings_are_kept() {
        let (state, path) = running(
            "swap",
            &format!("[server]\nlisten = \"127.0.0.1:18080\"\n{ROUTE}"),
        );
        let before = state.runtime();
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:18081\"\ntrusted_proxies = [\"10.0.0.0/8\"]\ndirect_path = false\n\
                 [token_cache]\nsize = 0\n{ROUTE}\n[[routes]]\npath = \"/b\"\nupstream = \"app\"\nauth = \"none\"\n"
            ),
        )
        .expect("rewrite config");
        let summary = reload(&state).expect("reloaded");
        let now = state.runtime();
        assert!(summary.contains("2 routes"), "{summary}");
        assert_eq!(now.routes.len(), 2, "the new routes apply");
        assert_ne!(now.generation, before.generation);
        assert_eq!(
            now.server.listen, "127.0.0.1:18080",
            "listen is restart-only"
        );
        assert_eq!(now.server.trusted_proxies.len(), 1, "trusted_proxies apply");
        assert!(before.server.direct_path);
        assert!(!now.server.direct_path, "direct_path applies");
        // The verified-token cache was sized at start-up and stays so
        // (`size = 0` would have turned it off).
        assert!(state.token_cache.enabled(), "[token_cache] is restart-only");
        assert_eq!(reloads(&state, "ok"), 1);
    }

    #[test]
    fn an_invalid_file_or_a_store_change_changes_nothing() {
        let (state, path) = running("refuse", ROUTE);
        let generation = state.runtime().generation;
        std::fs::write(&path, format!("{ROUTE}bogus = 1\n")).expect("rewrite");
        match reload(&state) {
            Err(ReloadError::Invalid(e)) => {
                assert!(
                    e.to_string().contains("unknown key `routes.0.bogus`"),
                    "{e}"
                )
            }
            other => panic!(
                "expected Invalid, got {:?}",
                other.map_err(|e| e.to_string())
            ),
        }
        std::fs::write(&path, format!("[store]\non_error = \"allow\"\n{ROUTE}")).expect("rewrite");
        let e = reload(&state).expect_err("store change refused");
        assert_eq!(
            e.to_string(),
            "[store] changed: restart the gateway to apply it"
        );
        assert_eq!(
            state.runtime().generation,
            generation,
            "still the first config"
        );
        assert_eq!(reloads(&state, "error"), 2);
        assert_eq!(reloads(&state, "ok"), 0);
    }

    #[test]
    fn fetched_key_sets_carry_over_for_the_same_issuer_and_url() {
        let issuer = |url: &str| {
            format!("[issuers.r]\nissuer = \"i\"\nalgorithms = [\"RS256\"]\njwks_url = \"{url}\"\n{ROUTE}")
        };
        let (state, path) = running("jwks", &issuer("https://idp.example/jwks"));
        let remote = |state: &State| match &state.runtime().issuers[0].keys {
            KeySource::Remote(r) => r.clone(),
            KeySource::Static(_) => panic!("jwks_url issuer has remote keys"),
        };
        let first = remote(&state);
        reload(&state).expect("same file reloads");
        assert!(
            Arc::ptr_eq(&first, &remote(&state)),
            "same issuer and URL: kept"
        );
        std::fs::write(&path, issuer("https://other.example/jwks")).expect("rewrite");
        reload(&state).expect("new url reloads");
        assert!(
            !Arc::ptr_eq(&first, &remote(&state)),
            "a new URL starts afresh"
        );
    }
}
