//! The direct path against the general path on generated requests. On
//! first use (once per process) it starts the release binary twice, with
//! `[server] direct_path = true` and `false` and otherwise the same config
//! (an HS256 issuer; routes `api` on `/api/` and `admin` on host
//! `admin.local` with JWT, `open` on `/` without), each in front of its own
//! scripted raw upstream on in-process threads. Each input is a request
//! (method, a path from fragments with encodings, `;params` and dots, Host
//! variations, headers from a dictionary with underscore spellings, an
//! optional body) and how the upstream frames its answer; it goes to both
//! gateways, followed by a request from a new client connection (which may
//! take a pooled upstream connection). Asserted:
//!
//! - the same status class on both paths;
//! - the same requests seen by the upstream (header names lowercased,
//!   headers stably sorted by name, a `Connection: keep-alive|close`
//!   dropped, an absolute-form target compared as its path with a `Host`
//!   from its authority: `NormReq` in `tests/reference/wire.rs`, shared
//!   with `tests/differential.rs`);
//! - no request without the valid token reaches the upstream for a path a
//!   backend takes for `/api/...` (percent-decoded, `;params` cut, dot
//!   segments resolved) or for host `admin.local`, no `X-Auth-*` the
//!   gateway did not set, and no request-target that is neither origin-
//!   nor absolute-form (what a backend makes of `%2f/api/x` is anyone's
//!   guess);
//! - every client gets its own answer (the upstream names the request's
//!   `X-Req-Id` in `X-Up-Id` and in the body).
//!
//! `DIFF_ORIGIN_FORM=1` makes every generated target start with `/`.
//!
//! The binary: `$AUTHGATE_BIN`, else `../target/release/authgate` from this
//! crate's directory (`cargo build --release` in the main crate first).
//! Each gateway runs under a small `sh` watchdog that stops it when this
//! process is gone. Gateway logs: `$TMPDIR/authgate-fuzz-differential-<pid>/`
//! (removed by a later process once this one is gone, unless a gateway
//! went down).
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../../tests/reference/wire.rs"]
mod wire;
use wire::{
    absolute, backend_host, backend_path, chunked_scan, head_end, request_end, Head, NormReq,
};

const SECRET: &str = "fuzz-differential-hs-secret-0123456789abcdef";
const SUBJECT: &str = "alice";
/// How long a client waits for each read of an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "get"];

/// Pieces of a request-target, concatenated.
const FRAGMENTS: &[&str] = &[
    "/api",
    "/api/",
    "/x",
    "/open",
    "/",
    "//",
    "/.",
    "/..",
    "/%2e",
    "/%2e%2e",
    "/%2E%2e",
    "/%61pi",
    "/%61pi/",
    "/%41PI",
    "/API",
    "%2f",
    "%2F",
    "%5c",
    "\\",
    ";",
    ";x",
    ";jsessionid=1",
    "?",
    "?q=1",
    "?a=/../api/",
    "#",
    "#/../api/",
    "%",
    "%zz",
    "%20",
    "~",
    "*",
    "a",
    "..",
    ".",
    "/admin",
    "%00",
    "+",
    "/%2e%2e;",
    "/..;",
];

