//! The command line: `authgate check` (exit 0 + one-line summary; exit 2 with every
//! error as `FILE:LINE:COL: message`, FILE exactly as given: unknown keys, unknown
//! upstream / issuer, missing env var / file, a key that can't serve the algorithm,
//! several at once), unknown flags, `serve` refusing a bad config, and `authgate token`
//! (claims, ttl, signature) whose tokens a running gateway accepts, for an HS256 secret
//! issuer and an RS256 issuer with `private_key_file`.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use std::path::Path;

const UNSET_ENV: &str = "AUTHGATE_TEST_SURELY_UNSET_VAR";

/// The base config with fixed placeholder addresses, as `check` sees it.
fn good_config() -> String {
    render(
        &GatewayConfig::base().toml(),
        "127.0.0.1:18080",
        "127.0.0.1:19090",
    )
    .replace("{upstream}", "127.0.0.1:3000")
}

/// Writes `gateway.toml` into a fresh dir and returns the dir.
fn write_config(text: &str) -> std::path::PathBuf {
    let dir = temp_dir("cli");
    std::fs::write(dir.join("gateway.toml"), text).unwrap();
    dir
}

fn out(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `check --config <file>` run from `dir`.
fn check(dir: &Path, file: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let o = run_cli(&["check", "--config", file], env, dir);
    let (stdout, stderr) = out(&o);
    (o.status.code().unwrap_or(-1), stdout, stderr)
}

/// The (line, col, message) of every `FILE:LINE:COL: message` line on stderr.
fn error_lines(stderr: &str, file: &str) -> Vec<(usize, usize, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            let msg = parts.next()?.trim().to_string();
            Some((line, col, msg))
        })
        .collect()
}

fn assert_reports_line(stderr: &str, file: &str, line: usize, what: &str) {
    let errs = error_lines(stderr, file);
    assert!(
        errs.iter()
            .any(|(l, c, m)| *l == line && *c >= 1 && !m.is_empty()),
        "{what}: expected a `{file}:{line}:COL: message` line, stderr was:\n{stderr}"
    );
}

#[test]
fn check_accepts_the_good_config() {
    let dir = write_config(&good_config());
    let path = dir.join("gateway.toml");
    let (code, stdout, stderr) = check(&dir, path.to_str().unwrap(), &[HS_ENV]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "summary should be one line: {stdout:?}");
    // --config defaults to ./gateway.toml
    let o = run_cli(&["check"], &[HS_ENV], &dir);
    assert_eq!(o.status.code(), Some(0), "{:?}", out(&o));
}

#[test]
fn check_reports_unknown_key_with_file_line_col() {
    let text = good_config().replace("admin_listen", "lisen = \"127.0.0.1:1\"\nadmin_listen");
    let line = line_of(&text, "lisen");
    assert_eq!(line, 3);
    let dir = write_config(&text);
    let abs = dir.join("gateway.toml");
    for file in ["gateway.toml", "./gateway.toml", abs.to_str().unwrap()] {
        let (code, _, stderr) = check(&dir, file, &[HS_ENV]);
        assert_eq!(code, 2, "{file}: {stderr}");
        assert_reports_line(&stderr, file, line, "unknown key `lisen`");
    }
    // an unknown key in a route table too
    let text = format!("{}colour = \"blue\"\n", good_config());
    let dir = write_config(&text);
    let (code, _, stderr) = check(&dir, "gateway.toml", &[HS_ENV]);
    assert_eq!(code, 2, "{stderr}");
    assert_reports_line(&stderr, "gateway.toml", line_of(&text, "colour"), "colour");
}

/// Each broken variant of the good config, with the text marking the offending line.
fn broken_variants() -> Vec<(&'static str, String, &'static str)> {
    let good = good_config();
    vec![
        (
            "unknown upstream",
            good.replace("upstream = \"app\"", "upstream = \"nope\""),
            "upstream = \"nope\"",
        ),
        (
            "unknown issuer",
            good.replace("issuers = [\"hs\"]", "issuers = [\"nope\"]"),
            "issuers = [\"nope\"]",
        ),
        (
            "missing env var",
            good.replace("TEST_HS_SECRET", UNSET_ENV),
            UNSET_ENV,
        ),
        (
            "missing file",
            format!(
                "{good}\n[issuers.gone]\nissuer = \"https://gone.test\"\nalgorithms = [\"RS256\"]\n\
                 public_key_file = \"{}/does-not-exist.pem\"\n",
                fixtures().display()
            ),
            "does-not-exist.pem",
        ),
    ]
}

