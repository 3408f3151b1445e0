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
