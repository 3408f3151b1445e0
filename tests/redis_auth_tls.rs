//! Redis with AUTH and TLS (issue 8's acceptance; docs/config.md `[store]`),
//! black-box: real `authgate serve` processes against a real `redis-server`
//! started here on free loopback ports with `requirepass`, with an ACL user,
//! and with a TLS port whose certificate a test CA signed.
//!
//! Each test proves the store is really used through the protected path:
//! a revocation made on one gateway is enforced by a second one (pub/sub and
//! the revocation script over the authenticated / TLS connection), the
//! revoked jti is in Redis, and a shared rate limit lets exactly its budget
//! through across both. A wrong password or an untrusted server certificate
//! fails closed (`/readyz` 503, revocations 503), and the password never
//! appears in the gateway's output.

mod common;

use common::ops::Pki;
use common::*;
use serde_json::json;
use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef-redis-auth";
const PASSWORD: &str = "s3cret-redis-pass/with:odd@chars";
const REVOKED_JTIS: &str = "authgate:{revoked}:jti";

/// The gateway's config around a `[store]` table (`{upstream}` still to fill).
fn config(store: &str) -> String {
    GatewayConfig::new()
        .default_threads()
        .admin_token_env("AUTHGATE_ADMIN_TOKEN")
        .extra(store)
        .upstream("app", &["{upstream}"])
        .issuer(
            "hs",
            "issuer = \"https://hs.test\"\nalgorithms = [\"HS256\"]\nsecret_env = \"TEST_HS_SECRET\"",
        )
        .route("name = \"api\"\npath_prefix = \"/api/\"\nupstream = \"app\"\nauth = \"jwt\"")
        .route(
            r#"name = "login"
path = "/login"
upstream = "app"
auth = "none"

[[routes.rate_limits]]
key = "ip"
limit = 3
window = "1h""#,
        )
        .toml()
}

/// A `redis-server` with `extra` arguments (`{tls_port}` replaced by a free
/// port, also returned), answering on a plain loopback port too.
fn server(extra: &[String]) -> (RedisServer, u16) {
    let tls_port = free_port();
    let extra: Vec<String> = extra
        .iter()
        .map(|a| a.replace("{tls_port}", &tls_port.to_string()))
        .collect();
    let node = Redis::new("redis-auth").args(extra.iter().cloned()).start();
    if extra.iter().any(|a| a == "--tls-port") {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            assert!(Instant::now() < deadline, "no TLS port:\n{}", node.log());
            thread::sleep(Duration::from_millis(20));
        }
    }
    (node, tls_port)
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        HS_ENV,
        ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("REDIS_PASSWORD", PASSWORD),
    ]
}

fn start_pair(store: &str) -> (Gateway, Gateway, Upstream) {
    let up = Upstream::start();
    let cfg = config(store).replace("{upstream}", &up.addr);
    let a = Gateway::start(&cfg, &env());
    let b = Gateway::start(&cfg, &env());
    for gw in [&a, &b] {
        wait_ready(gw);
    }
    (a, b, up)
}