#[test]
fn check_reports_reference_errors() {
    for (what, text, marker) in broken_variants() {
        let dir = write_config(&text);
        let (code, stdout, stderr) = check(&dir, "gateway.toml", &[HS_ENV]);
        assert_eq!(code, 2, "{what}: stdout {stdout:?} stderr {stderr:?}");
        assert_reports_line(&stderr, "gateway.toml", line_of(&text, marker), what);
    }
}

#[test]
fn check_reports_every_error_at_once() {
    let text = format!(
        "{}\n[issuers.gone]\nissuer = \"https://gone.test\"\nalgorithms = [\"RS256\"]\n\
         public_key_file = \"{}/does-not-exist.pem\"\n",
        good_config()
            .replace("upstream = \"app\"", "upstream = \"nope\"")
            .replace("issuers = [\"hs\"]", "issuers = [\"nope\"]")
            .replace("TEST_HS_SECRET", UNSET_ENV)
            .replace("threads = 1", "threads = 1\nlisen = \"x\""),
        fixtures().display()
    );
    let dir = write_config(&text);
    let (code, _, stderr) = check(&dir, "gateway.toml", &[]);
    assert_eq!(code, 2, "{stderr}");
    for marker in [
        "lisen",
        "upstream = \"nope\"",
        "issuers = [\"nope\"]",
        UNSET_ENV,
        "does-not-exist.pem",
    ] {
        assert_reports_line(&stderr, "gateway.toml", line_of(&text, marker), marker);
    }
}

#[test]
fn check_rejects_a_key_that_cannot_serve_the_algorithm() {
    let text = format!(
        "{}\n[issuers.bad]\nissuer = \"https://bad.test\"\nalgorithms = [\"HS256\"]\n\
         public_key_file = \"{}/rsa_pub.pem\"\n",
        good_config(),
        fixtures().display()
    );
    let first = line_of(&text, "[issuers.bad]");
    let last = line_of(&text, "rsa_pub.pem");
    let dir = write_config(&text);
    let (code, _, stderr) = check(&dir, "gateway.toml", &[HS_ENV]);
    assert_eq!(code, 2, "{stderr}");
    let errs = error_lines(&stderr, "gateway.toml");
    assert!(
        errs.iter().any(|(l, _, _)| (first..=last).contains(l)),
        "expected an error within lines {first}..={last}: {stderr}"
    );
    // an EC key for an RS256 issuer is just as wrong
    let text = good_config()
        + &format!(
            "\n[issuers.ec]\nissuer = \"https://ec.test\"\nalgorithms = [\"RS256\"]\n\
             public_key_file = \"{}/ec256_pub.pem\"\n",
            fixtures().display()
        );
    let dir = write_config(&text);
    let (code, _, stderr) = check(&dir, "gateway.toml", &[HS_ENV]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!error_lines(&stderr, "gateway.toml").is_empty(), "{stderr}");
}

/// A key the verifier refuses (a 1,024-bit RSA key) is a `check` error on
/// its line, not a gateway that answers `bad_signature` to every token; a
/// JWKS holding only such a key holds no usable key.
#[test]
fn check_rejects_a_key_the_verifier_refuses() {
    for (source, file, says) in [
        ("public_key_file", "rsa1024_pub.pem", "2048"),
        ("jwks_file", "jwks_rsa1024.json", "no usable key"),
    ] {
        let text = format!(
            "{}\n[issuers.small]\nissuer = \"https://small.test\"\nalgorithms = [\"RS256\"]\n\
             {source} = \"{}/{file}\"\n",
            good_config(),
            fixtures().display()
        );
        let line = line_of(&text, file);
        let dir = write_config(&text);
        let (code, _, stderr) = check(&dir, "gateway.toml", &[HS_ENV]);
        assert_eq!(code, 2, "{file}: {stderr}");
        let errs = error_lines(&stderr, "gateway.toml");
        assert!(
            errs.iter().any(|(l, _, m)| *l == line && m.contains(says)),
            "{file}: expected an error on line {line} saying {says:?}: {stderr}"
        );
    }
}

