//! Compiles `[server]`: listeners, threads, trusted proxies, the grace
//! period, request-head limits and TLS termination (process settings bound
//! at start-up; see `reload.rs` for which of them a reload keeps). Its own
//! file because TLS is proved here (the certificate/key pair must build a
//! rustls config) before a listener thread could fail on it.

use super::{duration, read_certs, resolve};
use crate::config::file::FileConfig;
use crate::config::Issues;
use crate::runtime::{HeadLimits, ServerSettings};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn build_server(
    cfg: &FileConfig,
    base: &Path,
    issues: &mut Issues,
) -> Option<ServerSettings> {
    let s = &cfg.server;
    let listen = s.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".into());
    let admin_listen = s
        .admin_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let mut ok = true;
    if listen.parse::<SocketAddr>().is_err() {
        issues.at(
            "server.listen",
            format!("`{listen}` is not an address like \"127.0.0.1:8080\""),
        );
        ok = false;
    }
    if admin_listen.parse::<SocketAddr>().is_err() {
        issues.at(
            "server.admin_listen",
            format!("`{admin_listen}` is not an address like \"127.0.0.1:9090\""),
        );
        ok = false;
    }
    let tls = match &s.tls {
        None => None,
        Some(t) => {
            let cert = resolve(base, &t.cert_file);
            let key = resolve(base, &t.key_file);
            match read_certs(&cert) {
                Ok(c) if c.is_empty() => {
                    issues.at(
                        "server.tls.cert_file",
                        format!("`{}` holds no PEM certificate", t.cert_file),
                    );
                    ok = false;
                }
                Ok(_) => {}
                Err(e) => {
                    issues.at("server.tls.cert_file", format!("`{}`: {e}", t.cert_file));
                    ok = false;
                }
            }
            match std::fs::File::open(&key)
                .map(std::io::BufReader::new)
                .map(|mut r| rustls_pemfile::private_key(&mut r))
            {
                Ok(Ok(Some(k))) => {
                    // The listener would fail to start (in a thread that
                    // cannot stop the process): prove the pair works here.
                    if let Ok(chain) = read_certs(&cert) {
                        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
                            chain.into_iter().map(Into::into).collect();
                        let built = rustls::ServerConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .map_err(|e| e.to_string())
                        .and_then(|b| {
                            b.with_no_client_auth()
                                .with_single_cert(chain, k)
                                .map_err(|e| e.to_string())
                        });
                        if let Err(e) = built {
                            issues.at(
                                "server.tls.key_file",
                                format!(
                                    "`{}` does not fit the certificate in `{}`: {e}",
                                    t.key_file, t.cert_file
                                ),
                            );
                            ok = false;
                        }
                    }
                }
                Ok(_) => {
                    issues.at(
                        "server.tls.key_file",
                        format!("`{}` holds no PEM private key", t.key_file),
                    );
                    ok = false;
                }
                Err(e) => {
                    issues.at(
                        "server.tls.key_file",
                        format!("cannot read `{}`: {e}", t.key_file),
                    );
                    ok = false;
                }
            }
            Some((
                cert.to_string_lossy().into_owned(),
                key.to_string_lossy().into_owned(),
            ))
        }
    };
    let threads = s.threads.unwrap_or(2);
    if threads == 0 || threads > 1024 {
        issues.at("server.threads", "threads must be between 1 and 1024");
        ok = false;
    }
    let mut trusted = Vec::new();
    for (i, t) in s.trusted_proxies.iter().enumerate() {
        let parsed = t
            .parse::<IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => trusted.push(n),
            Err(_) => {
                issues.at(
                    format!("server.trusted_proxies.{i}"),
                    format!("`{t}` is not an IP or CIDR"),
                );
                ok = false;
            }
        }
    }
    let grace_period = match s.grace_period.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            issues.at("server.grace_period", e);
            ok = false;
            Duration::ZERO
        }
    };
    let head_timeout = match s.request_header_timeout.as_deref().map(duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) if d >= Duration::from_millis(100) && d <= Duration::from_secs(600) => d,
        Some(Ok(_)) => {
            issues.at(
                "server.request_header_timeout",
                "request_header_timeout must be between 100ms and 10m",
            );
            ok = false;
            Duration::ZERO
        }
        Some(Err(e)) => {
            issues.at("server.request_header_timeout", e);
            ok = false;
            Duration::ZERO
        }
    };
    let max_header_bytes = s.max_header_bytes.unwrap_or(64 * 1024);
    if !(1024..=1024 * 1024).contains(&max_header_bytes) {
        issues.at(
            "server.max_header_bytes",
            "max_header_bytes must be between 1024 and 1048576",
        );
        ok = false;
    }
    ok.then_some(ServerSettings {
        listen,
        admin_listen,
        threads,
        trusted_proxies: trusted,
        grace_period,
        head: HeadLimits {
            timeout: head_timeout,
            max_bytes: max_header_bytes,
        },
        tls,
        direct_path: s.direct_path.unwrap_or(true),
        http2: s.http2.unwrap_or(true),
        h2c: s.h2c.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, has, has_line, refused, MINIMAL};
    use std::time::Duration;

    #[test]
    fn defaults_when_server_is_absent() {
        let s = accepted(MINIMAL).server;
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!(s.admin_listen, "127.0.0.1:9090");
        assert_eq!(s.threads, 2);
        assert!(s.trusted_proxies.is_empty());
        assert_eq!(s.grace_period, Duration::from_secs(10));
        assert_eq!(s.head.timeout, Duration::from_secs(10));
        assert_eq!(s.head.max_bytes, 64 * 1024);
        assert!(s.tls.is_none());
        assert!(s.direct_path);
    }

    #[test]
    fn values_are_applied() {
        let s = accepted(&format!(
            r#"[server]
listen = "0.0.0.0:8443"
threads = 8
trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]
grace_period = "3s"
request_header_timeout = "100ms"
max_header_bytes = 1024
direct_path = false
{MINIMAL}"#
        ))
        .server;
        assert_eq!(s.listen, "0.0.0.0:8443");
        assert_eq!(s.threads, 8);
        let nets: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32"]);
        assert_eq!(s.grace_period, Duration::from_secs(3));
        assert_eq!(s.head.timeout, Duration::from_millis(100));
        assert_eq!(s.head.max_bytes, 1024);
        assert!(!s.direct_path);
    }

    #[test]
    fn bad_values_are_refused_at_their_keys() {
        let e = refused(&format!(
            r#"[server]
listen = "localhost"
threads = 0
trusted_proxies = ["10.0.0.0/8", "proxy"]
request_header_timeout = "50ms"
max_header_bytes = 1023
{MINIMAL}"#
        ));
        has_line(
            &e,
            r#"g.toml:2:10: `localhost` is not an address like "127.0.0.1:8080""#,
        );
        has_line(&e, "g.toml:3:11: threads must be between 1 and 1024");
        has_line(&e, "g.toml:4:34: `proxy` is not an IP or CIDR");
        has_line(
            &e,
            "g.toml:5:26: request_header_timeout must be between 100ms and 10m",
        );
        has_line(
            &e,
            "g.toml:6:20: max_header_bytes must be between 1024 and 1048576",
        );
    }

    #[test]
    fn tls_files_are_read_at_compile_time() {
        let e = refused(&format!(
            "[server.tls]\ncert_file = \"no-such-cert.pem\"\nkey_file = \"no-such-key.pem\"\n{MINIMAL}"
        ));
        has(&e, "g.toml:2:13: `no-such-cert.pem`: cannot read: ");
        has(&e, "g.toml:3:12: cannot read `no-such-key.pem`: ");
        // a file with no certificate in it
        let e = refused(&format!(
            "[server.tls]\ncert_file = \"hs_secret.txt\"\nkey_file = \"ec256_priv.pem\"\n{MINIMAL}"
        ));
        has_line(&e, "g.toml:2:13: `hs_secret.txt` holds no PEM certificate");
    }
}
