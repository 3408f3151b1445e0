//! TLS at both ends, with a CA and certificates generated at test time by the
//! `openssl` CLI: `[server] tls` terminates HTTPS on the proxy listener (curl trusting
//! the CA gets 200, the backend sees `X-Forwarded-Proto: https`); an upstream served
//! over TLS (python3 `ssl`) with `tls = true`, `sni`, `ca_file` works, and a wrong CA
//! or a wrong name is 502 `upstream_error`; `authgate check` reports missing or
//! garbage cert/key/CA files and `ca_file` without `tls = true` as FILE:LINE:COL.

mod common;

use common::ops::*;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn tls_config(cert: &Path, key: &Path) -> String {
    GatewayConfig::base().tls_files(cert, key).toml()
}

fn port_of(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

#[test]
fn https_listener_serves_clients_that_trust_the_ca() {
    let pki = Pki::new("front");
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    let (gw, up) = Gateway::with_upstream(&tls_config(&cert, &key), &[HS_ENV]);
    let port = port_of(&gw.proxy_addr).to_string();
    let ca = pki.ca.to_str().unwrap().to_string();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let tok = hs_token(&hs_claims("alice", json!({})));
    let auth = format!("Authorization: Bearer {tok}");

    let r = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-H",
        &auth,
        "-H",
        "X-Forwarded-Proto: http",
        &format!("https://localhost:{port}/api/hello"),
    ]);
    assert_eq!((r.code, r.status), (0, 200), "{r:?}");
    let echo: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echo["path"], json!("/api/hello"));
    let got = up.last();
    assert_eq!(got.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(got.header("x-auth-subject").as_deref(), Some("alice"));

    // the IP SAN too
    let r = curl(&[
        "--cacert",
        &ca,
        "-H",
        &auth,
        &format!("https://127.0.0.1:{port}/api/ip"),
    ]);
    assert_eq!((r.code, r.status), (0, 200), "{r:?}");

    // denials are served over TLS too
    let r = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        &format!("https://localhost:{port}/api/x"),
    ]);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"error": "unauthorized", "reason": "missing_credentials"})
    );

    // a client that does not trust the CA refuses the certificate
    let r = curl(&[
        "--resolve",
        &resolve,
        &format!("https://localhost:{port}/api/x"),
    ]);
    assert_eq!(r.code, 60, "certificate should not verify: {r:?}");
    let other = Pki::new("other");
    let r = curl(&[
        "--cacert",
        other.ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://localhost:{port}/api/x"),
    ]);
    assert_eq!(r.code, 60, "wrong CA: {r:?}");

    // plain HTTP on the TLS port is never proxied
    let hits = up.hits();
    let plain = try_request(
        &gw.proxy_addr,
        "GET",
        "/api/plain",
        &[("Authorization", &format!("Bearer {tok}"))],
        b"",
    );
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP answered 200: {plain:?}"
    );
    assert_eq!(up.hits(), hits);
}

/// `[upstreams.NAME]` with TLS to `addr` plus a JWT route `/NAME/` to it.
fn tls_upstream(name: &str, addr: &str, extra: &str) -> String {
    format!(
        r#"
[upstreams.{name}]
addrs = ["{addr}"]
tls = true
{extra}

[[routes]]
name = "{name}"
path_prefix = "/{name}/"
upstream = "{name}"
auth = "jwt"
"#
    )
}

/// A TLS echo backend with a `localhost` certificate from `pki`.
fn backend(pki: &Pki) -> TlsEchoServer {
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost", "IP:127.0.0.1"]);
    TlsEchoServer::start(&cert, &key)
}

