//! Shared harness for the black-box tests: real processes over loopback.
//!
//! - [`Gateway`]: runs `authgate serve --config <tmp>/gateway.toml`, waits for `/healthz`.
//! - [`GatewayConfig`]: the one builder of that `gateway.toml` (`config.rs`).
//! - [`Redis`] / [`RedisServer`]: the one `redis-server` launcher (`redis_server.rs`).
//! - [`Upstream`]: an HTTP/1.1 echo server on std threads that records what it received.
//! - [`request`]: a raw HTTP/1.1 client over `TcpStream` (`Connection: close`, 10 s timeout).
//! - token helpers built on `jsonwebtoken`, plus raw builders for hostile tokens.
//! - small readers for Prometheus text and JSON log lines.
#![allow(dead_code)]

pub mod cluster;
/// The one `gateway.toml` builder: see `config.rs`.
pub mod config;
/// Login-style upstream (401 on a wrong password) and a raw client: see `login.rs`.
pub mod login;
/// Live-operations helpers (JWKS server, signals, reload, TLS, slow upstream): see `ops.rs`.
pub mod ops;
/// The Python peers (PyJWT's venv, grpcio, websockets): see `python.rs`.
pub mod python;
/// The one `redis-server` launcher (plain, ACL, TLS, cluster node, sentinel) and
/// a RESP client: see `redis_server.rs`.
pub mod redis_server;

pub use config::GatewayConfig;
pub use redis_server::{redis_pipeline, redis_query, Redis, RedisServer, Resp};

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_authgate");

/// The binary the tests start: `AUTHGATE_BIN` when set (to run a test
/// against another build, e.g. to show it fails before a fix), else the
/// one cargo built.
pub fn bin() -> String {
    std::env::var("AUTHGATE_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Written straight to stderr, so it shows in the test output even when
/// libtest captures `print!` (the Redis topology tests report what they
/// measured this way).
pub fn show(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
pub const HS_SECRET: &str = "test-hs-secret-0123456789abcdef0123456789abcdef";
pub const HS_ENV: (&str, &str) = ("TEST_HS_SECRET", HS_SECRET);

// ---------------------------------------------------------------------------
// paths, ports, temp dirs

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An address where nothing listens.
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A fresh, unique directory under the system temp dir (the launcher's,
/// which the benches include without this module).
pub fn temp_dir(tag: &str) -> PathBuf {
    redis_server::fresh_dir(tag)
}

/// 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

// ---------------------------------------------------------------------------
// raw HTTP client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one request with `Connection: close` and reads the whole answer.
/// Adds `Host: <addr>` unless `headers` has a Host; adds `Content-Length` for a body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr} failed: {e}"))
}

pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    request(addr, "GET", path, headers, b"")
}

pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (and close) before reading everything, e.g. for huge
    // headers: a write error is not fatal, the answer is what counts.
    let _ = stream.write_all(&bytes);
    let mut reader = BufReader::new(stream);
    let status_line = read_line(&mut reader)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers = read_headers(&mut reader)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        read_chunked(&mut reader)?
    } else if let Some(len) = find("content-length") {
        let mut body = vec![0; len.trim().parse().map_err(|_| bad("bad content-length"))?];
        reader.read_exact(&mut body)?;
        body
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_headers(r: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header {line:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn read_chunked(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = read_line(r)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
            .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            while !read_line(r)?.is_empty() {} // trailers
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line(r)?;
    }
}

// ---------------------------------------------------------------------------
// upstream echo server

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// In arrival order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// Every value of this header (case-insensitive name).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    /// The header's value; panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {all:?}", all.len());
        all.into_iter().next()
    }
}

/// HTTP/1.1 server answering every request 200 with a JSON echo:
/// `{"method","path","headers":{name:[values]},"body_sha256","body_len"}`.
pub struct Upstream {
    pub addr: String,
    pub hits: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (hits.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, r) = (h.clone(), r.clone());
                thread::spawn(move || {
                    let _ = serve_echo(stream, &h, &r);
                });
            }
        });
        Upstream {
            addr,
            hits,
            requests,
        }
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
    pub fn last(&self) -> RecordedRequest {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream received no request")
    }
}

fn serve_echo(
    stream: TcpStream,
    hits: &AtomicUsize,
    log: &Mutex<Vec<RecordedRequest>>,
) -> std::io::Result<()> {
    serve_recorded(stream, hits, log, |_| 200)
}

