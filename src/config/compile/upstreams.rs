//! Compiles `[upstreams.*]`: each pool's addresses (resolved here, never on
//! the request path), TLS and trust anchors, timeouts and passive-health
//! settings. Its own file because upstreams are compiled one by one and
//! referred to by name from routes.

use super::{duration, read_certs, resolve};
use crate::config::file::UpstreamFile;
use crate::config::Issues;
use crate::runtime::{Upstream, MAX_UPSTREAM_ADDRS};
use pingora::utils::tls::WrappedX509;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn build_upstream(
    name: &str,
    u: &UpstreamFile,
    base: &Path,
    issues: &mut Issues,
) -> Option<Upstream> {
    let at = |k: &str| format!("upstreams.{name}.{k}");
    let mut addrs = Vec::new();
    let mut ok = true;
    if u.addrs.is_empty() {
        issues.at(at("addrs"), "an upstream needs at least one address");
        ok = false;
    }
    for (i, a) in u.addrs.iter().enumerate() {
        match a.to_socket_addrs() {
            Ok(list) => {
                let before = addrs.len();
                addrs.extend(list);
                if addrs.len() == before {
                    issues.at(
                        format!("upstreams.{name}.addrs.{i}"),
                        format!("`{a}` resolves to no address"),
                    );
                    ok = false;
                }
            }
            Err(e) => {
                issues.at(
                    format!("upstreams.{name}.addrs.{i}"),
                    format!("`{a}` is not a host:port that resolves: {e}"),
                );
                ok = false;
            }
        }
    }
    let ca = match &u.ca_file {
        None => None,
        Some(f) => match read_certs(&resolve(base, f)) {
            Ok(certs) if !certs.is_empty() => {
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|der| WrappedX509::new(der, pingora::utils::tls::parse_x509))
                    .collect();
                Some(Arc::from(wrapped))
            }
            Ok(_) => {
                issues.at(at("ca_file"), format!("`{f}` holds no PEM certificate"));
                ok = false;
                None
            }
            Err(e) => {
                issues.at(at("ca_file"), format!("`{f}`: {e}"));
                ok = false;
                None
            }
        },
    };
    if u.ca_file.is_some() && !u.tls {
        issues.at(at("ca_file"), "ca_file needs tls = true");
        ok = false;
    }
    let mut timeout = |k: &str, v: &Option<String>, d: u64| match v.as_deref().map(duration) {
        None => Duration::from_secs(d),
        Some(Ok(x)) => x,
        Some(Err(e)) => {
            issues.at(at(k), e);
            ok = false;
            Duration::ZERO
        }
    };
    let connect_timeout = timeout("connect_timeout", &u.connect_timeout, 2);
    let read_timeout = timeout("read_timeout", &u.read_timeout, 60);
    let fail_timeout = timeout("fail_timeout", &u.fail_timeout, 10);
    if u.fail_timeout.is_some() && fail_timeout.is_zero() && ok {
        issues.at(at("fail_timeout"), "fail_timeout must be more than 0s");
        ok = false;
    }
    let max_fails = match u.max_fails {
        None => 1,
        Some(n) if (1..=1000).contains(&n) => n as u32,
        Some(n) => {
            issues.at(
                at("max_fails"),
                format!("max_fails must be 1 to 1000 (got {n})"),
            );
            ok = false;
            1
        }
    };
    if addrs.len() > MAX_UPSTREAM_ADDRS {
        issues.at(
            at("addrs"),
            format!(
                "an upstream may have at most {MAX_UPSTREAM_ADDRS} addresses (these resolve to {})",
                addrs.len()
            ),
        );
        ok = false;
    }
    let sni = u.sni.clone().unwrap_or_else(|| {
        u.addrs
            .first()
            .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
            .unwrap_or_default()
    });
    ok.then(|| {
        Upstream::new(
            name.to_string(),
            addrs,
            u.tls,
            sni,
            ca,
            connect_timeout,
            read_timeout,
            max_fails,
            fail_timeout,
        )
    })
}