#[test]
fn unknown_flags_and_bad_configs_fail() {
    let dir = write_config(&good_config());
    for args in [
        vec!["check", "--config", "gateway.toml", "--bogus"],
        vec!["serve", "--config", "gateway.toml", "--bogus"],
        vec!["check", "--confg", "gateway.toml"],
        vec!["frobnicate"],
    ] {
        let o = run_cli(&args, &[HS_ENV], &dir);
        assert!(!o.status.success(), "{args:?} succeeded: {:?}", out(&o));
    }
    // a missing config file
    let o = run_cli(&["check", "--config", "missing.toml"], &[HS_ENV], &dir);
    assert!(!o.status.success());
    // serve refuses to start with an unknown key or a missing secret
    let bad = good_config().replace("threads = 1", "threads = 1\nlisen = \"x\"");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let o = run_cli(&["serve", "--config", "bad.toml"], &[HS_ENV], &dir);
    assert!(!o.status.success(), "serve accepted an unknown key");
    let o = run_cli(&["serve", "--config", "gateway.toml"], &[], &dir);
    assert!(!o.status.success(), "serve started without TEST_HS_SECRET");
}

/// A listen address another process holds: `serve` exits with an error
/// naming the address and the setting, instead of retrying the bind while
/// the other process answers there.
#[test]
fn serve_fails_when_a_listen_address_is_taken() {
    for which in ["server.listen", "server.admin_listen"] {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap().to_string();
        let free = format!("127.0.0.1:{}", free_port());
        let (proxy, admin) = if which == "server.listen" {
            (taken_addr.as_str(), free.as_str())
        } else {
            (free.as_str(), taken_addr.as_str())
        };
        let config = render(&GatewayConfig::base().toml(), proxy, admin)
            .replace("{upstream}", "127.0.0.1:3000");
        let dir = write_config(&config);
        let o = run_cli(&["serve", "--config", "gateway.toml"], &[HS_ENV], &dir);
        let (stdout, stderr) = out(&o);
        assert_eq!(o.status.code(), Some(1), "{which}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&taken_addr) && stderr.contains(which),
            "{which}: the error does not name the address and setting: {stderr}"
        );
        drop(taken);
    }
}

/// `authgate token` with the given extra args; returns the printed token.
fn mint(dir: &Path, issuer: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec![
        "token",
        "--config",
        "gateway.toml",
        "--issuer",
        issuer,
        "--sub",
        "alice",
    ];
    args.extend_from_slice(extra);
    let o = run_cli(&args, env, dir);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "token {extra:?} failed: {stderr}");
    let token = stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "not a JWT: {stdout:?}");
    token
}

fn check_payload(token: &str, iss: &str, ttl: i64) -> Value {
    let p = token_part(token, 1);
    assert_eq!(p["iss"], iss);
    assert_eq!(p["sub"], "alice");
    assert!(
        p["aud"] == "api" || p["aud"] == json!(["api"]),
        "aud {}",
        p["aud"]
    );
    let (iat, exp) = (p["iat"].as_i64().unwrap(), p["exp"].as_i64().unwrap());
    assert!((iat - now()).abs() <= 60, "iat {iat} vs now {}", now());
    assert_eq!(exp - iat, ttl, "exp - iat");
    assert!(
        !p["jti"].as_str().unwrap_or_default().is_empty(),
        "jti {}",
        p["jti"]
    );
    p
}