fn wait_ready(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw.admin_get("/readyz");
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {}: {}\n{}",
            r.status,
            r.text(),
            gw.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn revoke(gw: &Gateway, jti: &str) -> Response {
    let body = json!({ "jti": jti, "exp": now() + 600 }).to_string();
    request(
        &gw.admin_addr,
        "POST",
        "/admin/revoke",
        &[
            ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// Revoked on `a`, enforced on `b` within 1 s; in Redis; the shared
/// rate limit lets exactly 3 of 6 through across both.
fn assert_store_shared(a: &Gateway, b: &Gateway, redis: &RedisServer, auth: &[&str]) {
    let jti = format!("jti-{}", now());
    let token = hs_token(&hs_claims("alice", json!({ "jti": jti })));
    assert_eq!(b.get_bearer("/api/x", &token).status, 200);
    let r = revoke(a, &jti);
    assert_eq!(r.status, 200, "revoke: {}", r.text());
    let start = Instant::now();
    loop {
        let r = b.get_bearer("/api/x", &token);
        if r.status == 401 {
            assert_eq!(r.json()["reason"], "revoked");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the other gateway still accepts the revoked token: {}",
            r.status
        );
        thread::sleep(Duration::from_millis(20));
    }
    match redis.query_after(auth, &["ZSCORE", REVOKED_JTIS, &jti]) {
        Resp::Bulk(Some(_)) => {}
        other => panic!("the jti is not in Redis: {other:?}"),
    }
    let mut passed = 0;
    for i in 0..6 {
        let gw = if i % 2 == 0 { a } else { b };
        let r = request(&gw.proxy_addr, "POST", "/login", &[], b"x");
        match r.status {
            200 => passed += 1,
            429 => {}
            s => panic!("login {i}: {s} {}", r.text()),
        }
    }
    assert_eq!(passed, 3, "a shared limit of 3 across two gateways");
    for gw in [a, b] {
        let out = format!("{}{}", gw.logs(), gw.stderr());
        assert!(!out.contains(PASSWORD), "the Redis password was logged");
    }
}

#[test]
fn requirepass_with_the_password_from_the_environment() {
    let (redis, _) = server(&["--requirepass".into(), PASSWORD.into()]);
    // unauthenticated clients get nothing
    assert!(matches!(
        redis_query(&redis.addr(), &["ZCARD", REVOKED_JTIS]),
        Ok(Resp::Error(e)) if e.starts_with("NOAUTH")
    ));
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\npassword_env = \"REDIS_PASSWORD\"",
        redis.port
    );
    let (a, b, _up) = start_pair(&store);
    assert_store_shared(&a, &b, &redis, &["AUTH", PASSWORD]);
}

#[test]
fn a_wrong_password_fails_closed_and_is_not_logged() {
    let (redis, _) = server(&["--requirepass".into(), PASSWORD.into()]);
    let up = Upstream::start();
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\npassword_env = \"WRONG_PASSWORD\"",
        redis.port
    );
    let cfg = config(&store).replace("{upstream}", &up.addr);
    let mut e = env();
    e.push(("WRONG_PASSWORD", "not-the-password-4242"));
    let gw = Gateway::start(&cfg, &e);
    thread::sleep(Duration::from_millis(1500));
    let r = gw.admin_get("/readyz");
    assert_eq!(r.status, 503, "/readyz with a wrong password: {}", r.text());
    let r = revoke(&gw, "j-1");
    assert_eq!(r.status, 503, "revoke with a wrong password: {}", r.text());
    let out = format!("{}{}", gw.logs(), gw.stderr());
    assert!(
        !out.contains("not-the-password-4242"),
        "the password was logged"
    );
    assert_eq!(
        redis.query_after(&["AUTH", PASSWORD], &["EXISTS", REVOKED_JTIS]),
        Resp::Int(0)
    );
}

#[test]
fn an_acl_user_in_the_url_or_with_username_and_password_file() {
    let (redis, _) = server(&[
        "--user".into(),
        "default".into(),
        "off".into(),
        "--user".into(),
        "gate".into(),
        "on".into(),
        format!(">{PASSWORD}"),
        "~*".into(),
        "&*".into(),
        "+@all".into(),
    ]);
    // the contract's form: user:password@ in the URL (percent-encoded)
    let encoded: String = PASSWORD
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let in_url = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://gate:{encoded}@127.0.0.1:{}/0\"",
        redis.port
    );
    // the extension: username + password_file
    let dir = temp_dir("redis-pass");
    let pass_file = dir.join("redis.pass");
    fs::write(&pass_file, format!("{PASSWORD}\n")).unwrap();
    let with_file = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\nusername = \"gate\"\npassword_file = \"{}\"",
        redis.port,
        pass_file.display()
    );
    let up = Upstream::start();
    let cfg = |store: &str| config(store).replace("{upstream}", &up.addr);
    let a = Gateway::start(&cfg(&in_url), &env());
    let b = Gateway::start(&cfg(&with_file), &env());
    wait_ready(&a);
    wait_ready(&b);
    assert_store_shared(&a, &b, &redis, &["AUTH", "gate", PASSWORD]);
}