/// Request fields (`{tok}`: a valid token).
const HEADERS: &[(&str, &str)] = &[
    ("Authorization", "Bearer {tok}"),
    ("Authorization", "Bearer not.a.token"),
    ("authorization", "bearer {tok}"),
    ("Authorization", "Basic YTpi"),
    ("Connection", "close"),
    ("Connection", "keep-alive"),
    ("Connection", "keep-alive, X-Drop"),
    ("X-Drop", "1"),
    ("Content_Length", "5"),
    ("Transfer_Encoding", "chunked"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Auth-Subject", "admin"),
    ("X_Auth_Subject", "admin"),
    ("x-auth-roles", "root"),
    ("X-AUTH-EMAIL", "a@b.test"),
    ("Host", "admin.local"),
    ("Host", "www@admin.local"),
    ("Host", "admin.local."),
    ("Accept", "*/*"),
    ("Content-Length", "0"),
    ("Expect", "100-continue"),
    ("Upgrade", "websocket"),
    ("TE", "trailers"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Cookie", "a=b"),
    ("Forwarded", "for=6.6.6.6;host=admin.local"),
    ("X-Forwarded-Host", "admin.local"),
    ("X-Original-URL", "/api/x"),
    ("If-None-Match", "\"e1\""),
];

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HostPick {
    Plain,
    Admin,
    AdminUpper,
    AdminDot,
    AdminPort,
    Userinfo,
    Empty,
    Missing,
    Duplicate,
    DuplicateAdminFirst,
}

impl HostPick {
    fn lines(self) -> &'static str {
        match self {
            HostPick::Plain => "Host: gw.test\r\n",
            HostPick::Admin => "Host: admin.local\r\n",
            HostPick::AdminUpper => "Host: ADMIN.LOCAL\r\n",
            HostPick::AdminDot => "Host: admin.local.\r\n",
            HostPick::AdminPort => "Host: admin.local:8080\r\n",
            HostPick::Userinfo => "Host: www@admin.local\r\n",
            HostPick::Empty => "Host:\r\n",
            HostPick::Missing => "",
            HostPick::Duplicate => "Host: gw.test\r\nHost: admin.local\r\n",
            HostPick::DuplicateAdminFirst => "Host: admin.local\r\nHost: gw.test\r\n",
        }
    }
}

/// How the upstream answers (the follow-up request always gets `Length`).
#[derive(Arbitrary, Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Framing {
    #[default]
    Length,
    ChunkedTrailers,
    ChunkedBareLf,
    Close,
    NoContent,
    NotModified,
    EarlyHints,
    /// Another whole response right after the answer.
    AfterEnd,
    /// `Content-Length: 3` beside `Transfer-Encoding: chunked`.
    ClTe,
    /// A 204 with a length and a body.
    NoContentWithBody,
    /// A body even for HEAD.
    HeadWithBody,
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    http10: bool,
    /// `http://<authority><path>` (`admin.local` or `gw.test`).
    absolute: Option<bool>,
    host: HostPick,
    path: Vec<u8>,
    headers: Vec<u8>,
    /// Sent with `Content-Length`, or chunked.
    body: Option<(Vec<u8>, bool)>,
    framing: Framing,
}

