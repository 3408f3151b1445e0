//! Compiles `[store]`: where shared state lives (memory, Redis, Redis
//! Cluster or Sentinel), what a store failure means, and the Redis
//! credentials and TLS roots. Its own file because the kinds and their
//! keys cross-check one another (a key given for the wrong kind is refused).

use super::{resolve, secret};
use crate::config::file::FileConfig;
use crate::config::Issues;
use crate::runtime::{OnError, StoreKind, StoreSettings};
use std::path::Path;

pub(super) fn build_store(cfg: &FileConfig, base: &Path, issues: &mut Issues) -> StoreSettings {
    let mut out = StoreSettings {
        kind: StoreKind::Memory,
        on_error: OnError::Deny,
        access: Default::default(),
    };
    let Some(store) = &cfg.store else { return out };
    match store.on_error.as_deref() {
        None | Some("deny") => {}
        Some("allow") => out.on_error = OnError::Allow,
        Some(other) => issues.at(
            "store.on_error",
            format!("unknown on_error `{other}` (expected \"deny\" or \"allow\")"),
        ),
    }
    match store.kind.as_deref().unwrap_or("memory") {
        "memory" => {}
        "redis" => match &store.url {
            Some(url) => match redis::Client::open(url.as_str()) {
                Ok(_) => out.kind = StoreKind::Redis { url: url.clone() },
                Err(e) => issues.at("store.url", format!("invalid Redis URL: {e}")),
            },
            None => issues.at("store", "store.kind = \"redis\" needs `url` (e.g. \"redis://127.0.0.1:6379/0\")"),
        },
        "redis_cluster" => match &store.urls {
            Some(urls) if !urls.is_empty() => {
                let mut ok = true;
                for (i, u) in urls.iter().enumerate() {
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        issues.at(format!("store.urls.{i}"), format!("invalid Redis URL: {e}"));
                        ok = false;
                    }
                }
                if ok {
                    out.kind = StoreKind::Cluster { urls: urls.clone() };
                }
            }
            _ => issues.at("store", "kind = \"redis_cluster\" needs `urls` (seed nodes, e.g. [\"redis://10.0.0.1:7000\"])"),
        },
        "redis_sentinel" => match (&store.sentinels, &store.master) {
            (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() => {
                let mut ok = true;
                for (i, u) in s.iter().enumerate() {
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        issues.at(format!("store.sentinels.{i}"), format!("invalid sentinel URL: {e}"));
                        ok = false;
                    }
                }
                if ok {
                    out.kind = StoreKind::Sentinel {
                        sentinels: s.clone(),
                        master: m.clone(),
                    };
                }
            }
            _ => issues.at("store", "kind = \"redis_sentinel\" needs `sentinels` (e.g. [\"redis://10.0.0.1:26379\"]) and `master` (the monitored master's name)"),
        },
        other => issues.at(
            "store.kind",
            format!("unknown store kind `{other}` (expected \"memory\", \"redis\", \"redis_cluster\" or \"redis_sentinel\")"),
        ),
    }
    let kind = store.kind.as_deref().unwrap_or("memory");
    for (key, given, for_kind) in [
        ("urls", store.urls.is_some(), "redis_cluster"),
        ("sentinels", store.sentinels.is_some(), "redis_sentinel"),
        ("master", store.master.is_some(), "redis_sentinel"),
    ] {
        if given && kind != for_kind {
            issues.at(
                format!("store.{key}"),
                format!("`{key}` belongs to kind = \"{for_kind}\""),
            );
        }
    }
    if store.url.is_some() && kind != "redis" {
        issues.at(
            "store.url",
            "`url` belongs to kind = \"redis\" (use `urls` for a cluster, `sentinels` + `master` for Sentinel)",
        );
    }
    let urls: Vec<&String> = store
        .url
        .iter()
        .chain(store.urls.iter().flatten())
        .chain(store.sentinels.iter().flatten())
        .collect();
    if let Some(f) = &store.ca_file {
        if !urls.iter().any(|u| crate::store::redis::is_tls(u)) {
            issues.at(
                "store.ca_file",
                "ca_file verifies rediss:// servers, and no URL here is rediss://",
            );
        }
        match std::fs::read(resolve(base, f)) {
            Ok(pem) => {
                let certs = rustls_pemfile::certs(&mut pem.as_slice())
                    .filter(|c| c.is_ok())
                    .count();
                if certs == 0 {
                    issues.at("store.ca_file", format!("`{f}` holds no PEM certificate"));
                } else {
                    out.access.ca_pem = Some(pem);
                }
            }
            Err(e) => issues.at("store.ca_file", format!("`{f}`: cannot read: {e}")),
        }
    }
    if store.password_env.is_some() || store.password_file.is_some() {
        if kind == "memory" {
            issues.at(
                "store",
                "password_env / password_file belong to a Redis store kind",
            );
        }
        if let Some(p) = secret(
            store.password_env.as_deref(),
            store.password_file.as_deref(),
            base,
            "store.password",
            issues,
        ) {
            match String::from_utf8(p) {
                Ok(p) => out.access.password = Some(p),
                Err(_) => issues.at("store.password", "the Redis password is not UTF-8"),
            }
        }
        out.access.username = store.username.clone().filter(|u| !u.is_empty());
    } else if store.username.is_some() {
        issues.at(
            "store.username",
            "username needs password_env or password_file (or put user:password@ in the URL)",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use crate::runtime::{OnError, StoreKind};

    #[test]
    fn memory_and_deny_by_default() {
        let s = accepted(MINIMAL).store;
        assert_eq!(s.kind, StoreKind::Memory);
        assert_eq!(s.on_error, OnError::Deny);
        assert_eq!(s.access, Default::default());
        let s = accepted(&format!("[store]\non_error = \"allow\"\n{MINIMAL}")).store;
        assert_eq!(s.kind, StoreKind::Memory);
        assert_eq!(s.on_error, OnError::Allow);
    }

    #[test]
    fn redis_kinds_take_their_keys() {
        let s = accepted(&format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n{MINIMAL}"
        ))
        .store;
        assert_eq!(
            s.kind,
            StoreKind::Redis {
                url: "redis://127.0.0.1:6379/0".into()
            }
        );
        let s = accepted(&format!(
            "[store]\nkind = \"redis_sentinel\"\nsentinels = [\"redis://10.0.0.1:26379\"]\nmaster = \"m\"\n{MINIMAL}"
        ))
        .store;
        assert_eq!(
            s.kind,
            StoreKind::Sentinel {
                sentinels: vec!["redis://10.0.0.1:26379".into()],
                master: "m".into()
            }
        );
    }

    #[test]
    fn wrong_or_missing_keys_are_refused() {
        let e = refused(&format!("[store]\nkind = \"redis\"\n{MINIMAL}"));
        has(&e, "store.kind = \"redis\" needs `url`");
        let e = refused(&format!("[store]\nkind = \"etcd\"\n{MINIMAL}"));
        has_line(&e, "g.toml:2:8: unknown store kind `etcd` (expected \"memory\", \"redis\", \"redis_cluster\" or \"redis_sentinel\")");
        let e = refused(&format!("[store]\non_error = \"retry\"\n{MINIMAL}"));
        has_line(
            &e,
            "g.toml:2:12: unknown on_error `retry` (expected \"deny\" or \"allow\")",
        );
        let e = refused(&format!(
            "[store]\nkind = \"redis_cluster\"\nurls = [\"redis://a:1\"]\nurl = \"redis://a:1\"\n{MINIMAL}"
        ));
        has(&e, "g.toml:4:7: `url` belongs to kind = \"redis\"");
        let e = refused(&format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://a:1\"\nusername = \"u\"\n{MINIMAL}"
        ));
        has(
            &e,
            "g.toml:4:12: username needs password_env or password_file",
        );
    }

    #[test]
    fn password_takes_one_form_only() {
        let e = refused(&format!(
            "[store]\nkind = \"redis\"\nurl = \"redis://a:1\"\npassword_env = \"AUTHGATE_TEST_UNUSED\"\npassword_file = \"hs_secret.txt\"\n{MINIMAL}"
        ));
        has(&e, "give either the `_env` or the `_file` form, not both");
        let e = refused(&format!(
            "[store]\npassword_file = \"hs_secret.txt\"\n{MINIMAL}"
        ));
        has(
            &e,
            "password_env / password_file belong to a Redis store kind",
        );
    }
}