#[test]
fn tls_upstream_verified_with_ca_file_and_sni_works() {
    let pki = Pki::new("back");
    let backend = backend(&pki);
    let ca = pki.ca.display().to_string();
    let base = GatewayConfig::base();
    let text = format!(
        "{base}{}{}",
        tls_upstream(
            "secure",
            &backend.addr,
            &format!("sni = \"localhost\"\nca_file = \"{ca}\"")
        ),
        // the IP SAN, with the default SNI (the host part of the address)
        tls_upstream("byip", &backend.addr, &format!("ca_file = \"{ca}\"")),
    );
    let (gw, _up) = Gateway::with_upstream(&text, &[HS_ENV]);
    let tok = hs_token(&hs_claims("alice", json!({"roles": ["ops"]})));

    let r = gw.get_bearer("/secure/data?x=1", &tok);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.logs());
    let echo = r.json();
    assert_eq!(echo["tls_upstream"], json!(true), "{echo}");
    assert_eq!(echo["path"], json!("/secure/data?x=1"));
    assert_eq!(echo["headers"]["x-auth-subject"], json!("alice"), "{echo}");
    assert_eq!(echo["headers"]["x-auth-roles"], json!("ops"), "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-proto"],
        json!("http"),
        "{echo}"
    );
    for _ in 0..3 {
        assert_eq!(gw.get_bearer("/secure/again", &tok).status, 200);
    }
    let r = gw.get_bearer("/byip/x", &tok);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn tls_upstream_with_a_wrong_ca_or_name_is_502() {
    let pki = Pki::new("back");
    let backend = backend(&pki);
    let wrong = Pki::new("wrong");
    let base = GatewayConfig::base();
    let text = format!(
        "{base}{}{}{}",
        tls_upstream(
            "wrongca",
            &backend.addr,
            &format!("sni = \"localhost\"\nca_file = \"{}\"", wrong.ca.display())
        ),
        tls_upstream(
            "wrongname",
            &backend.addr,
            &format!(
                "sni = \"other.example\"\nca_file = \"{}\"",
                pki.ca.display()
            )
        ),
        // no ca_file: the system roots, which don't know the test CA
        tls_upstream("systemroots", &backend.addr, "sni = \"localhost\""),
    );
    let (gw, _up) = Gateway::with_upstream(&text, &[HS_ENV]);
    let tok = hs_token(&hs_claims("alice", json!({})));
    for round in 0..2 {
        for route in ["wrongca", "wrongname", "systemroots"] {
            let r = gw.get_bearer(&format!("/{route}/x"), &tok);
            assert_eq!(r.status, 502, "{route} (round {round}): {}", r.text());
            assert_error(&r, 502, "bad_gateway", "upstream_error");
        }
    }
    let count = |text: &str, route: &str| {
        metric(
            text,
            "authgate_requests_total",
            &[("route", route), ("reason", "upstream_error")],
        )
    };
    let routes = ["wrongca", "wrongname", "systemroots"];
    let text = gw.metrics_when(|t| routes.iter().all(|r| count(t, r) == Some(2.0)));
    for route in routes {
        assert_eq!(count(&text, route), Some(2.0), "{route}: {text}");
    }
}

#[test]
fn a_pooled_connection_is_not_reused_for_an_upstream_with_another_ca() {
    // Two upstreams at the same address and SNI; only `secure` trusts the backend's
    // CA. A connection verified for `secure` must not carry `wrongca`'s requests.
    let pki = Pki::new("back");
    let backend = backend(&pki);
    let wrong = Pki::new("wrong");
    let base = GatewayConfig::base();
    let text = format!(
        "{base}{}{}",
        tls_upstream(
            "secure",
            &backend.addr,
            &format!("sni = \"localhost\"\nca_file = \"{}\"", pki.ca.display())
        ),
        tls_upstream(
            "wrongca",
            &backend.addr,
            &format!("sni = \"localhost\"\nca_file = \"{}\"", wrong.ca.display())
        ),
    );
    let (gw, _up) = Gateway::with_upstream(&text, &[HS_ENV]);
    let tok = hs_token(&hs_claims("alice", json!({})));
    assert_eq!(gw.get_bearer("/secure/x", &tok).status, 200);
    let r = gw.get_bearer("/wrongca/x", &tok);
    assert_eq!(
        r.status,
        502,
        "wrongca's request went over the connection verified for `secure`: {}",
        r.text()
    );
}

#[test]
fn a_reload_that_changes_ca_file_applies_to_the_next_request() {
    let pki = Pki::new("back");
    let backend = backend(&pki);
    let wrong = Pki::new("wrong");
    let base = GatewayConfig::base();
    let tmpl = format!(
        "{base}\n[admin]\ntoken_env = \"AUTHGATE_ADMIN_TOKEN\"\n{}",
        tls_upstream(
            "secure",
            &backend.addr,
            "sni = \"localhost\"\nca_file = \"{ca}\""
        ),
    );
    let (gw, up) = Gateway::with_upstream(
        &tmpl.replace("{ca}", pki.ca.to_str().unwrap()),
        &[HS_ENV, ADMIN_ENV],
    );
    let tok = hs_token(&hs_claims("alice", json!({})));
    assert_eq!(gw.get_bearer("/secure/x", &tok).status, 200);
    // the operator stops trusting the backend's CA
    gw.write_config(
        &tmpl
            .replace("{ca}", wrong.ca.to_str().unwrap())
            .replace("{upstream}", &up.addr),
    );
    let r = gw.reload();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.get_bearer("/secure/y", &tok);
    assert_eq!(
        r.status,
        502,
        "after the reload the backend is no longer trusted, but a pooled connection served: {}",
        r.text()
    );
}

