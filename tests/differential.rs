//! Differential test of the two request paths. One corpus of cases (raw
//! client request bytes, and how a scripted raw upstream answers them) runs
//! through two gateways whose configs differ only in `[server]
//! direct_path` (true: bodyless HTTP/1.1 GET/HEAD take `src/direct.rs`;
//! false: everything goes through pingora-proxy), each in front of its own
//! scripted upstream. Per case:
//!
//! 1. the upstream sees the same requests on both paths (after the
//!    normalisations listed at [`wire::NormReq`]), each with exactly one
//!    `X-Forwarded-For: 127.0.0.1` and one `X-Forwarded-Proto: http` (no
//!    trusted proxies are configured, so a client's copies never survive);
//! 2. every client gets its own response: a scripted answer names the
//!    request it answers (`X-Up-Id` and `id=` in its body, from the
//!    request's `X-Req-Id`), and after each case a follow-up request on a
//!    NEW client connection (which may take a pooled upstream connection
//!    the case left behind) must get its own answer; no stray bytes follow
//!    the last response on a case's connection; every request is answered
//!    (a pipelined one may go unanswered only after an answer that said
//!    `Connection: close`);
//! 3. nothing without a valid token reaches an authenticated route: the
//!    upstream never records a tokenless request a backend would take for
//!    `/api/...` (after percent-decoding, `;params` and dot segments) or for
//!    host `admin.local` (after case, port, userinfo and a trailing dot),
//!    never an `X-Auth-*` field (any spelling, `_` for `-`) the gateway did
//!    not set itself, and never a request-target that is neither origin-
//!    nor absolute-form (`%2f/api/x`: a backend's reading of it is anyone's
//!    guess);
//! 4. the client sees the same status (and interim statuses, and the
//!    `Content-Length` of a HEAD answer) and the same body bytes on both
//!    paths (but the upstream's `n=<count>`, which differs only when the
//!    upstream saw different requests: reported under 1). Response headers
//!    (`Date`, `Connection`, trailers, chunk sizes) legitimately differ and
//!    are not compared.
//!
//! Every mismatch is printed in a table (case, check, detail) before the
//! test fails.

mod common;
#[path = "reference/corpus.rs"]
mod corpus;
#[path = "reference/wire.rs"]
mod wire;

use corpus::{cases, Case, Kind};

use common::*;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use wire::{
    absolute, backend_host, backend_path, chunked_scan, head_end, request_end, show_bytes, Head,
    NormReq,
};

/// The subject of the valid token.
const SUBJECT: &str = "alice";
/// How long a client waits for each read of an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client listens for stray bytes after a case's last answer.
const LEFTOVER_WAIT: Duration = Duration::from_millis(60);