impl Input {
    /// The request's raw bytes (`{tok}` still in it) and whether it is a HEAD.
    fn raw(&self, id: &str) -> (Vec<u8>, bool) {
        let method = METHODS[self.method as usize % METHODS.len()];
        let mut target: String = self
            .path
            .iter()
            .take(8)
            .map(|i| FRAGMENTS[*i as usize % FRAGMENTS.len()])
            .collect();
        if target.is_empty() || (origin_form_only() && !target.starts_with('/')) {
            target.insert(0, '/');
        }
        if let Some(admin) = self.absolute {
            let authority = if admin { "admin.local" } else { "gw.test" };
            if !target.starts_with('/') {
                target.insert(0, '/');
            }
            target = format!("http://{authority}{target}");
        }
        let version = if self.http10 { "1.0" } else { "1.1" };
        let mut head = format!("{method} {target} HTTP/{version}\r\n{}", self.host.lines());
        for i in self.headers.iter().take(8) {
            let (k, v) = HEADERS[*i as usize % HEADERS.len()];
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("X-Req-Id: {id}\r\n"));
        let mut body = Vec::new();
        if let Some((b, chunked)) = &self.body {
            let b = &b[..b.len().min(64)];
            if *chunked {
                head.push_str("Transfer-Encoding: chunked\r\n");
                if !b.is_empty() {
                    body.extend(format!("{:x}\r\n", b.len()).bytes());
                    body.extend_from_slice(b);
                    body.extend(b"\r\n");
                }
                body.extend(b"0\r\n\r\n");
            } else {
                head.push_str(&format!("Content-Length: {}\r\n", b.len()));
                body.extend_from_slice(b);
            }
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend(body);
        (raw, method == "HEAD")
    }
}

/// `DIFF_ORIGIN_FORM=1`: every generated target starts with `/` (to look
/// past the gateway forwarding other targets, while it still does).
fn origin_form_only() -> bool {
    static ONLY: OnceLock<bool> = OnceLock::new();
    *ONLY.get_or_init(|| std::env::var_os("DIFF_ORIGIN_FORM").is_some_and(|v| v == "1"))
}

// ---------------------------------------------------------------------------
// the scripted upstream

struct Scripted {
    bytes: Vec<u8>,
    close: bool,
}

fn script(kind: Framing, head_only: bool, id: &str, target: &str, n: usize) -> Scripted {
    let body = format!("n={n} id={id} path={target}\n");
    let fields = format!("X-Up-Id: {id}\r\nContent-Type: text/plain\r\n");
    let length = |status: &str, with_body: bool| {
        let mut b = format!(
            "HTTP/1.1 {status}\r\n{fields}Content-Length: {}\r\n\r\n",
            body.len()
        );
        if with_body {
            b.push_str(&body);
        }
        b.into_bytes()
    };
    let chunks = |eol: &str, trailer: &str| {
        let (a, b) = body.split_at(5);
        format!(
            "{:x}{eol}{a}{eol}{:x}{eol}{b}{eol}0{eol}{trailer}{eol}",
            a.len(),
            b.len()
        )
    };
    let plain = |bytes| Scripted {
        bytes,
        close: false,
    };
    match kind {
        Framing::Length => plain(length("200 OK", !head_only)),
        Framing::ChunkedTrailers | Framing::ChunkedBareLf => {
            let mut b = format!("HTTP/1.1 200 OK\r\n{fields}Transfer-Encoding: chunked\r\n\r\n");
            if !head_only {
                b.push_str(&if kind == Framing::ChunkedTrailers {
                    chunks("\r\n", "X-Sum: 1\r\n")
                } else {
                    chunks("\n", "")
                });
            }
            plain(b.into_bytes())
        }
        Framing::Close => {
            let mut b = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
            if !head_only {
                b.push_str(&body);
            }
            Scripted {
                bytes: b.into_bytes(),
                close: true,
            }
        }
        Framing::NoContent => {
            plain(format!("HTTP/1.1 204 No Content\r\n{fields}\r\n").into_bytes())
        }
        Framing::NotModified => {
            plain(format!("HTTP/1.1 304 Not Modified\r\n{fields}\r\n").into_bytes())
        }
        Framing::EarlyHints => {
            let mut b = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
            b.extend(length("200 OK", !head_only));
            plain(b)
        }
        Framing::AfterEnd => {
            let mut b = length("200 OK", !head_only);
            let extra = "SMUGGLED id=smuggled\n";
            b.extend(
                format!(
                    "HTTP/1.1 200 OK\r\nX-Up-Id: smuggled\r\nContent-Length: {}\r\n\r\n{extra}",
                    extra.len()
                )
                .bytes(),
            );
            plain(b)
        }
        Framing::ClTe => {
            let mut b = format!(
                "HTTP/1.1 200 OK\r\n{fields}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if !head_only {
                b.push_str(&chunks("\r\n", ""));
            }
            plain(b.into_bytes())
        }
        Framing::NoContentWithBody => plain(length("204 No Content", true)),
        Framing::HeadWithBody => plain(length("200 OK", true)),
    }
}

/// Records every request (raw) and answers each as the current framing
/// scripts; connections stay open unless scripted to close.
struct Upstream {
    addr: String,
    framing: Arc<Mutex<Framing>>,
    count: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("upstream bind");
        let up = Upstream {
            addr: listener.local_addr().expect("upstream addr").to_string(),
            framing: Arc::default(),
            count: Arc::default(),
            log: Arc::default(),
        };
        let (f, c, l) = (up.framing.clone(), up.count.clone(), up.log.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (f, c, l) = (f.clone(), c.clone(), l.clone());
                thread::spawn(move || serve(stream, &f, &c, &l));
            }
        });
        up
    }

    fn reset(&self, framing: Framing) {
        *self.framing.lock().unwrap() = framing;
        self.count.store(0, Ordering::SeqCst);
        self.log.lock().unwrap().clear();
    }
}