#[test]
fn rediss_with_a_ca_file_and_requirepass() {
    let pki = Pki::new("redis");
    let (cert, key) = pki.server_cert("redis", &["IP:127.0.0.1", "DNS:localhost"]);
    let tls_args = |cert: &PathBuf, key: &PathBuf| -> Vec<String> {
        vec![
            "--tls-port".into(),
            "{tls_port}".into(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-ca-cert-file".into(),
            pki.ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--requirepass".into(),
            PASSWORD.into(),
        ]
    };
    let (redis, tls_port) = server(&tls_args(&cert, &key));
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{}/0\"\nca_file = \"{}\"\npassword_env = \"REDIS_PASSWORD\"",
        tls_port,
        pki.ca.display()
    );
    // the gateways know only the TLS port
    let (a, b, _up) = start_pair(&store);
    assert_store_shared(&a, &b, &redis, &["AUTH", PASSWORD]);

    // a server certificate from another CA is refused: fail closed
    let other = Pki::new("other");
    let up = Upstream::start();
    let wrong_ca = store.replace(
        &pki.ca.display().to_string(),
        &other.ca.display().to_string(),
    );
    let gw = Gateway::start(&config(&wrong_ca).replace("{upstream}", &up.addr), &env());
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.admin_get("/readyz").status, 503);
    assert_eq!(revoke(&gw, "j-2").status, 503);
}

#[test]
fn check_explains_store_credential_and_tls_mistakes() {
    let dir = temp_dir("redis-check");
    let cases = [
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6390/0\"\nca_file = \"ca.pem\"",
            "no URL here is rediss://",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:6390/0\"\nca_file = \"missing.pem\"",
            "cannot read",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6390/0\"\nusername = \"gate\"",
            "username needs password_env or password_file",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6390/0\"\npassword_env = \"NOT_SET_ANYWHERE_42\"",
            "NOT_SET_ANYWHERE_42",
        ),
    ];
    fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
    for (store, want) in cases {
        let cfg = config(store).replace("{upstream}", "127.0.0.1:1");
        let path = dir.join("gateway.toml");
        fs::write(&path, render(&cfg, "127.0.0.1:1", "127.0.0.1:2")).unwrap();
        let out = run_cli(&["check", "--config", path.to_str().unwrap()], &env(), &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{store}: {err}");
        assert!(err.contains(want), "{store}: wanted {want:?} in {err}");
        assert!(
            err.contains("gateway.toml:"),
            "{store}: no position in {err}"
        );
    }
}

/// The ACL user exactly as docs/operations.md writes it (its `ACL SETUSER`
/// line, password filled in): revocation through it reaches the other
/// gateway, lands in Redis and is re-read by a gateway started afterwards,
/// and a shared rate limit counts through it. A command the line forgets
/// fails this test (the gateway's store calls are refused: NOPERM).
#[test]
fn the_acl_user_of_operations_md_runs_revocation_and_limits() {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .expect("docs/operations.md");
    let line = doc
        .lines()
        .find(|l| l.starts_with("ACL SETUSER authgate "))
        .expect("docs/operations.md has an `ACL SETUSER authgate` line");
    let password = "acl-pass-0123456789";
    let args: Vec<String> = line
        .split_whitespace()
        .map(|a| a.replace("<password>", password))
        .collect();
    let (redis, _) = server(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        redis.query(&argv),
        Resp::Simple("OK".into()),
        "the documented ACL line is refused: {line}"
    );
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://authgate:{password}@127.0.0.1:{}/0\"",
        redis.port
    );
    let (a, b, up) = start_pair(&store);
    assert_store_shared(&a, &b, &redis, &["PING"]);
    // a gateway started now reads the revocation back through the same user
    let jti = format!("jti-acl-{}", now());
    let token = hs_token(&hs_claims("alice", json!({ "jti": jti })));
    assert_eq!(revoke(&a, &jti).status, 200);
    let c = Gateway::start(&config(&store).replace("{upstream}", &up.addr), &env());
    wait_ready(&c);
    let r = c.get_bearer("/api/x", &token);
    assert_eq!(r.status, 401, "a fresh gateway accepts a revoked token");
    assert_eq!(r.json()["reason"], "revoked");
    for gw in [&a, &b, &c] {
        let out = format!("{}{}", gw.logs(), gw.stderr());
        assert!(!out.contains("NOPERM"), "a store call was refused:\n{out}");
    }
}