fn config(direct: bool, upstream: &str) -> String {
    GatewayConfig::new()
        .direct_path(direct)
        .extra(&format!(
            r#"[upstreams.app]
addrs = ["{upstream}"]
read_timeout = "1s"

[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"
leeway = "30s"

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
        ))
        .toml()
}

// ---------------------------------------------------------------------------
// the scripted upstream

/// What the upstream writes for one request.
struct Scripted {
    bytes: Vec<u8>,
    /// Written 100 ms after `bytes`.
    late: Option<Vec<u8>>,
    /// Close the connection after writing.
    close: bool,
    /// Close the connection 150 ms after writing, reading nothing more.
    idle_close: bool,
}

/// A whole response answering no request.
fn smuggled(tag: &str) -> Vec<u8> {
    let body = format!("SMUGGLED id=smuggled-{tag}\n");
    format!(
        "HTTP/1.1 200 OK\r\nX-Up-Id: smuggled-{tag}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn script(kind: Kind, head_only: bool, id: &str, target: &str, n: usize) -> Scripted {
    let body = format!("n={n} id={id} path={target}\n");
    let fields = format!("X-Up-Id: {id}\r\nX-Up-N: {n}\r\nContent-Type: text/plain\r\n");
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
        late: None,
        close: false,
        idle_close: false,
    };
    match kind {
        Kind::Length => plain(length("200 OK", !head_only)),
        Kind::ChunkedTrailers | Kind::ChunkedBareLf => {
            let trailers = kind == Kind::ChunkedTrailers;
            let mut b = format!(
                "HTTP/1.1 200 OK\r\n{fields}Transfer-Encoding: chunked\r\n{}\r\n",
                if trailers { "Trailer: X-Sum\r\n" } else { "" }
            );
            if !head_only {
                b.push_str(&if trailers {
                    chunks("\r\n", &format!("X-Sum: {n}\r\n"))
                } else {
                    chunks("\n", "")
                });
            }
            plain(b.into_bytes())
        }
        Kind::Close => {
            let mut b = format!("HTTP/1.1 200 OK\r\n{fields}\r\n");
            if !head_only {
                b.push_str(&body);
            }
            Scripted {
                bytes: b.into_bytes(),
                late: None,
                close: true,
                idle_close: false,
            }
        }
        Kind::NoContent => plain(format!("HTTP/1.1 204 No Content\r\n{fields}\r\n").into_bytes()),
        Kind::NotModified => plain(
            format!("HTTP/1.1 304 Not Modified\r\n{fields}ETag: \"e{n}\"\r\n\r\n").into_bytes(),
        ),
        Kind::EarlyHints => {
            let mut b = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec();
            b.extend(length("200 OK", !head_only));
            plain(b)
        }
        Kind::AfterEnd => {
            let mut b = length("200 OK", !head_only);
            b.extend(smuggled("after"));
            plain(b)
        }
        Kind::Late => Scripted {
            bytes: length("200 OK", !head_only),
            late: Some(smuggled("late")),
            close: false,
            idle_close: false,
        },
        Kind::IdleClose => Scripted {
            bytes: length("200 OK", !head_only),
            late: None,
            close: false,
            idle_close: true,
        },
        Kind::ClTe => {
            let mut b = format!(
                "HTTP/1.1 200 OK\r\n{fields}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if !head_only {
                b.push_str(&chunks("\r\n", ""));
            }
            plain(b.into_bytes())
        }
        Kind::NoContentWithBody => plain(length("204 No Content", true)),
        Kind::HeadWithBody => plain(length("200 OK", true)),
    }
}

/// A raw HTTP/1.1 upstream on std threads: records every request (head
/// and body) as the raw bytes it received and answers each as the current
/// [`Kind`] scripts, keeping connections open unless scripted to close.
struct Upstream {
    addr: String,
    kind: Arc<Mutex<Kind>>,
    count: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap().to_string(),
            kind: Arc::default(),
            count: Arc::default(),
            log: Arc::default(),
        };
        let (kind, count, log) = (up.kind.clone(), up.count.clone(), up.log.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (kind, count, log) = (kind.clone(), count.clone(), log.clone());
                thread::spawn(move || serve(stream, &kind, &count, &log));
            }
        });
        up
    }

    /// A new case: this script, the count from 1, an empty log.
    fn reset(&self, kind: Kind) {
        *self.kind.lock().unwrap() = kind;
        self.count.store(0, Ordering::SeqCst);
        self.log.lock().unwrap().clear();
    }

    fn log(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, kind: &Mutex<Kind>, count: &AtomicUsize, log: &Mutex<Vec<Vec<u8>>>) {
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
        let kind = if target.contains("/follow/") {
            Kind::Length
        } else {
            *kind.lock().unwrap()
        };
        let answer = script(kind, method == "HEAD", id, target, n);
        if writer.write_all(&answer.bytes).is_err() {
            return;
        }
        if let Some(late) = answer.late {
            thread::sleep(Duration::from_millis(100));
            let _ = writer.write_all(&late);
        }
        if answer.close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        if answer.idle_close {
            thread::sleep(Duration::from_millis(150));
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// the client

/// What a client got for one request.
#[derive(Clone, Debug, Default)]
struct Got {
    /// The final status (with the `Content-Length` of a HEAD answer), or
    /// why there is none: compared between the paths.
    label: String,
    /// Interim (1xx) statuses before it: compared.
    interim: Vec<u16>,
    /// Decoded body: compared.
    body: Vec<u8>,
    /// The answer's `X-Up-Id` (whose request the upstream answered).
    up_id: Option<String>,
    /// The answer said `Connection: close`, or the connection ended.
    closing: bool,
    /// The answer said `Connection: close`.
    announced_close: bool,
    /// A final status arrived.
    answered: bool,
    /// The previous answer on this connection said `Connection: close`
    /// (then the gateway may leave a pipelined request unanswered).
    after_close: bool,
}

impl Got {
    fn fail(why: &str) -> Got {
        Got {
            label: why.to_string(),
            closing: true,
            ..Got::default()
        }
    }
    fn status(&self) -> String {
        if self.interim.is_empty() {
            self.label.clone()
        } else {
            let interim: Vec<_> = self.interim.iter().map(u16::to_string).collect();
            format!("{} then {}", interim.join(","), self.label)
        }
    }
}

/// One client connection to a gateway.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        Conn {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // the gateway may answer and close before reading it all: the
        // answer is what counts
        let _ = self.s.write_all(bytes);
    }

    /// Reads more; `Err("timeout")` when nothing came in time. A reset
    /// counts as the end.
    fn more(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16384];
        match self.s.read(&mut chunk) {
            Ok(0) => self.eof = true,
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err("timeout".into())
            }
            Err(_) => self.eof = true,
        }
        Ok(())
    }

    /// Reads one response (interim ones first) to a request whose method
    /// was HEAD (`head_only`) or not.
    fn response(&mut self, head_only: bool) -> Got {
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(e) = head_end(&self.buf) {
                    break e;
                }
                if self.eof {
                    return Got::fail(if self.buf.is_empty() && interim.is_empty() {
                        "no response"
                    } else {
                        "truncated head"
                    });
                }
                if let Err(e) = self.more() {
                    return Got::fail(&e);
                }
            };
            let head = Head::parse(&self.buf[..end]);
            self.buf.drain(..end);
            let mut words = head.first.split(' ');
            let status = match (words.next(), words.next().map(str::parse::<u16>)) {
                (Some(v), Some(Ok(s))) if v.starts_with("HTTP/") => s,
                _ => return Got::fail(&format!("bad status line {:?}", head.first)),
            };
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            let close = head
                .all("connection")
                .any(|v| v.eq_ignore_ascii_case("close"));
            let mut got = Got {
                label: status.to_string(),
                interim,
                up_id: head.get("x-up-id").map(str::to_string),
                closing: close,
                announced_close: close,
                answered: true,
                ..Got::default()
            };
            if head_only {
                got.label = format!(
                    "{status} (content-length {})",
                    head.get("content-length").unwrap_or("none")
                );
            }
            if head_only || status == 204 || status == 304 {
                return got;
            }
            let outcome = if head.chunked() {
                loop {
                    let mut data = Vec::new();
                    match chunked_scan(&self.buf, &mut data) {
                        Ok(Some(end)) => {
                            self.buf.drain(..end);
                            got.body = data;
                            break Ok(());
                        }
                        Ok(None) if self.eof => break Err("truncated chunked body".into()),
                        Ok(None) => {
                            if let Err(e) = self.more() {
                                break Err(format!("{e} in chunked body"));
                            }
                        }
                        Err(e) => break Err(e),
                    }
                }
            } else if let Some(n) = head.length() {
                loop {
                    if self.buf.len() >= n {
                        got.body = self.buf.drain(..n).collect();
                        break Ok(());
                    }
                    if self.eof {
                        break Err("truncated body".into());
                    }
                    if let Err(e) = self.more() {
                        break Err(format!("{e} in body"));
                    }
                }
            } else {
                loop {
                    if self.eof {
                        got.body = std::mem::take(&mut self.buf);
                        got.closing = true;
                        break Ok(());
                    }
                    if let Err(e) = self.more() {
                        break Err(format!("{e} in close-delimited body"));
                    }
                }
            };
            if let Err(e) = outcome {
                got.label = format!("{status} ({e})");
                got.body = std::mem::take(&mut self.buf);
                got.closing = true;
            }
            got.closing |= self.eof;
            return got;
        }
    }

    /// Whatever arrives within `wait` (or up to the end) after the last
    /// expected response.
    fn leftover(&mut self, wait: Duration) -> Vec<u8> {
        let _ = self.s.set_read_timeout(Some(wait));
        let start = Instant::now();
        while !self.eof && start.elapsed() < wait {
            if self.more().is_err() {
                break;
            }
        }
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------------------
// running a case on one path

struct Side {
    name: &'static str,
    gw: Gateway,
    up: Upstream,
}

struct Outcome {
    /// Each request's id and what its client got.
    got: Vec<(String, Got)>,
    /// Bytes after the last expected response on the case's connection.
    extra: Vec<u8>,
    follow: (String, Got),
    /// Raw requests the upstream received, in order.
    upstream: Vec<Vec<u8>>,
}

fn run(side: &Side, case: &Case, token: &str) -> Outcome {
    side.up.reset(case.kind);
    let addr = &side.gw.proxy_addr;
    let requests: Vec<(String, Vec<u8>, bool)> = case
        .requests
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let id = format!("{}.{k}", case.name);
            let raw = r.replace("{tok}", token).replace("{id}", &id);
            let head_only = raw.starts_with("HEAD ");
            (id, raw.into_bytes(), head_only)
        })
        .collect();
    let mut got = Vec::new();
    let mut conn = Conn::open(addr);
    if case.pipelined {
        let all: Vec<u8> = requests.iter().flat_map(|r| r.1.clone()).collect();
        conn.send(&all);
        let mut timed_out = false;
        let mut after_close = false;
        for (id, _, head_only) in &requests {
            let mut g = if timed_out {
                Got::fail("not read (an earlier answer timed out)")
            } else {
                conn.response(*head_only)
            };
            g.after_close = after_close;
            after_close |= g.announced_close;
            timed_out |= g.label == "timeout";
            got.push((id.clone(), g));
        }
    } else {
        let mut closing = false;
        for (id, bytes, head_only) in &requests {
            if closing {
                conn = Conn::open(addr);
            }
            conn.send(bytes);
            let g = conn.response(*head_only);
            closing = g.closing || conn.eof;
            got.push((id.clone(), g));
        }
    }
    // the follow-up: at once (it may take the upstream connection the case
    // just left in the pool), or after the case's settling time
    let follow_id = format!("follow.{}", case.name);
    let follow_up = || {
        let mut follow = Conn::open(addr);
        follow.send(
            format!(
                "GET /follow/{} HTTP/1.1\r\nHost: gw.test\r\nX-Req-Id: {follow_id}\r\n\r\n",
                case.name
            )
            .as_bytes(),
        );
        (follow_id.clone(), follow.response(false))
    };
    let (extra, follow) = if case.settle.is_zero() {
        let follow = follow_up();
        (conn.leftover(LEFTOVER_WAIT), follow)
    } else {
        let extra = conn.leftover(case.settle);
        drop(conn);
        (extra, follow_up())
    };
    Outcome {
        got,
        extra,
        follow,
        upstream: side.up.log(),
    }
}