const RS_ISSUER: &str = "
[issuers.rs]
issuer = \"https://rs.test\"
audiences = [\"api\", \"other\"]
algorithms = [\"RS256\"]
public_key_file = \"{fixtures}/rsa_pub.pem\"
private_key_file = \"{fixtures}/rsa_priv.pem\"
";

/// Base config whose `api` route requires role admin, plus issuer `rs` (with a
/// private key) and route `/rs/` (also requiring admin).
fn token_template() -> String {
    GatewayConfig::base()
        .more("require = { roles = [\"admin\"] }")
        .extra(RS_ISSUER)
        .jwt_route("rsapi", "/rs/", &["rs"])
        .more("require = { roles = [\"admin\"] }")
        .toml()
}

/// The template as `token` sees it, written to a fresh dir.
fn token_dir(template: &str) -> std::path::PathBuf {
    write_config(
        &render(template, "127.0.0.1:18080", "127.0.0.1:19090")
            .replace("{upstream}", "127.0.0.1:3000"),
    )
}

#[test]
fn token_for_hs256_secret_issuer() {
    let template = token_template();
    let dir = token_dir(&template);

    let t = mint(
        &dir,
        "hs",
        &[
            "--claim",
            r#"roles=["admin"]"#,
            "--claim",
            "n=5",
            "--claim",
            "team=blue",
            "--ttl",
            "5m",
        ],
        &[HS_ENV],
    );
    let p = check_payload(&t, "https://hs.test", 300);
    assert_eq!(p["roles"], json!(["admin"]));
    assert_eq!(p["n"], json!(5));
    assert_eq!(p["team"], json!("blue"));
    assert_eq!(token_part(&t, 0)["alg"], "HS256");
    // independently verifiable with the secret
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["api"]);
    v.set_issuer(&["https://hs.test"]);
    jsonwebtoken::decode::<Value>(&t, &DecodingKey::from_secret(HS_SECRET.as_bytes()), &v)
        .expect("token does not verify with the configured secret");

    // default ttl 15m, fresh jti each time
    let t2 = mint(&dir, "hs", &[], &[HS_ENV]);
    let p2 = check_payload(&t2, "https://hs.test", 900);
    assert_ne!(p["jti"], p2["jti"]);

    // a running gateway with the same config accepts it on the admin-only route
    let (gw, up) = Gateway::with_upstream(&template, &[HS_ENV]);
    let r = gw.get_bearer("/api/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-subject").as_deref(), Some("alice"));
    assert_eq!(up.last().header("x-auth-roles").as_deref(), Some("admin"));
    // and the one without the role is forbidden there
    let r = gw.get_bearer("/api/x", &t2);
    assert_error(&r, 403, "forbidden", "insufficient_role");
}

#[test]
fn token_for_rs256_private_key_issuer() {
    let template = token_template();
    let dir = token_dir(&template);
    let t = mint(
        &dir,
        "rs",
        &["--claim", r#"roles=["admin","x"]"#, "--ttl", "1h"],
        &[HS_ENV],
    );
    let p = check_payload(&t, "https://rs.test", 3600);
    assert_eq!(p["aud"].as_str().unwrap_or("api"), "api", "first audience");
    assert_eq!(p["roles"], json!(["admin", "x"]));
    assert_eq!(token_part(&t, 0)["alg"], "RS256");
    let pem = std::fs::read(fixture("rsa_pub.pem")).unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&["api"]);
    jsonwebtoken::decode::<Value>(&t, &DecodingKey::from_rsa_pem(&pem).unwrap(), &v)
        .expect("token does not verify with rsa_pub.pem");

    let (gw, up) = Gateway::with_upstream(&template, &[HS_ENV]);
    let r = gw.get_bearer("/rs/x", &t);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-issuer").as_deref(), Some("rs"));
    assert_eq!(up.last().header("x-auth-roles").as_deref(), Some("admin,x"));
}

#[test]
fn token_refuses_unknown_issuer_or_missing_signing_key() {
    let text = good_config()
        + &format!(
            "\n[issuers.pub]\nissuer = \"https://pub.test\"\nalgorithms = [\"RS256\"]\n\
             public_key_file = \"{}/rsa_pub.pem\"\n",
            fixtures().display()
        );
    let dir = write_config(&text);
    for issuer in ["nope", "pub"] {
        let o = run_cli(
            &[
                "token",
                "--config",
                "gateway.toml",
                "--issuer",
                issuer,
                "--sub",
                "a",
            ],
            &[HS_ENV],
            &dir,
        );
        let (stdout, stderr) = out(&o);
        assert!(!o.status.success(), "{issuer}: printed {stdout:?}");
        assert!(
            stdout.trim().split('.').count() != 3,
            "{issuer}: {stdout} {stderr}"
        );
    }
}