/// Serves keep-alive HTTP/1.1 on `stream`: records every request in `log`,
/// counts it in `hits`, and answers with the status `rule` gives and the
/// request echoed as JSON (method, path, headers, body digest and length).
pub fn serve_recorded(
    stream: TcpStream,
    hits: &AtomicUsize,
    log: &Mutex<Vec<RecordedRequest>>,
    rule: impl Fn(&RecordedRequest) -> u16,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(l) if l.is_empty() => continue,
            Ok(l) => l,
            Err(_) => return Ok(()),
        };
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = read_headers(&mut reader)?
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let find = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            read_chunked(&mut reader)?
        } else if let Some(len) = find("content-length") {
            let mut b = vec![0; len.trim().parse().unwrap_or(0)];
            reader.read_exact(&mut b)?;
            b
        } else {
            Vec::new()
        };
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &headers {
            map.entry(k.clone()).or_default().push(v.clone());
        }
        let echo = json!({
            "method": method,
            "path": path,
            "headers": map,
            "body_sha256": sha256_hex(&body),
            "body_len": body.len(),
        })
        .to_string();
        let recorded = RecordedRequest {
            method,
            path,
            headers,
            body,
        };
        let status = rule(&recorded);
        log.lock().unwrap().push(recorded);
        hits.fetch_add(1, Ordering::SeqCst);
        let text = match status {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "Status",
        };
        // One write: `write!` on the socket sends each formatted piece on
        // its own, and on a reused connection the pieces after the first
        // wait for the gateway's delayed ACK (Nagle), 40 ms per response.
        let response = format!(
            "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{echo}",
            echo.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A listener that only counts connections (and answers each with `body` as JSON):
/// stands in for an attacker's `jku`/`x5u` host.
pub struct ConnCounter {
    pub addr: String,
    pub conns: Arc<AtomicUsize>,
}

impl ConnCounter {
    pub fn start(body: String) -> ConnCounter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.read(&mut buf);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ConnCounter { addr, conns }
    }
    pub fn count(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// the gateway process

pub struct Gateway {
    pub proxy_addr: String,
    pub admin_addr: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    child: Child,
}

/// Replaces `{proxy}`, `{admin}`, `{fixtures}` (and leaves anything else alone).
pub fn render(template: &str, proxy: &str, admin: &str) -> String {
    template
        .replace("{proxy}", proxy)
        .replace("{admin}", admin)
        .replace("{fixtures}", fixtures().to_str().unwrap())
}

impl Gateway {
    /// Starts `authgate serve` on free ports with `toml` (`{proxy}`, `{admin}`,
    /// `{fixtures}` substituted; substitute `{upstream}` before calling) and waits
    /// until the admin `/healthz` answers 200.
    pub fn start(toml: &str, env: &[(&str, &str)]) -> Gateway {
        for attempt in 0.. {
            match Self::try_start(toml, env) {
                Ok(gw) => return gw,
                // A port picked by free_port() was taken meanwhile: try new ports.
                Err(msg) if attempt < 3 && msg.to_ascii_lowercase().contains("in use") => {}
                Err(msg) => panic!("{msg}"),
            }
        }
        unreachable!()
    }

    /// Starts an [`Upstream`], substitutes `{upstream}` with it, starts the gateway.
    pub fn with_upstream(toml: &str, env: &[(&str, &str)]) -> (Gateway, Upstream) {
        let up = Upstream::start();
        let gw = Gateway::start(&toml.replace("{upstream}", &up.addr), env);
        (gw, up)
    }

    fn try_start(toml: &str, env: &[(&str, &str)]) -> Result<Gateway, String> {
        let proxy_port = free_port();
        let admin_port = std::iter::repeat_with(free_port)
            .find(|p| *p != proxy_port)
            .unwrap_or(0);
        let proxy_addr = format!("127.0.0.1:{proxy_port}");
        let admin_addr = format!("127.0.0.1:{admin_port}");
        let dir = temp_dir("gw");
        let config_path = dir.join("gateway.toml");
        fs::write(&config_path, render(toml, &proxy_addr, &admin_addr)).unwrap();
        let child = Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout.log")).unwrap())
            .stderr(fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            proxy_addr,
            admin_addr,
            dir,
            config_path,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = gw.child.try_wait().unwrap() {
                return Err(format!(
                    "authgate exited during start-up ({status})\n--- stderr:\n{}\n--- stdout:\n{}",
                    gw.stderr(),
                    gw.logs()
                ));
            }
            // A port taken meanwhile by another process: pingora keeps
            // retrying the bind while the other one answers there. Start
            // again on new ports.
            if gw.logs().contains("is in use") {
                let _ = gw.child.kill();
                let _ = gw.child.wait();
                return Err(format!("{} or {} is in use", gw.proxy_addr, gw.admin_addr));
            }
            // The admin listener can answer before the proxy listener is
            // bound (they are separate services): wait for both.
            if let Ok(r) = try_request(&gw.admin_addr, "GET", "/healthz", &[], b"") {
                if r.status == 200
                    && TcpStream::connect(&gw.proxy_addr).is_ok()
                    && !gw.logs().contains("is in use")
                {
                    return Ok(gw);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "authgate not healthy on {} after 20 s\n--- stderr:\n{}\n--- stdout:\n{}",
                    gw.admin_addr,
                    gw.stderr(),
                    gw.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Captured stdout so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        get(&self.proxy_addr, path, headers)
    }
    /// GET on the proxy listener with `Authorization: Bearer <token>`.
    pub fn get_bearer(&self, path: &str, token: &str) -> Response {
        let auth = format!("Bearer {token}");
        get(&self.proxy_addr, path, &[("Authorization", &auth)])
    }
    pub fn admin_get(&self, path: &str) -> Response {
        get(&self.admin_addr, path, &[])
    }
    pub fn metrics(&self) -> String {
        let r = self.admin_get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {}", r.text());
        r.text()
    }

    /// `/metrics` once `ok` holds for it (or the last scrape after 10 s):
    /// a request is counted when its log phase runs, which can be just
    /// after the client has read the answer.
    pub fn metrics_when(&self, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        poll_until(Duration::from_secs(10), || {
            last = self.metrics();
            ok(&last).then_some(())
        });
        last
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("gateway files kept in {}", self.dir.display());
        }
    }
}

/// Runs the binary to completion (for `check` / `token`), with a 30 s limit.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("authgate {args:?} did not exit within 30 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

// ---------------------------------------------------------------------------
// tokens

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `iss`, `sub`, `aud: "api"`, `iat: now`, `exp: now + 300`.
pub fn claims(iss: &str, sub: &str) -> Value {
    json!({"iss": iss, "sub": sub, "aud": "api", "iat": now(), "exp": now() + 300})
}

/// `claims("https://hs.test", sub)` plus the fields of `extra` (null removes a claim).
pub fn hs_claims(sub: &str, extra: Value) -> Value {
    merge(claims("https://hs.test", sub), extra)
}

pub fn merge(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

pub fn hs_key(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}
pub fn rsa_key(file: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fs::read(fixture(file)).unwrap()).unwrap()
}
pub fn ec_key(file: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(&fs::read(fixture(file)).unwrap()).unwrap()
}
pub fn ed_key(file: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(&fs::read(fixture(file)).unwrap()).unwrap()
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}
pub fn sign_kid(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}
/// HS256 token for the base config's `hs` issuer.
pub fn hs_token(claims: &Value) -> String {
    sign(Algorithm::HS256, &hs_key(HS_SECRET), claims)
}

pub fn b64u(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// `b64u(header).b64u(payload).b64u(sig)` from arbitrary JSON and signature bytes.
pub fn raw_token(header: &Value, payload: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(payload.to_string().as_bytes()),
        b64u(sig)
    )
}

/// Like [`raw_token`] but with a real signature by `key` under `alg`, whatever the
/// header says (lets tests add `jku`, `crit`, ... to an otherwise valid token).
pub fn raw_signed(header: &Value, payload: &Value, alg: Algorithm, key: &EncodingKey) -> String {
    let msg = format!(
        "{}.{}",
        b64u(header.to_string().as_bytes()),
        b64u(payload.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

/// Decodes segment `idx` (0 header, 1 payload) of a token as JSON.
pub fn token_part(token: &str, idx: usize) -> Value {
    let seg = token.split('.').nth(idx).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// assertions on answers, metrics and logs

/// 401 `invalid_token` with the given reason, `WWW-Authenticate: Bearer ... error="invalid_token"`,
/// and a body that does not contain the token.
#[track_caller]
pub fn assert_invalid(r: &Response, reason: &str, token: &str) {
    let ctx = format!(
        "expected 401 invalid_token/{reason}, got {} {}",
        r.status,
        r.text()
    );
    assert_eq!(r.status, 401, "{ctx}");
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer") && www.contains(r#"error="invalid_token""#),
        "WWW-Authenticate {www:?}; {ctx}"
    );
    assert_eq!(
        r.json(),
        json!({"error": "invalid_token", "reason": reason}),
        "{ctx}"
    );
    assert_no_token(r, token);
}

#[track_caller]
pub fn assert_no_token(r: &Response, token: &str) {
    let body = r.text();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!body.contains(part), "body leaks the token: {body}");
    }
}

#[track_caller]
pub fn assert_error(r: &Response, status: u16, error: &str, reason: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.json(), json!({"error": error, "reason": reason}));
}

/// Parses one Prometheus sample line into (name, labels, value).
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name_labels, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels_txt) = match name_labels.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (name_labels, ""),
    };
    let mut labels = BTreeMap::new();
    let mut rest = labels_txt;
    while let Some((k, v)) = rest.split_once("=\"") {
        let end = v.find('"')?;
        labels.insert(
            k.trim_start_matches(',').trim().to_string(),
            v[..end].to_string(),
        );
        rest = &v[end + 1..];
    }
    Some((name.to_string(), labels, value))
}

/// Sum of the samples named `name` whose labels include all of `labels`;
/// `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for (n, l, v) in text.lines().filter_map(parse_sample) {
        if n == name
            && labels
                .iter()
                .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The JSON lines of `logs` that describe a proxied request (they have `status` and `path`).
pub fn request_log_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| field(v, "status").is_some() && field(v, "path").is_some())
        .collect()
}

