//! Compiles `[upstreams.*]`: each pool's addresses (resolved here, never on
//! the request path), TLS and trust anchors, timeouts and passive-health
//! settings. Its own file because upstreams are compiled one by one and
//! referred to by name from routes.

use super::{duration, read_certs, resolve};
use crate::config::file::UpstreamFile;
use crate::config::Issues;
use crate::upstream::{Protocol, Upstream, MAX_UPSTREAM_ADDRS};
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
    let protocol = match u.protocol.as_deref() {
        None => Protocol::Http1,
        Some(p) => match Protocol::parse(p) {
            Some(Protocol::H2) if !u.tls => {
                issues.at(
                    at("protocol"),
                    "protocol = \"h2\" needs tls = true (plaintext HTTP/2 is \"h2c\")",
                );
                ok = false;
                Protocol::H2
            }
            Some(Protocol::H2c) if u.tls => {
                issues.at(
                    at("protocol"),
                    "protocol = \"h2c\" is plaintext HTTP/2: with tls = true use \"h2\"",
                );
                ok = false;
                Protocol::H2c
            }
            Some(p) => p,
            None => {
                issues.at(
                    at("protocol"),
                    format!("unknown protocol `{p}` (expected \"http1\", \"h2\" or \"h2c\")"),
                );
                ok = false;
                Protocol::Http1
            }
        },
    };
    let sni = u.sni.clone().unwrap_or_else(|| {
        u.addrs
            .first()
            .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
            .unwrap_or_default()
    });
    ok.then(|| {
        let mut up = Upstream::new(name.to_string(), addrs);
        up.tls = u.tls;
        up.protocol = protocol;
        up.sni = sni;
        up.ca = ca;
        up.connect_timeout = connect_timeout;
        up.read_timeout = read_timeout;
        up.max_fails = max_fails;
        up.fail_timeout = fail_timeout;
        up
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use std::time::Duration;

    /// [`MINIMAL`] with upstream `app` given `extra` keys.
    fn with_upstream(extra: &str) -> String {
        MINIMAL.replacen(
            "addrs = [\"127.0.0.1:9\"]\n",
            &format!("addrs = [\"127.0.0.1:9\"]\n{extra}"),
            1,
        )
    }

    #[test]
    fn defaults_are_applied() {
        let rt = accepted(MINIMAL);
        let u = &rt.upstreams[0];
        assert_eq!(u.name, "app");
        assert_eq!(u.addrs, ["127.0.0.1:9".parse().unwrap()]);
        assert!(!u.tls);
        assert!(u.ca.is_none());
        assert_eq!(u.sni, "127.0.0.1");
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert_eq!(u.read_timeout, Duration::from_secs(60));
        assert_eq!(u.max_fails, 1);
        assert_eq!(u.fail_timeout, Duration::from_secs(10));
        assert!(
            u.health().all(|(_, up)| up),
            "every address starts in rotation"
        );
    }

    #[test]
    fn values_are_applied() {
        let rt = accepted(&with_upstream(
            "connect_timeout = \"1s\"\nread_timeout = \"5s\"\nmax_fails = 3\nfail_timeout = \"30s\"\nsni = \"app.internal\"\n",
        ));
        let u = &rt.upstreams[0];
        assert_eq!(u.connect_timeout, Duration::from_secs(1));
        assert_eq!(u.read_timeout, Duration::from_secs(5));
        assert_eq!(u.max_fails, 3);
        assert_eq!(u.fail_timeout, Duration::from_secs(30));
        assert_eq!(u.sni, "app.internal");
    }

    #[test]
    fn an_upstream_needs_an_address() {
        let e = refused(&MINIMAL.replace("addrs = [\"127.0.0.1:9\"]", "addrs = []"));
        has_line(&e, "g.toml:3:9: an upstream needs at least one address");
        let e = refused(&MINIMAL.replace("127.0.0.1:9", "no-port"));
        has(
            &e,
            "g.toml:3:10: `no-port` is not a host:port that resolves: ",
        );
    }

    #[test]
    fn at_most_64_addresses() {
        let addrs: Vec<String> = (1..=65).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let e = refused(&MINIMAL.replace("\"127.0.0.1:9\"", &addrs.join(", ")));
        has(
            &e,
            "an upstream may have at most 64 addresses (these resolve to 65)",
        );
    }

    #[test]
    fn health_settings_are_checked() {
        let e = refused(&with_upstream("max_fails = 0\n"));
        has_line(&e, "g.toml:4:13: max_fails must be 1 to 1000 (got 0)");
        let e = refused(&with_upstream("fail_timeout = \"0s\"\n"));
        has_line(&e, "g.toml:4:16: fail_timeout must be more than 0s");
        let e = refused(&with_upstream("ca_file = \"rsa_pub.pem\"\n"));
        has(&e, "g.toml:4:11: ca_file needs tls = true");
    }
}