// ---------------------------------------------------------------------------
// comparing

struct Row {
    case: String,
    check: String,
    detail: String,
}

/// The checks on one path's outcome alone: (1) forwarding headers, (2)
/// own responses, (3) nothing tokenless on a protected route.
fn check_side(side: &str, case: &Case, token: &str, o: &Outcome, rows: &mut Vec<Row>) {
    let mut row = |check: &str, detail: String| {
        rows.push(Row {
            case: case.name.to_string(),
            check: format!("{check} [{side}]"),
            detail,
        })
    };
    // (2) every client its own answer
    let foreign = |id: &str, g: &Got| -> Option<String> {
        if let Some(up) = g.up_id.as_deref().filter(|up| *up != id) {
            return Some(format!("answer with X-Up-Id {up}"));
        }
        let body = String::from_utf8_lossy(&g.body);
        if let Some(other) = body
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("id="))
            .find(|other| *other != id)
        {
            return Some(format!(
                "body with id={other}: {:?}",
                show_bytes(&g.body, 80)
            ));
        }
        body.contains("SMUGGLED")
            .then(|| format!("smuggled body {:?}", show_bytes(&g.body, 80)))
    };
    for (id, g) in &o.got {
        if let Some(why) = foreign(id, g) {
            row("2 own response", format!("{id} got {why}"));
        }
        // a pipelined request after an answer that said `Connection:
        // close` may go unanswered (RFC 9112 §9.6); any other may not
        if !g.answered && !g.after_close {
            row(
                "2 unanswered",
                format!(
                    "{id}: {} (no `Connection: close` announced before)",
                    g.label
                ),
            );
        }
    }
    if !o.extra.is_empty() {
        row(
            "2 stray bytes",
            format!("after the last answer: {:?}", show_bytes(&o.extra, 80)),
        );
    }
    let (fid, f) = &o.follow;
    if let Some(why) = foreign(fid, f) {
        row("2 follow-up", format!("new client got {why}"));
    } else if f.label != "200" || !String::from_utf8_lossy(&f.body).contains(&format!("id={fid}")) {
        row(
            "2 follow-up",
            format!(
                "new client got {} {:?}, not its own answer",
                f.status(),
                show_bytes(&f.body, 80)
            ),
        );
    }
    for raw in &o.upstream {
        let end = head_end(raw).unwrap_or(raw.len());
        let head = Head::parse(&raw[..end]);
        let target = head.first.split(' ').nth(1).unwrap_or_default();
        let what = format!("{:?}", show_bytes(head.first.as_bytes(), 60));
        // (3) what a backend makes of a target that is neither origin- nor
        // absolute-form (`%2f/api/x`, `;x/api`) is anyone's guess: a
        // gateway must not forward one (RFC 9112 §3.2)
        let method = head.first.split(' ').next().unwrap_or_default();
        let odd_target = !(target.starts_with('/')
            || absolute(target).is_some()
            || (target == "*" && method == "OPTIONS"));
        if odd_target {
            row(
                "3 target",
                format!("{what} reached the upstream: neither origin- nor absolute-form"),
            );
        }
        // (1) the forwarding headers, exactly once each
        let xff: Vec<_> = head.all("x-forwarded-for").collect();
        let xfp: Vec<_> = head.all("x-forwarded-proto").collect();
        if xff != ["127.0.0.1"] || xfp != ["http"] {
            row(
                "1 forwarding",
                format!("{what}: X-Forwarded-For {xff:?}, X-Forwarded-Proto {xfp:?}"),
            );
        }
        // (3) nothing tokenless on a protected route
        let tokened = head
            .all("authorization")
            .any(|v| v == format!("Bearer {token}"));
        let path = backend_path(target);
        let hosts: Vec<String> = head
            .all("host")
            .map(str::to_string)
            .chain(absolute(target).map(|(a, _)| a.to_string()))
            .collect();
        let protected = if path.starts_with("/api/") {
            Some(format!("path {path}"))
        } else {
            hosts
                .iter()
                .find(|h| backend_host(h) == "admin.local")
                .map(|h| format!("host {h:?}"))
        };
        if let (Some(why), false, false) = (protected, tokened, odd_target) {
            row(
                "3 tokenless",
                format!("{what} reached the upstream ({why})"),
            );
        }
        // identity fields: only the gateway's own, only with the token
        for (name, value) in &head.fields {
            let n = name.to_ascii_lowercase().replace('_', "-");
            if !n.starts_with("x-auth-") {
                continue;
            }
            // (an `_` spelling is never the gateway's own)
            let own = tokened
                && match name.to_ascii_lowercase().as_str() {
                    "x-auth-subject" => value == SUBJECT,
                    "x-auth-method" => value == "jwt",
                    // the issuer's name in the config
                    "x-auth-issuer" => value == "hs",
                    _ => false,
                };
            if !own {
                row("3 identity", format!("{what} carried {name}: {value}"));
            }
        }
    }
}