fn serve(stream: TcpStream, f: &Mutex<Framing>, count: &AtomicUsize, log: &Mutex<Vec<Vec<u8>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut reader) = stream.try_clone() else {
        return;
    };
    let mut writer = stream;
    let mut buf = Vec::new();
    loop {
        let raw: Vec<u8> = loop {
            if let Some(end) = request_end(&buf) {
                break buf.drain(..end).collect();
            }
            let mut chunk = [0u8; 16384];
            match reader.read(&mut chunk) {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        let head = Head::parse(&raw[..head_end(&raw).unwrap_or(raw.len())]);
        log.lock().unwrap().push(raw);
        let mut line = head.first.split(' ');
        let method = line.next().unwrap_or_default();
        let target = line.next().unwrap_or_default();
        let id = head.get("x-req-id").unwrap_or("-");
        let framing = if target.contains("/follow/") {
            Framing::Length
        } else {
            *f.lock().unwrap()
        };
        let answer = script(framing, method == "HEAD", id, target, n);
        if writer.write_all(&answer.bytes).is_err() {
            return;
        }
        if answer.close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// the client

#[derive(Debug, Default)]
struct Got {
    /// The final status; `None`: no answer.
    status: Option<u16>,
    /// `X-Up-Id` of the answer.
    up_id: Option<String>,
    body: Vec<u8>,
    note: String,
}

/// Sends `bytes` on a new connection and reads one answer (interim ones
/// skipped) to a request that was a HEAD (`head_only`) or not.
fn exchange(addr: &str, bytes: &[u8], head_only: bool) -> Got {
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::write(log_dir().join("keep"), "");
            panic!(
                "gateway at {addr} is down ({e}): see {}",
                log_dir().display()
            )
        }
    };
    let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let mut eof = false;
    let mut more = |buf: &mut Vec<u8>, eof: &mut bool| -> bool {
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) => *eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => *eof = true,
        }
        true
    };
    loop {
        let end = loop {
            if let Some(e) = head_end(&buf) {
                break e;
            }
            if eof || !more(&mut buf, &mut eof) {
                return Got {
                    note: if eof { "closed" } else { "timeout" }.into(),
                    ..Got::default()
                };
            }
        };
        let head = Head::parse(&buf[..end]);
        buf.drain(..end);
        let status = head
            .first
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|_| head.first.starts_with("HTTP/"));
        let Some(status) = status else {
            return Got {
                note: format!("bad status line {:?}", head.first),
                ..Got::default()
            };
        };
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut got = Got {
            status: Some(status),
            up_id: head.get("x-up-id").map(str::to_string),
            ..Got::default()
        };
        if head_only || status == 204 || status == 304 {
            return got;
        }
        if head.chunked() {
            loop {
                let mut data = Vec::new();
                match chunked_scan(&buf, &mut data) {
                    Ok(Some(_)) => {
                        got.body = data;
                        break;
                    }
                    Ok(None) if !eof && more(&mut buf, &mut eof) => {}
                    _ => {
                        got.note = "bad or truncated chunked body".into();
                        got.body = buf;
                        break;
                    }
                }
            }
        } else if let Some(n) = head.length() {
            while buf.len() < n && !eof && more(&mut buf, &mut eof) {}
            if buf.len() < n {
                got.note = "truncated body".into();
            }
            buf.truncate(n);
            got.body = buf;
        } else {
            while !eof && more(&mut buf, &mut eof) {}
            got.body = buf;
        }
        return got;
    }
}

// ---------------------------------------------------------------------------
// the two gateways

struct Side {
    name: &'static str,
    proxy: String,
    up: Upstream,
    _watchdog: Child,
}

struct World {
    sides: [Side; 2],
    token: String,
    inputs: AtomicUsize,
}

static WORLD: OnceLock<World> = OnceLock::new();

const LOG_PREFIX: &str = "authgate-fuzz-differential-";

fn log_dir() -> PathBuf {
    std::env::temp_dir().join(format!("{LOG_PREFIX}{}", std::process::id()))
}

/// Removes the log directories of earlier processes that are gone (a
/// `-fork` run starts one per job), but those marked `keep`: a gateway
/// that went down.
fn remove_stale_logs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(LOG_PREFIX)) else {
            continue;
        };
        let gone = !Path::new("/proc").join(pid).exists();
        if gone && !e.path().join("keep").exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

fn config(direct: bool, proxy: &str, admin: &str, upstream: &str) -> String {
    format!(
        r#"[server]
listen = "{proxy}"
admin_listen = "{admin}"
threads = 1
direct_path = {direct}

[upstreams.app]
addrs = ["{upstream}"]
read_timeout = "1s"

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "FUZZ_HS_SECRET"

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "jwt"
issuers = ["hs"]

[[routes]]
name = "admin"
host = "admin.local"
path_prefix = "/"
upstream = "app"
auth = "jwt"
issuers = ["hs"]

[[routes]]
name = "open"
path_prefix = "/"
upstream = "app"
auth = "none"
"#
    )
}

