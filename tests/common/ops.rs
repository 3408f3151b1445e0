//! Live-operations helpers (JWKS, reload, TLS, shutdown tests):
//!
//! - [`Gateway`] extras: `pid`, `signal` (`kill -HUP` ...), `wait_exit`, `write_config`,
//!   `admin_post`, `reload`.
//! - [`JwksServer`]: a JWKS provider on std threads whose document, `Cache-Control:
//!   max-age`, status and latency can be changed at run time; it counts requests and can
//!   be stopped and started again on the same port.
//! - [`KeepAlive`]: a raw HTTP/1.1 client that reuses one connection.
//! - [`SlowUpstream`]: answers 200 after a fixed delay and counts arrivals.
//! - [`Pki`] (a CA and certificates made with the `openssl` CLI), [`TlsEchoServer`]
//!   (a python3 HTTPS echo server) and [`curl`].

use super::{
    fixture, free_port, read_chunked, read_headers, read_line, render, request, temp_dir, Gateway,
    Response,
};
use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The admin token the ops tests configure (`[admin] token_env = "AUTHGATE_ADMIN_TOKEN"`).
pub const ADMIN_TOKEN: &str = "ops-admin-token-0123456789abcdef";
pub const ADMIN_ENV: (&str, &str) = ("AUTHGATE_ADMIN_TOKEN", ADMIN_TOKEN);