/// An answer the gateway refused to complete because the upstream framed
/// its body badly (a bare-LF chunk, say). The direct path notices before
/// it has written anything and answers 502; the general path (pingora)
/// has already written the upstream's head and cuts the connection, so
/// the client sees a truncated body. Either way no complete answer
/// reaches the client and the connection ends: compared as one outcome
/// (normalisation), their statuses and bodies not compared.
fn refused(g: &Got) -> bool {
    g.closing && (g.label == "502" || g.label.contains("(truncated"))
}

/// The comparisons between the paths: (1) the upstream's requests, (4)
/// statuses and bodies.
fn compare(case: &Case, d: &Outcome, g: &Outcome, rows: &mut Vec<Row>) {
    let mut row = |check: &str, detail: String| {
        rows.push(Row {
            case: case.name.to_string(),
            check: check.to_string(),
            detail,
        })
    };
    let answers = d
        .got
        .iter()
        .zip(&g.got)
        .chain(std::iter::once((&d.follow, &g.follow)));
    for ((id, a), (_, b)) in answers {
        if refused(a) && refused(b) {
            continue;
        }
        if a.status() != b.status() {
            row(
                "4 status",
                format!("{id}: direct {} / general {}", a.status(), b.status()),
            );
        } else if uncounted(&a.body) != uncounted(&b.body) {
            row(
                "4 body",
                format!(
                    "{id}: direct {:?} / general {:?}",
                    show_bytes(&a.body, 60),
                    show_bytes(&b.body, 60)
                ),
            );
        }
    }
    let dn: Vec<NormReq> = d.upstream.iter().map(|r| NormReq::new(r)).collect();
    let gn: Vec<NormReq> = g.upstream.iter().map(|r| NormReq::new(r)).collect();
    if dn.len() != gn.len() {
        // the requests one path sent and the other did not (compared
        // pairwise, the rest would differ only by the shift)
        let missing = |x: &[NormReq], y: &[NormReq]| -> Vec<String> {
            let mut y: Vec<&NormReq> = y.iter().collect();
            x.iter()
                .filter(|r| match y.iter().position(|o| o == r) {
                    Some(i) => {
                        y.remove(i);
                        false
                    }
                    None => true,
                })
                .map(|r| r.line.clone())
                .collect()
        };
        row(
            "1 upstream",
            format!(
                "{} requests on direct, {} on general; only direct {:?} / only general {:?}",
                dn.len(),
                gn.len(),
                missing(&dn, &gn),
                missing(&gn, &dn)
            ),
        );
        return;
    }
    for (i, (a, b)) in dn.iter().zip(&gn).enumerate() {
        if a == b {
            continue;
        }
        let mut detail = format!("request {i}: ");
        if a.line != b.line {
            let _ = write!(detail, "line direct {:?} / general {:?}; ", a.line, b.line);
        }
        let (ah, bh) = (a.headers_text(), b.headers_text());
        let only = |x: &[String], y: &[String]| -> Vec<String> {
            x.iter().filter(|h| !y.contains(h)).cloned().collect()
        };
        let (only_d, only_g) = (only(&ah, &bh), only(&bh, &ah));
        if !only_d.is_empty() || !only_g.is_empty() {
            let _ = write!(detail, "only direct {only_d:?} / only general {only_g:?}; ");
        } else if ah != bh {
            let _ = write!(detail, "header order direct {ah:?} / general {bh:?}; ");
        }
        if a.body != b.body {
            let _ = write!(
                detail,
                "body direct {:?} / general {:?}",
                show_bytes(&a.body, 40),
                show_bytes(&b.body, 40)
            );
        }
        row("1 upstream", detail);
    }
}