/// `check --config gateway.toml` in `dir`: (exit code, stderr).
fn check(dir: &Path, text: &str) -> (i32, String) {
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    let o = run_cli(&["check", "--config", "gateway.toml"], &[HS_ENV], dir);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_error_at(stderr: &str, line: usize, needle: &str) {
    let ok = stderr.lines().any(|l| {
        let Some(rest) = l.strip_prefix("gateway.toml:") else {
            return false;
        };
        let mut p = rest.splitn(3, ':');
        let l_ok = p.next().and_then(|x| x.parse::<usize>().ok()) == Some(line);
        let c_ok = p
            .next()
            .and_then(|x| x.parse::<usize>().ok())
            .is_some_and(|c| c >= 1);
        l_ok && c_ok && p.next().is_some_and(|m| m.contains(needle))
    });
    assert!(
        ok,
        "expected `gateway.toml:{line}:COL: ...{needle}...`, stderr:\n{stderr}"
    );
}

#[test]
fn check_rejects_unusable_tls_files() {
    let pki = Pki::new("check");
    let (cert, key) = pki.server_cert("localhost", &["DNS:localhost"]);
    let dir = temp_dir("tls-check");
    std::fs::write(dir.join("garbage.pem"), "this is not PEM\n").unwrap();
    std::fs::write(
        dir.join("bad-der.pem"),
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::copy(&cert, dir.join("cert.pem")).unwrap();
    std::fs::copy(&key, dir.join("key.pem")).unwrap();
    std::fs::copy(&pki.ca, dir.join("ca.pem")).unwrap();
    let cfg = |cert: &str, key: &str| {
        let base = render(
            &GatewayConfig::base().toml(),
            "127.0.0.1:18080",
            "127.0.0.1:19090",
        )
        .replace("{upstream}", "127.0.0.1:3000");
        base.replace(
            "threads = 1",
            &format!("threads = 1\ntls = {{ cert_file = \"{cert}\", key_file = \"{key}\" }}"),
        )
    };

    // the good pair (relative paths resolve against the config's directory)
    let (code, stderr) = check(&dir, &cfg("cert.pem", "key.pem"));
    assert_eq!(code, 0, "{stderr}");

    for (cert, key, needle) in [
        ("missing.pem", "key.pem", "missing.pem"),
        ("garbage.pem", "key.pem", "garbage.pem"),
        ("bad-der.pem", "key.pem", "bad-der.pem"),
        ("key.pem", "key.pem", "key.pem"),
        ("cert.pem", "missing-key.pem", "missing-key.pem"),
        ("cert.pem", "garbage.pem", "garbage.pem"),
        ("cert.pem", "cert.pem", "cert.pem"),
    ] {
        let text = cfg(cert, key);
        let (code, stderr) = check(&dir, &text);
        assert_eq!(code, 2, "cert {cert}, key {key}: {stderr}");
        assert_error_at(&stderr, line_of(&text, "cert_file"), needle);
    }
    // both wrong: both reported
    let text = cfg("missing.pem", "garbage.pem");
    let (code, stderr) = check(&dir, &text);
    assert_eq!(code, 2);
    assert_error_at(&stderr, line_of(&text, "cert_file"), "missing.pem");
    assert_error_at(&stderr, line_of(&text, "cert_file"), "garbage.pem");

    // upstream ca_file: without tls = true, missing, garbage
    let base = render(
        &GatewayConfig::base().toml(),
        "127.0.0.1:18080",
        "127.0.0.1:19090",
    )
    .replace("{upstream}", "127.0.0.1:3000");
    for (extra, needle) in [
        ("ca_file = \"ca.pem\"", "tls"),
        ("tls = true\nca_file = \"missing-ca.pem\"", "missing-ca.pem"),
        ("tls = true\nca_file = \"garbage.pem\"", "garbage.pem"),
    ] {
        let text = base.replace(
            "addrs = [\"127.0.0.1:3000\"]",
            &format!("addrs = [\"127.0.0.1:3000\"]\n{extra}"),
        );
        let (code, stderr) = check(&dir, &text);
        assert_eq!(code, 2, "{extra}: {stderr}");
        assert_error_at(&stderr, line_of(&text, "ca_file"), needle);
    }
    let text = base.replace(
        "addrs = [\"127.0.0.1:3000\"]",
        "addrs = [\"127.0.0.1:3000\"]\ntls = true\nsni = \"localhost\"\nca_file = \"ca.pem\"",
    );
    let (code, stderr) = check(&dir, &text);
    assert_eq!(code, 0, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_a_key_that_does_not_match_the_certificate() {
    let pki = Pki::new("mismatch");
    let (cert, _key) = pki.server_cert("localhost", &["DNS:localhost"]);
    let (_cert2, key2) = pki.server_cert("localhost", &["DNS:localhost"]);
    let dir = temp_dir("tls-mismatch");
    let text = render(
        &tls_config(&cert, &key2),
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
    )
    .replace("{upstream}", &dead_addr());
    std::fs::write(dir.join("gateway.toml"), &text).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--config", "gateway.toml"])
        .env(HS_ENV.0, HS_ENV.1)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = poll_until(std::time::Duration::from_secs(10), || {
        child.try_wait().unwrap()
    });
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = exited.unwrap_or_else(|| {
        panic!(
            "serve kept running with a key that does not match the certificate (check said: {:?})",
            String::from_utf8_lossy(
                &run_cli(&["check", "--config", "gateway.toml"], &[HS_ENV], &dir).stdout
            )
        )
    });
    assert!(!status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