/// A field of a tracing JSON line, at top level or under `fields`.
pub fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get(name)
        .or_else(|| line.get("fields").and_then(|f| f.get(name)))
}

/// Field as text (strings as is, numbers printed).
pub fn field_str(line: &Value, name: &str) -> Option<String> {
    field(line, name).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Waits (up to 10 s) until the gateway has logged at least `n` request lines.
pub fn wait_request_logs(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = request_log_lines(&gw.logs());
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub fn addr_of(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// express-session cookies and connect-redis session values

pub const SESSION_SECRET_CURRENT: &str = "session-secret-current-0123456789abcdef";
pub const SESSION_SECRET_PREVIOUS: &str = "session-secret-previous-fedcba9876543210";
/// The env the session configs name in `secrets_env`.
pub const SESSION_ENV: [(&str, &str); 2] = [
    ("SESSION_SECRET_CURRENT", SESSION_SECRET_CURRENT),
    ("SESSION_SECRET_PREVIOUS", SESSION_SECRET_PREVIOUS),
];

/// cookie-signature's `sign(sid, secret)`: `<sid>.<base64 HMAC-SHA256 without '='>`,
/// computed here independently of the gateway's code.
pub fn cookie_signature(sid: &str, secret: &str) -> String {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(sid.as_bytes());
    format!(
        "{sid}.{}",
        STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// What `encodeURIComponent` leaves alone (the `cookie` module's encoding).
const URI_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

pub fn uri_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, URI_COMPONENT).to_string()
}

/// The cookie value express-session sets: `encodeURIComponent("s:" + sign(sid, secret))`.
pub fn session_cookie(sid: &str, secret: &str) -> String {
    uri_component(&format!("s:{}", cookie_signature(sid, secret)))
}

/// RFC 3339 UTC with milliseconds, as `Date.prototype.toISOString` writes it.
pub fn iso_ms(unix_ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A connect-redis session value: express-session's `cookie` object (`originalMaxAge`
/// `max_age_ms`, `expires` now + `expires_in_ms`, `httpOnly`, `path`) plus `fields`.
pub fn session_value(fields: Value, max_age_ms: i64, expires_in_ms: i64) -> String {
    let mut v = json!({
        "cookie": {
            "originalMaxAge": max_age_ms,
            "expires": iso_ms(now_ms() + expires_in_ms),
            "httpOnly": true,
            "path": "/"
        }
    });
    for (k, x) in fields.as_object().expect("fields must be an object") {
        v[k] = x.clone();
    }
    v.to_string()
}

/// A random-looking session id in express-session's alphabet (uid-safe: base64url).
pub fn new_sid(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let seed = format!(
        "{tag}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        now_ms()
    );
    b64u(&Sha256::digest(seed.as_bytes())[..24])
}

/// Calls `f` every 50 ms until it returns `Some`; `None` when no call that *started*
/// within `deadline` (from now) did.
pub fn poll_until<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if Instant::now() > end {
            return None;
        }
        if let Some(v) = f() {
            return Some(v);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Latency samples of one kind of request, for the no-stall checks: a
/// Nagle / delayed-ACK stall adds about 40 ms, so a loopback median under
/// [`STALL_BOUND_MS`] says there is none while leaving room for a busy CI
/// machine.
#[derive(Default, Debug)]
pub struct Latencies {
    pub ms: Vec<f64>,
}

/// The generous bound on a loopback median (milliseconds).
pub const STALL_BOUND_MS: f64 = 10.0;

impl Latencies {
    /// Runs `f`, records how long it took, returns its value.
    pub fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let v = f();
        self.ms.push(t.elapsed().as_secs_f64() * 1000.0);
        v
    }

    /// Prints the median and the samples, and fails when the median is at
    /// or over [`STALL_BOUND_MS`].
    #[track_caller]
    pub fn assert_no_stall(&mut self, what: &str) {
        assert!(!self.ms.is_empty(), "{what}: no samples");
        self.ms.sort_by(f64::total_cmp);
        let median = self.ms[self.ms.len() / 2];
        println!(
            "{what}: median {median:.2} ms over {}: {:.2?}",
            self.ms.len(),
            self.ms
        );
        assert!(
            median < STALL_BOUND_MS,
            "{what}: median {median:.2} ms: {:.2?}",
            self.ms
        );
    }
}