// ---------------------------------------------------------------------------
// the gateway process

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill <sig> <pid>`, e.g. `signal("-HUP")`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig} {} failed", self.pid());
    }

    /// The exit status once the process has exited, or `None` if it still runs
    /// after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Renders `template` (`{proxy}`, `{admin}`, `{fixtures}`) with this gateway's
    /// addresses and overwrites its config file (for a reload).
    pub fn write_config(&self, template: &str) {
        fs::write(
            &self.config_path,
            render(template, &self.proxy_addr, &self.admin_addr),
        )
        .unwrap();
    }

    /// A POST on the admin listener with `Authorization: Bearer <token>` (none when
    /// `token` is empty).
    pub fn admin_post(&self, path: &str, token: &str, body: &str) -> Response {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Content-Type", "application/json")];
        if !token.is_empty() {
            headers.push(("Authorization", auth.as_str()));
        }
        request(&self.admin_addr, "POST", path, &headers, body.as_bytes())
    }

    /// `POST /admin/reload` with [`ADMIN_TOKEN`].
    pub fn reload(&self) -> Response {
        self.admin_post("/admin/reload", ADMIN_TOKEN, "")
    }

    /// The JSON log lines whose `message` is `msg`.
    pub fn log_events(&self, msg: &str) -> Vec<Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| super::field(v, "message").and_then(Value::as_str) == Some(msg))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// JWKS documents

/// The RSA public JWK with kid `k1` (rsa_priv.pem) or `k2` (rsa2_priv.pem) from
/// `jwks_rs.json`.
pub fn rs_jwk(kid: &str) -> Value {
    let doc: Value = serde_json::from_slice(&fs::read(fixture("jwks_rs.json")).unwrap()).unwrap();
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .cloned()
        .unwrap_or_else(|| panic!("no kid {kid} in jwks_rs.json"))
}

/// `rs_jwk(from)` renamed to kid `kid`.
pub fn rs_jwk_as(from: &str, kid: &str) -> Value {
    let mut k = rs_jwk(from);
    k["kid"] = Value::String(kid.to_string());
    k
}

/// `{"keys": [...]}`.
pub fn jwks_doc(keys: &[Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

// ---------------------------------------------------------------------------
// a JWKS provider

struct JwksState {
    body: Mutex<String>,
    max_age: Mutex<Option<u64>>,
    status: Mutex<u16>,
    delay: Mutex<Duration>,
    count: AtomicUsize,
}

/// A JWKS HTTP server on 127.0.0.1: every GET gets the current document
/// (`Connection: close`, so each fetch is a new connection and one request).
pub struct JwksServer {
    pub port: u16,
    state: Arc<JwksState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Serving `body` on a free port.
    pub fn start(body: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut s = JwksServer::not_started(body);
        s.port = listener.local_addr().unwrap().port();
        s.run(listener);
        s
    }

    /// A port reserved for a server that is not running yet ([`JwksServer::restart`]
    /// starts it): connections are refused until then.
    pub fn not_started(body: &str) -> JwksServer {
        JwksServer {
            port: free_port(),
            state: Arc::new(JwksState {
                body: Mutex::new(body.to_string()),
                max_age: Mutex::new(None),
                status: Mutex::new(200),
                delay: Mutex::new(Duration::ZERO),
                count: AtomicUsize::new(0),
            }),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// `http://127.0.0.1:PORT/jwks.json`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    pub fn set_body(&self, body: &str) {
        *self.state.body.lock().unwrap() = body.to_string();
    }
    pub fn set_keys(&self, keys: &[Value]) {
        self.set_body(&jwks_doc(keys));
    }
    /// `Cache-Control: max-age=N` on the answers (`None`: no Cache-Control).
    pub fn set_max_age(&self, secs: Option<u64>) {
        *self.state.max_age.lock().unwrap() = secs;
    }
    pub fn set_status(&self, status: u16) {
        *self.state.status.lock().unwrap() = status;
    }
    /// How long each answer waits before being written.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }
    /// Requests received so far (also while stopped: those before).
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }
    pub fn running(&self) -> bool {
        self.thread.is_some()
    }

    /// Closes the listening socket (new connections are refused) and waits for the
    /// accept loop to end.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("JWKS server: bind {} failed ({e}), retrying", self.port);
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("JWKS server: cannot bind port {}: {e}", self.port),
            }
        };
        self.run(listener);
    }

    fn run(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = stop.clone();
        let state = self.state.clone();
        self.thread = Some(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        thread::spawn(move || {
                            let _ = serve_jwks(stream, &state);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            // the listener is dropped here: the port is closed
        }));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_jwks(stream: TcpStream, state: &JwksState) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let _request_line = read_line(&mut reader)?;
    let _headers = read_headers(&mut reader)?;
    state.count.fetch_add(1, Ordering::SeqCst);
    let delay = *state.delay.lock().unwrap();
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    let body = state.body.lock().unwrap().clone();
    let status = *state.status.lock().unwrap();
    let cache = match *state.max_age.lock().unwrap() {
        Some(n) => format!("Cache-Control: public, max-age={n}\r\n"),
        None => String::new(),
    };
    write!(
        writer,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{cache}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    writer.flush()
}

// ---------------------------------------------------------------------------
// a keep-alive client

/// HTTP/1.1 over one reused connection (reconnects only after the server said
/// `Connection: close` or before the first request).
pub struct KeepAlive {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
    /// Connections opened so far.
    pub connects: usize,
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.to_string(),
            conn: None,
            connects: 0,
        }
    }

    /// Sends a GET (`Host: <addr>` plus `headers`) and reads the answer.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
            self.connects += 1;
        }
        let result = self.exchange(path, headers);
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    fn exchange(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        let conn = self.conn.as_mut().unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        conn.get_mut().write_all(head.as_bytes())?;
        let status_line = read_line(conn)?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let headers = read_headers(conn)?;
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if find("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            read_chunked(conn)?
        } else if let Some(len) = find("content-length") {
            let mut b = vec![0; len.trim().parse().unwrap_or(0)];
            conn.read_exact(&mut b)?;
            b
        } else {
            close = true;
            let mut b = Vec::new();
            conn.read_to_end(&mut b)?;
            b
        };
        if close {
            self.conn = None;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

// ---------------------------------------------------------------------------
// a slow upstream

/// Answers every request 200 (`{"slow":true,"path":...}`) after `delay`.
pub struct SlowUpstream {
    pub addr: String,
    /// Requests whose head has arrived.
    pub arrived: Arc<AtomicUsize>,
    /// Requests answered.
    pub answered: Arc<AtomicUsize>,
}

impl SlowUpstream {
    pub fn start(delay: Duration) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let arrived = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (a, d) = (arrived.clone(), answered.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (a, d) = (a.clone(), d.clone());
                thread::spawn(move || {
                    let _ = serve_slow(stream, delay, &a, &d);
                });
            }
        });
        SlowUpstream {
            addr,
            arrived,
            answered,
        }
    }
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