/// A body without the upstream's `n=<count>`: a count that differs
/// because the upstream saw different requests is reported there (1).
fn uncounted(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .split(' ')
        .filter(|w| !w.starts_with("n="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_table(rows: &[Row], token: &str) {
    let w0 = rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
    let w1 = rows.iter().map(|r| r.check.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "\n{} differential mismatch(es):\n{:w0$}  {:w1$}  detail\n",
        rows.len(),
        "case",
        "check"
    );
    for r in rows {
        let detail = r.detail.replace(token, "<token>");
        let _ = writeln!(out, "{:w0$}  {:w1$}  {detail}", r.case, r.check);
    }
    show(&out);
}

#[test]
fn both_paths_agree_on_the_corpus() {
    let start = Instant::now();
    let token = hs_token(&claims("https://hs.test", SUBJECT));
    let sides: Vec<Side> = [("direct", true), ("general", false)]
        .into_iter()
        .map(|(name, direct)| {
            let up = Upstream::start();
            let gw = Gateway::start(&config(direct, &up.addr), &[HS_ENV]);
            Side { name, gw, up }
        })
        .collect();
    // DIFF_CASES=name,name runs only those; DIFF_VERBOSE=1 prints every
    // outcome with the raw upstream requests
    let only = std::env::var("DIFF_CASES").unwrap_or_default();
    let verbose = std::env::var_os("DIFF_VERBOSE").is_some();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| only.is_empty() || only.split(',').any(|n| n == c.name))
        .collect();
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for case in &cases {
        assert!(seen.insert(case.name), "case {} twice", case.name);
        let (d, g) = thread::scope(|s| {
            let d = s.spawn(|| run(&sides[0], case, &token));
            let g = s.spawn(|| run(&sides[1], case, &token));
            (d.join().unwrap(), g.join().unwrap())
        });
        if verbose {
            for (side, o) in [(sides[0].name, &d), (sides[1].name, &g)] {
                let got: Vec<String> = o.got.iter().map(|(_, g)| g.status()).collect();
                let up: Vec<String> = o.upstream.iter().map(|r| show_bytes(r, 2000)).collect();
                show(&format!(
                    "{:28} {side:8} got {got:?} follow {} extra {}\n    upstream {up:#?}",
                    case.name,
                    o.follow.1.status(),
                    o.extra.len()
                ));
            }
        }
        check_side(sides[0].name, case, &token, &d, &mut rows);
        check_side(sides[1].name, case, &token, &g, &mut rows);
        compare(case, &d, &g, &mut rows);
    }
    show(&format!(
        "differential: {} cases on both paths in {:.1} s",
        cases.len(),
        start.elapsed().as_secs_f64()
    ));
    if !rows.is_empty() {
        print_table(&rows, &token);
        let failing: std::collections::BTreeSet<&str> =
            rows.iter().map(|r| r.case.as_str()).collect();
        panic!(
            "{} mismatch(es) in {} case(s): {}",
            rows.len(),
            failing.len(),
            failing.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
}