/// Runs the gateway; stops it (SIGINT: at once, no draining) once this
/// process (`$2`) is gone.
const WATCHDOG: &str = r#""$0" serve --config "$1" & gw=$!
while kill -0 "$2" 2>/dev/null && kill -0 "$gw" 2>/dev/null; do sleep 0.2; done
kill -INT "$gw" 2>/dev/null
wait "$gw""#;

fn healthy(admin: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

fn start_gateway(name: &'static str, direct: bool) -> Side {
    let bin = std::env::var_os("AUTHGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/authgate")
        });
    assert!(
        bin.exists(),
        "{} not found: build it (cargo build --release) or set AUTHGATE_BIN",
        bin.display()
    );
    remove_stale_logs();
    let dir = log_dir();
    std::fs::create_dir_all(&dir).expect("log dir");
    let up = Upstream::start();
    for _attempt in 0..5 {
        let (proxy, admin) = (free_addr(), free_addr());
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config(direct, &proxy, &admin, &up.addr)).expect("config");
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(&bin)
            .arg(&cfg)
            .arg(std::process::id().to_string())
            .env("FUZZ_HS_SECRET", SECRET)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sh");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                break; // exited: a port taken meanwhile, try others
            }
            if healthy(&admin) && TcpStream::connect(&proxy).is_ok() {
                return Side {
                    name,
                    proxy,
                    up,
                    _watchdog: child,
                };
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("authgate ({name}) did not start: see {}", dir.display());
}

fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": "https://hs.test",
        "sub": SUBJECT,
        "aud": "api",
        "iat": now,
        "exp": now + 30 * 86_400,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn world() -> &'static World {
    WORLD.get_or_init(|| World {
        sides: [
            start_gateway("direct", true),
            start_gateway("general", false),
        ],
        token: token(),
        inputs: AtomicUsize::new(0),
    })
}

// ---------------------------------------------------------------------------
// comparing

/// Why a request the upstream received breaks rule 3, if it does.
fn leak(raw: &[u8], token: &str) -> Option<String> {
    let head = Head::parse(&raw[..head_end(raw).unwrap_or(raw.len())]);
    let target = head.first.split(' ').nth(1).unwrap_or_default();
    // what a backend makes of any other target (`%2f/api/x`, `;x/api`)
    // is anyone's guess: a gateway must not forward one (RFC 9112 §3.2)
    let method = head.first.split(' ').next().unwrap_or_default();
    if !(target.starts_with('/')
        || absolute(target).is_some()
        || (target == "*" && method == "OPTIONS"))
    {
        return Some(format!(
            "{:?} reached the upstream: its target is neither origin- nor absolute-form",
            head.first
        ));
    }
    let tokened = head
        .all("authorization")
        .any(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") && &v[7..] == token);
    let path = backend_path(target);
    let admin = head
        .all("host")
        .chain(absolute(target).map(|(a, _)| a))
        .any(|h| backend_host(h) == "admin.local");
    if !tokened && (path.starts_with("/api/") || admin) {
        return Some(format!("tokenless {:?} reached the upstream", head.first));
    }
    for (name, value) in &head.fields {
        if !name
            .to_ascii_lowercase()
            .replace('_', "-")
            .starts_with("x-auth-")
        {
            continue;
        }
        let own = tokened
            && match name.to_ascii_lowercase().as_str() {
                "x-auth-subject" => value == SUBJECT,
                "x-auth-method" => value == "jwt",
                "x-auth-issuer" => value == "hs",
                _ => false,
            };
        if !own {
            return Some(format!(
                "{:?} reached the upstream with {name}: {value}",
                head.first
            ));
        }
    }
    None
}

/// Why `got` is not the answer to request `id`, if it is not.
fn foreign(id: &str, got: &Got) -> Option<String> {
    if let Some(up) = got.up_id.as_deref().filter(|up| *up != id) {
        return Some(format!("an answer with X-Up-Id {up}"));
    }
    let body = String::from_utf8_lossy(&got.body);
    if let Some(other) = body
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("id="))
        .find(|other| *other != id)
    {
        return Some(format!("a body with id={other}"));
    }
    body.contains("SMUGGLED").then(|| "a smuggled body".into())
}