fn serve_slow(
    stream: TcpStream,
    delay: Duration,
    arrived: &AtomicUsize,
    answered: &AtomicUsize,
) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let line = match read_line(&mut reader) {
            Ok(l) if l.is_empty() => continue,
            Ok(l) => l,
            Err(_) => return Ok(()),
        };
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let headers = read_headers(&mut reader)?;
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if let Some(len) = find("content-length") {
            let mut b = vec![0; len.trim().parse().unwrap_or(0)];
            reader.read_exact(&mut b)?;
        }
        arrived.fetch_add(1, Ordering::SeqCst);
        thread::sleep(delay);
        let body = serde_json::json!({"slow": true, "path": path}).to_string();
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        writer.flush()?;
        answered.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// TLS material and servers

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e})"));
    assert!(
        o.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA made with the `openssl` CLI, able to issue server certificates.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    ca_key: PathBuf,
    name: String,
}

impl Pki {
    /// A fresh self-signed CA (EC P-256) named `name`, in a new temp dir.
    pub fn new(name: &str) -> Pki {
        let dir = temp_dir(&format!("pki-{name}"));
        let ca = dir.join(format!("{name}-ca.pem"));
        let ca_key = dir.join(format!("{name}-ca.key"));
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                ca_key.to_str().unwrap(),
                "-out",
                ca.to_str().unwrap(),
                "-days",
                "2",
                "-subj",
                &format!("/CN=authgate test CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki {
            dir,
            ca,
            ca_key,
            name: name.to_string(),
        }
    }

    /// A server certificate for `cn` with the given subjectAltNames (e.g.
    /// `["DNS:localhost", "IP:127.0.0.1"]`), signed by this CA: (cert, key) PEM files.
    pub fn server_cert(&self, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        static N: AtomicUsize = AtomicUsize::new(1);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let stem = format!("{}-{cn}-{n}", self.name);
        let key = self.dir.join(format!("{stem}.key"));
        let csr = self.dir.join(format!("{stem}.csr"));
        let cert = self.dir.join(format!("{stem}.pem"));
        let ext = self.dir.join(format!("{stem}.ext"));
        fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                key.to_str().unwrap(),
                "-out",
                csr.to_str().unwrap(),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let serial = format!("{}", 1000 + n);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                self.ca.to_str().unwrap(),
                "-CAkey",
                self.ca_key.to_str().unwrap(),
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        (cert, key)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

const TLS_ECHO_PY: &str = r#"
import http.server, json, ssl, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = json.dumps({
            "tls_upstream": True,
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = answer
    do_POST = answer

    def log_message(self, *args):
        pass

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
srv.daemon_threads = True
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// An HTTPS echo server (python3 `http.server` + `ssl`): answers 200 with
/// `{"tls_upstream":true,"method","path","headers":{lowercased name: value}}`.
pub struct TlsEchoServer {
    pub addr: String,
    child: Child,
    dir: PathBuf,
}

impl TlsEchoServer {
    pub fn start(cert: &Path, key: &Path) -> TlsEchoServer {
        let dir = temp_dir("tls-echo");
        let script = dir.join("tls_echo.py");
        fs::write(&script, TLS_ECHO_PY).unwrap();
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(cert)
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e})"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TLS echo server did not print its port: {line:?}"));
        TlsEchoServer {
            addr: format!("127.0.0.1:{port}"),
            child,
            dir,
        }
    }
}

impl Drop for TlsEchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What `curl` reported.
#[derive(Debug)]
pub struct CurlResult {
    /// curl's exit code (0: a complete HTTP exchange).
    pub code: i32,
    /// The HTTP status (0 when there was none).
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// Runs `curl -sS --max-time 10 <args> -w '\n%{http_code}'`.
pub fn curl(args: &[&str]) -> CurlResult {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .args(["-w", "\n%{http_code}"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e})"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
    CurlResult {
        code: o.status.code().unwrap_or(-1),
        status: status.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}