struct Outcome {
    got: Got,
    follow: Got,
    upstream: Vec<Vec<u8>>,
}

fn run(side: &Side, framing: Framing, raw: &[u8], head_only: bool, follow_id: &str) -> Outcome {
    side.up.reset(framing);
    let got = exchange(&side.proxy, raw, head_only);
    let follow =
        format!("GET /follow/x HTTP/1.1\r\nHost: gw.test\r\nX-Req-Id: {follow_id}\r\n\r\n");
    let follow = exchange(&side.proxy, follow.as_bytes(), false);
    Outcome {
        got,
        follow,
        upstream: side.up.log.lock().unwrap().clone(),
    }
}

fuzz_target!(|input: Input| {
    let w = world();
    let n = w.inputs.fetch_add(1, Ordering::Relaxed);
    let id = format!("fz{n}");
    let follow_id = format!("follow{n}");
    let (raw, head_only) = input.raw(&id);
    let raw = String::from_utf8_lossy(&raw)
        .replace("{tok}", &w.token)
        .into_bytes();
    let framing = input.framing;
    let [d, g] = thread::scope(|s| {
        let (raw, follow_id) = (&raw, &follow_id);
        let spawn =
            |side: &'static Side| s.spawn(move || run(side, framing, raw, head_only, follow_id));
        let (a, b) = (spawn(&w.sides[0]), spawn(&w.sides[1]));
        [a.join().unwrap(), b.join().unwrap()]
    });
    let context = || {
        format!(
            concat!(
                "request {:?}\nframing {:?}\n",
                "direct: {:?} {:?} ({}), follow-up {:?}\n",
                "general: {:?} {:?} ({}), follow-up {:?}\n",
                "upstream direct: {:#?}\nupstream general: {:#?}"
            ),
            String::from_utf8_lossy(&raw).replace(&w.token, "<token>"),
            input.framing,
            d.got.status,
            String::from_utf8_lossy(&d.got.body),
            d.got.note,
            d.follow.status,
            g.got.status,
            String::from_utf8_lossy(&g.got.body),
            g.got.note,
            g.follow.status,
            d.upstream
                .iter()
                .map(|r| String::from_utf8_lossy(r).replace(&w.token, "<token>"))
                .collect::<Vec<_>>(),
            g.upstream
                .iter()
                .map(|r| String::from_utf8_lossy(r).replace(&w.token, "<token>"))
                .collect::<Vec<_>>(),
        )
    };
    for (side, o) in [(&w.sides[0], &d), (&w.sides[1], &g)] {
        for r in &o.upstream {
            if let Some(why) = leak(r, &w.token) {
                panic!("{} path: {why}\n{}", side.name, context());
            }
        }
        if let Some(why) = foreign(&id, &o.got) {
            panic!("{} path: the client got {why}\n{}", side.name, context());
        }
        let own_follow = o.follow.status == Some(200)
            && String::from_utf8_lossy(&o.follow.body).contains(&format!("id={follow_id}"));
        let why = foreign(&follow_id, &o.follow)
            .or_else(|| (!own_follow).then(|| "no answer of its own".to_string()));
        if let Some(why) = why {
            panic!(
                "{} path: the follow-up client got {why}\n{}",
                side.name,
                context()
            );
        }
    }
    // a body the upstream framed badly: the direct path answers 502 when
    // nothing was written yet, the general path cuts the response its head
    // began; both leave the client without a complete answer
    let refused = |g: &Got| g.status == Some(502) || g.note.contains("truncated");
    let class = |g: &Got| g.status.map(|s| s / 100);
    if !(refused(&d.got) && refused(&g.got)) && class(&d.got) != class(&g.got) {
        panic!("status classes differ\n{}", context());
    }
    let norm = |o: &Outcome| {
        o.upstream
            .iter()
            .map(|r| NormReq::new(r))
            .collect::<Vec<_>>()
    };
    if norm(&d) != norm(&g) {
        panic!("the upstream saw different requests\n{}", context());
    }
});
