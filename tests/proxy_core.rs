//! The proxy core against upstreams and clients that misbehave on the wire.
//! Every test talks raw bytes over TCP: to the real binary as a client, and
//! from a scripted upstream ([`Raw`]) that answers with exactly the bytes a
//! test gives it.
//!
//! 1. Response-queue poisoning through the direct path's idle pool: an
//!    upstream that leaves bytes behind a response (a late or back-to-back
//!    second response, a body after a HEAD / 204 / 304 answer, bytes after a
//!    chunked end, a length beside `chunked`, an unsolicited `408` on an
//!    idle connection) must never hand one client's answer to the next.
//!    The same cases also run on the general path (pingora-proxy's pool),
//!    as `general_path_poison_*`.
//! 2. Balancing past a dead address (`max_fails`, `fail_timeout`, the
//!    `authgate_upstream_address_healthy` gauge), 502 when every address is
//!    dead, `check` refusing `max_fails = 0`.
//! 3. Host routing: absolute-form targets, a trailing dot, two `Host` lines,
//!    userinfo in `Host`, an authority that disagrees with `Host`.
//! 4. Path decoding: `%61pi` and `;params` cannot dodge a JWT prefix.
//! 5. Header names spelled with `_` (`Content_Length`, `X_Auth_Subject`, ...)
//!    never reach the upstream.
//! 6. Framing: two `Content-Length` lines are a 400; an upstream's bare-LF
//!    chunked body reaches the client re-framed with CRLF.
//!
//! Where the finding concerns routing or headers, each test runs on both the
//! direct path and the general path (`[server] direct_path = false`).

mod common;

use common::*;
use serde_json::json;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A complete second response: what a poisoned connection would hand the
/// next client.
const POISON: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nPOISON";

/// A client's bound on any one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// configs

const HS_ISSUER: &str = r#"
[issuers.hs]
issuer = "https://hs.test"
audiences = ["api"]
algorithms = ["HS256"]
secret_env = "TEST_HS_SECRET"
leeway = "30s"
"#;

/// One `[[routes]]` table on upstream `app`; `lines` are its matchers, a
/// JWT route takes the `hs` issuer.
fn route(name: &str, lines: &str, auth: &str) -> String {
    let issuers = if auth == "jwt" {
        "issuers = [\"hs\"]\n"
    } else {
        ""
    };
    format!(
        "\n[[routes]]\nname = \"{name}\"\n{lines}\nupstream = \"app\"\nauth = \"{auth}\"\n{issuers}"
    )
}

/// `[server]` with `direct_path`, upstream `app` on `addrs` (plus
/// `upstream_extra` lines), the `hs` issuer, then `routes`.
fn config(direct: bool, addrs: &[&str], upstream_extra: &str, routes: &str) -> String {
    let addrs = addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    GatewayConfig::new()
        .direct_path(direct)
        .extra(&format!(
            "[upstreams.app]
addrs = [{addrs}]
{upstream_extra}
{HS_ISSUER}{routes}"
        ))
        .toml()
}

/// Both settings of `[server] direct_path`, named for assertion messages.
const PATHS: [(bool, &str); 2] = [(true, "direct path"), (false, "general path")];

/// `authgate_proxy_path_total` by path: (direct, general).
fn path_counts(gw: &Gateway) -> (f64, f64) {
    let m = gw.metrics();
    let n = |p| metric(&m, "authgate_proxy_path_total", &[("path", p)]).unwrap_or(0.0);
    (n("direct"), n("general"))
}

fn token() -> String {
    hs_token(&hs_claims("alice", json!({})))
}

// ---------------------------------------------------------------------------
// a scripted raw upstream

/// A request as the upstream received it (header names as sent).
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// What the upstream does for one request, in order.
enum Step {
    Write(Vec<u8>),
    Pause(u64),
    /// Closes the connection (nothing more is read from it).
    Close,
}

fn write(bytes: &str) -> Step {
    Step::Write(bytes.as_bytes().to_vec())
}

/// An HTTP/1.1 upstream on std threads: reads each request (head, and a
/// body by `Content-Length` or `chunked`), records it, then plays the
/// steps its script gives for it. Connections are kept open otherwise.
struct Raw {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

type Script = Arc<dyn Fn(&Seen) -> Vec<Step> + Send + Sync>;

impl Raw {
    fn start(script: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Raw {
        Raw::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn on(
        listener: TcpListener,
        script: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static,
    ) -> Raw {
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let s = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, script) = (s.clone(), script.clone());
                thread::spawn(move || serve_raw(stream, &s, &*script));
            }
        });
        Raw { addr, seen }
    }

    /// Requests received so far.
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }
    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received no request")
    }
}

fn serve_raw(stream: TcpStream, seen: &Mutex<Vec<Seen>>, script: &dyn Fn(&Seen) -> Vec<Step>) {
    // each write goes out at once: without this, Nagle holds a second
    // small write back until the first is acknowledged (up to the 40 ms
    // delayed ACK on loopback), and "back-to-back" would mean "late"
    let _ = stream.set_nodelay(true);
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    while let Ok(req) = read_request(&mut r) {
        seen.lock().unwrap().push(req.clone());
        for step in script(&req) {
            match step {
                Step::Write(bytes) => {
                    let _ = w.write_all(&bytes);
                    let _ = w.flush();
                }
                Step::Pause(ms) => thread::sleep(Duration::from_millis(ms)),
                Step::Close => {
                    let _ = w.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        }
    }
}

fn read_request(r: &mut impl BufRead) -> io::Result<Seen> {
    let mut raw = Vec::new();
    let mut first = line(r, &mut raw)?;
    while first.is_empty() {
        first = line(r, &mut raw)?;
    }
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let headers = header_lines(r, &mut raw)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        chunked_body(r, &mut raw)?
    } else if let Some(len) = find("content-length") {
        let mut b = vec![0; len.trim().parse().unwrap_or(0)];
        r.read_exact(&mut b)?;
        b
    } else {
        Vec::new()
    };
    Ok(Seen {
        method,
        path,
        headers,
        body,
    })
}

/// `HTTP/1.1 200 OK` with `body` and its length.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The normal answer: 200 with a body naming the request's path
/// (`for:/api/x`), only the head for a HEAD.
fn own(req: &Seen) -> Vec<Step> {
    let answer = ok(&format!("for:{}", req.path));
    if req.method == "HEAD" {
        let head_end = answer.find("\r\n\r\n").unwrap() + 4;
        return vec![write(&answer[..head_end])];
    }
    vec![write(&answer)]
}

// ---------------------------------------------------------------------------
// a raw client

/// Reads one line into `raw` (kept byte for byte), returns it without its
/// line end (`\r\n` or a bare `\n`).
fn line(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<String> {
    let start = raw.len();
    if r.read_until(b'\n', raw)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(String::from_utf8_lossy(&raw[start..])
        .trim_end_matches(['\r', '\n'])
        .to_string())
}

fn header_lines(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let l = line(r, raw)?;
        if l.is_empty() {
            return Ok(headers);
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("header {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn chunked_body(r: &mut impl BufRead, raw: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size_line = line(r, raw)?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).map_err(
            |_| io::Error::new(io::ErrorKind::InvalidData, format!("chunk {size_line:?}")),
        )?;
        if size == 0 {
            while !line(r, raw)?.is_empty() {}
            return Ok(body);
        }
        let mut chunk = vec![0; size];
        r.read_exact(&mut chunk)?;
        raw.extend_from_slice(&chunk);
        body.extend_from_slice(&chunk);
        line(r, raw)?;
    }
}

/// One answer (interim 1xx ones skipped) and the raw bytes it came as.
fn read_answer(r: &mut impl BufRead, head_only: bool) -> io::Result<(Response, Vec<u8>)> {
    let mut raw = Vec::new();
    loop {
        let status_line = line(r, &mut raw)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("status {status_line:?}"),
                )
            })?;
        let headers = header_lines(r, &mut raw)?;
        if (100..200).contains(&status) {
            continue;
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if find("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            chunked_body(r, &mut raw)?
        } else if let Some(len) = find("content-length") {
            let mut b = vec![0; len.trim().parse().unwrap_or(0)];
            r.read_exact(&mut b)?;
            raw.extend_from_slice(&b);
            b
        } else {
            let mut b = Vec::new();
            r.read_to_end(&mut b)?;
            raw.extend_from_slice(&b);
            b
        };
        return Ok((
            Response {
                status,
                headers,
                body,
            },
            raw,
        ));
    }
}

/// A connection to `addr`: a writer and a buffered reader.
fn connect(addr: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    (s.try_clone().unwrap(), BufReader::new(s))
}

/// Sends `raw` (one whole request) on a new connection and reads one answer.
fn exchange(addr: &str, raw: &str) -> Response {
    let (mut w, mut r) = connect(addr);
    // the gateway may answer (and close) before reading everything
    let _ = w.write_all(raw.as_bytes());
    read_answer(&mut r, raw.starts_with("HEAD "))
        .unwrap_or_else(|e| panic!("no answer to {raw:?}: {e}"))
        .0
}

// ---------------------------------------------------------------------------
// 1. response-queue poisoning through the direct path's idle pool

/// `api` (JWT) on `/api/`, `public` (none) on `/public/`.
fn poison_config(direct: bool, upstream: &str) -> String {
    config(
        direct,
        &[upstream],
        "",
        &(route("api", "path_prefix = \"/api/\"", "jwt")
            + &route("public", "path_prefix = \"/public/\"", "none")),
    )
}

/// A response `first` with `extra` bytes behind it: in even rounds the
/// extra bytes follow 40 ms later (they reach the gateway after it has
/// relayed `first`, while the connection sits idle); in odd rounds both go
/// in one write (they arrive in the same read as `first`).
fn trailing(first: &str, extra: &str, round: usize) -> Vec<Step> {
    if round.is_multiple_of(2) {
        vec![write(first), Step::Pause(40), write(extra)]
    } else {
        vec![write(&format!("{first}{extra}"))]
    }
}

/// One upstream misbehaviour: its name (for messages), the trigger request's method, what the
/// upstream answers it with in round N, what the trigger's client gets
/// (or a 502), how many rounds, and how long the next client waits.
struct Case {
    name: &'static str,
    method: &'static str,
    misbehave: fn(usize) -> Vec<Step>,
    want: (u16, &'static str),
    rounds: usize,
    settle: Duration,
}

/// Runs `case.rounds` rounds of: a `method` request to `/public/poison<N>`
/// that the upstream answers with `misbehave(N)` (the client gets `want`,
/// or a 502, and never the poison), a pause of `settle`, then the next
/// clients: a token holder on `/api/x<N>` and a tokenless client on
/// `/public/y<N>` each get the upstream's answer for their own path (the
/// token holder's request reached the upstream: counted), a tokenless
/// `/api/z<N>` is 401 and never reaches it. Every request takes the path
/// `direct` selects.
fn assert_no_poisoning(case: Case, direct: bool) {
    let Case {
        name,
        method,
        misbehave,
        want,
        rounds,
        settle,
    } = case;
    let up = Raw::start(move |req| match req.path.strip_prefix("/public/poison") {
        Some(round) => misbehave(round.parse().unwrap()),
        None => own(req),
    });
    let gw = Gateway::start(&poison_config(direct, &up.addr), &[HS_ENV]);
    let token = token();
    let what = format!(
        "{name} on the {} path",
        if direct { "direct" } else { "general" }
    );
    for round in 0..rounds {
        let trigger = format!("/public/poison{round}");
        let r = request(&gw.proxy_addr, method, &trigger, &[], b"");
        let got = (r.status, r.text());
        assert!(
            !got.1.contains("POISON"),
            "{what}, round {round}: the trigger's client got the poison: {got:?}"
        );
        assert!(
            (got.0, got.1.as_str()) == want || got.0 == 502,
            "{what}, round {round}: {method} {trigger} got {got:?}, want {want:?} (or a 502)"
        );
        thread::sleep(settle);

        let before = up.count();
        let path = format!("/api/x{round}");
        let r = gw.get_bearer(&path, &token);
        assert_eq!(
            (r.status, r.text()),
            (200, format!("for:{path}")),
            "{what}, round {round}: the token holder's answer on {path}"
        );
        assert_eq!(
            up.count(),
            before + 1,
            "{what}, round {round}: {path} did not reach the upstream once"
        );
        assert_eq!(up.last().path, path, "{what}, round {round}");

        let path = format!("/public/y{round}");
        let r = gw.get(&path, &[]);
        assert_eq!(
            (r.status, r.text()),
            (200, format!("for:{path}")),
            "{what}, round {round}: the tokenless client's answer on {path}"
        );
        assert_eq!(up.last().path, path, "{what}, round {round}");

        let path = format!("/api/z{round}");
        let r = gw.get(&path, &[]);
        assert_eq!(r.status, 401, "{what}, round {round}: {path}: {}", r.text());
        assert!(
            !r.text().contains("POISON") && !r.text().contains("for:"),
            "{what}, round {round}: {path}: {}",
            r.text()
        );
        assert!(
            !up.paths().contains(&path),
            "{what}, round {round}: tokenless {path} reached the upstream"
        );
    }
    // all of it went through the path under test
    let (on_direct, on_general) = path_counts(&gw);
    if direct {
        assert!(on_direct >= 1.0, "{what}: nothing took the direct path");
        assert_eq!(
            on_general, 0.0,
            "{what}: some request took the general path"
        );
    } else {
        assert_eq!(on_direct, 0.0, "{what}: some request took the direct path");
    }
}

/// 1a: a second complete response written 150 ms after a normal one, on
/// the connection now idle in the pool.
fn late_second_response() -> Case {
    Case {
        name: "late_second_response",
        method: "GET",
        misbehave: |_| vec![write(&ok("ok")), Step::Pause(150), write(POISON)],
        want: (200, "ok"),
        rounds: 2,
        settle: Duration::from_millis(300),
    }
}

/// 1b: a second complete response right behind a normal one (two
/// back-to-back writes, no delay), 20 times over. The next client comes
/// 10 ms later: the second write has long landed by then, even if the
/// upstream's thread was descheduled between its two writes.
fn back_to_back_second_response() -> Case {
    Case {
        name: "back_to_back_second_response",
        method: "GET",
        misbehave: |_| vec![write(&ok("ok")), write(POISON)],
        want: (200, "ok"),
        rounds: 20,
        settle: Duration::from_millis(10),
    }
}

/// 1c: a HEAD answered with a head carrying `Content-Length: 6`, then 6
/// body bytes anyway.
fn body_after_head() -> Case {
    Case {
        name: "body_after_head",
        method: "HEAD",
        misbehave: |round| {
            trailing(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\n",
                "POISON",
                round,
            )
        },
        want: (200, ""),
        rounds: 4,
        settle: Duration::from_millis(120),
    }
}

/// 1d: a 204 followed by a body (a whole second response).
fn body_after_204() -> Case {
    Case {
        name: "body_after_204",
        method: "GET",
        misbehave: |round| trailing("HTTP/1.1 204 No Content\r\n\r\n", POISON, round),
        want: (204, ""),
        rounds: 4,
        settle: Duration::from_millis(120),
    }
}

/// 1e: a 304 followed by a body (a whole second response).
fn body_after_304() -> Case {
    Case {
        name: "body_after_304",
        method: "GET",
        misbehave: |round| trailing("HTTP/1.1 304 Not Modified\r\n\r\n", POISON, round),
        want: (304, ""),
        rounds: 4,
        settle: Duration::from_millis(120),
    }
}

/// 1f: a chunked body followed by extra bytes (a whole second response).
fn bytes_after_chunked_end() -> Case {
    Case {
        name: "bytes_after_chunked_end",
        method: "GET",
        misbehave: |round| {
            trailing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                POISON,
                round,
            )
        },
        want: (200, "ok"),
        rounds: 4,
        settle: Duration::from_millis(120),
    }
}

/// 1g: `Content-Length` and `Transfer-Encoding: chunked` together, the
/// length running past the chunked end over a second response.
fn length_beside_chunked() -> Case {
    Case {
        name: "length_beside_chunked",
        method: "GET",
        misbehave: |round| {
            let chunks = "2\r\nok\r\n0\r\n\r\n";
            let len = chunks.len() + POISON.len();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
            );
            trailing(&head, POISON, round)
        },
        want: (200, "ok"),
        rounds: 4,
        settle: Duration::from_millis(120),
    }
}

/// 1h: an unsolicited `408 Request Timeout` (`Connection: close`) written
/// on the idle connection ~100 ms after a normal response, then the
/// upstream closes it. The next client's request must reach the upstream
/// (counted in [`assert_no_poisoning`]) and get a normal 200, not the 408.
fn unsolicited_408() -> Case {
    Case {
        name: "unsolicited_408",
        method: "GET",
        misbehave: |_| {
            vec![
                write(&ok("ok")),
                Step::Pause(100),
                write("HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
                Step::Close,
            ]
        },
        want: (200, "ok"),
        rounds: 2,
        settle: Duration::from_millis(300),
    }
}

/// Finding 1a on the direct path: see [`late_second_response`].
#[test]
fn poison_a_late_second_response_stays_out_of_the_next_answer() {
    assert_no_poisoning(late_second_response(), true);
}

/// Finding 1b on the direct path: see [`back_to_back_second_response`].
#[test]
fn poison_b_back_to_back_second_response_stays_out_of_the_next_answer() {
    assert_no_poisoning(back_to_back_second_response(), true);
}

/// Finding 1c on the direct path: see [`body_after_head`].
#[test]
fn poison_c_body_after_a_head_answer_stays_out_of_the_next_answer() {
    assert_no_poisoning(body_after_head(), true);
}

/// Finding 1d on the direct path: see [`body_after_204`].
#[test]
fn poison_d_body_after_a_204_stays_out_of_the_next_answer() {
    assert_no_poisoning(body_after_204(), true);
}

/// Finding 1e on the direct path: see [`body_after_304`].
#[test]
fn poison_e_body_after_a_304_stays_out_of_the_next_answer() {
    assert_no_poisoning(body_after_304(), true);
}

/// Finding 1f on the direct path: see [`bytes_after_chunked_end`].
#[test]
fn poison_f_bytes_after_a_chunked_end_stay_out_of_the_next_answer() {
    assert_no_poisoning(bytes_after_chunked_end(), true);
}

/// Finding 1g on the direct path: see [`length_beside_chunked`].
#[test]
fn poison_g_length_beside_chunked_stays_out_of_the_next_answer() {
    assert_no_poisoning(length_beside_chunked(), true);
}

/// Finding 1h on the direct path: see [`unsolicited_408`].
#[test]
fn poison_h_unsolicited_408_on_an_idle_connection_is_not_an_answer() {
    assert_no_poisoning(unsolicited_408(), true);
}

/// Finding 1a on the general path (`direct_path = false`, pingora-proxy's
/// own upstream pool): see [`late_second_response`].
#[test]
fn general_path_poison_a_late_second_response() {
    assert_no_poisoning(late_second_response(), false);
}

/// Finding 1b on the general path: see [`back_to_back_second_response`].
#[test]
fn general_path_poison_b_back_to_back_second_response() {
    assert_no_poisoning(back_to_back_second_response(), false);
}

/// Finding 1c on the general path: see [`body_after_head`].
#[test]
fn general_path_poison_c_body_after_head() {
    assert_no_poisoning(body_after_head(), false);
}

/// Finding 1d on the general path: see [`body_after_204`].
#[test]
fn general_path_poison_d_body_after_204() {
    assert_no_poisoning(body_after_204(), false);
}

/// Finding 1e on the general path: see [`body_after_304`].
#[test]
fn general_path_poison_e_body_after_304() {
    assert_no_poisoning(body_after_304(), false);
}

/// Finding 1f on the general path: see [`bytes_after_chunked_end`].
#[test]
fn general_path_poison_f_bytes_after_chunked_end() {
    assert_no_poisoning(bytes_after_chunked_end(), false);
}

/// Finding 1g on the general path: see [`length_beside_chunked`].
#[test]
fn general_path_poison_g_length_beside_chunked() {
    assert_no_poisoning(length_beside_chunked(), false);
}

/// Finding 1h on the general path: see [`unsolicited_408`].
#[test]
fn general_path_poison_h_unsolicited_408() {
    assert_no_poisoning(unsolicited_408(), false);
}

// ---------------------------------------------------------------------------
// 2. balancing with a dead address

/// A loopback port held bound but not listening: a connect to it is
/// refused, and no other socket can take it meanwhile (a port freed by
/// `dead_addr()` can be handed to a parallel test's listener).
struct DeadPort {
    addr: String,
    socket: tokio::net::TcpSocket,
}

impl DeadPort {
    fn new() -> DeadPort {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        DeadPort { addr, socket }
    }

    /// Starts listening on the port: a scripted upstream there from now on.
    fn revive(self, script: impl Fn(&Seen) -> Vec<Step> + Send + Sync + 'static) -> Raw {
        // `listen` registers with a reactor: a throwaway runtime for it,
        // then the socket goes on as a plain blocking std listener
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async move { self.socket.listen(64)?.into_std() })
            .unwrap();
        listener.set_nonblocking(false).unwrap();
        Raw::on(listener, script)
    }
}

fn open_route() -> String {
    route("open", "path_prefix = \"/\"", "none")
}

/// `authgate_upstream_address_healthy{upstream="app",addr}`.
fn healthy(metrics: &str, addr: &str) -> Option<f64> {
    metric(
        metrics,
        "authgate_upstream_address_healthy",
        &[("upstream", "app"), ("addr", addr)],
    )
}

/// A GET and a POST to `n`, both 200 with their own answer.
fn get_and_post(gw: &Gateway, n: usize, what: &str) {
    let path = format!("/g/{n}");
    let r = gw.get(&path, &[]);
    assert_eq!(
        (r.status, r.text()),
        (200, format!("for:{path}")),
        "{what}: GET {path}"
    );
    let path = format!("/p/{n}");
    let r = request(&gw.proxy_addr, "POST", &path, &[], b"abc");
    assert_eq!(
        (r.status, r.text()),
        (200, format!("for:{path}")),
        "{what}: POST {path}"
    );
}

/// Finding 2: with `addrs = [dead, live]`, 20 GETs and 20 POSTs are all
/// 200 (a refused connect moves on to the live address) on both paths, and
/// the health gauge reports the dead address 0 and the live one 1.
#[test]
fn a_dead_address_is_skipped_and_reported_unhealthy() {
    for (direct, what) in PATHS {
        let live = Raw::start(own);
        let dead_port = DeadPort::new();
        let dead = dead_port.addr.clone();
        let gw = Gateway::start(
            &config(direct, &[&dead, &live.addr], "", &open_route()),
            &[HS_ENV],
        );
        for i in 0..20 {
            get_and_post(&gw, i, what);
        }
        assert_eq!(live.count(), 40, "{what}");
        let m = gw.metrics();
        assert_eq!(healthy(&m, &dead), Some(0.0), "{what}: dead {dead}\n{m}");
        assert_eq!(healthy(&m, &live.addr), Some(1.0), "{what}: live\n{m}");
    }
}

/// Finding 2: every address dead: a GET (and a POST) is a 502.
#[test]
fn all_addresses_dead_is_502() {
    for (direct, what) in PATHS {
        let (a, b) = (DeadPort::new(), DeadPort::new());
        let gw = Gateway::start(
            &config(direct, &[&a.addr, &b.addr], "", &open_route()),
            &[HS_ENV],
        );
        let r = gw.get("/x", &[]);
        assert_eq!(r.status, 502, "{what}: GET {}", r.text());
        let r = request(&gw.proxy_addr, "POST", "/x", &[], b"abc");
        assert_eq!(r.status, 502, "{what}: POST {}", r.text());
    }
}

/// Finding 2 (`fail_timeout = "1s"`): a dead address is out after its
/// failed connect; once something listens on it again, requests reach it
/// within a few seconds and its gauge is back to 1.
fn a_revived_address_returns(direct: bool) {
    let what = if direct {
        "direct path"
    } else {
        "general path"
    };
    let live = Raw::start(own);
    let dead_port = DeadPort::new();
    let dead = dead_port.addr.clone();
    let gw = Gateway::start(
        &config(
            direct,
            &[&dead, &live.addr],
            "max_fails = 1\nfail_timeout = \"1s\"\n",
            &open_route(),
        ),
        &[HS_ENV],
    );
    for i in 0..3 {
        get_and_post(&gw, i, what);
    }
    let m = gw.metrics();
    assert_eq!(healthy(&m, &dead), Some(0.0), "{what}: before\n{m}");
    let revived = dead_port.revive(own);
    let start = Instant::now();
    let mut n = 100;
    let back = poll_until(Duration::from_secs(4), || {
        get_and_post(&gw, n, what);
        n += 1;
        let m = gw.metrics();
        (revived.count() > 0 && healthy(&m, &dead) == Some(1.0)).then_some(())
    });
    assert!(
        back.is_some(),
        "{what}: {dead} not back after {:?}: {} requests reached it, gauge {:?}",
        start.elapsed(),
        revived.count(),
        healthy(&gw.metrics(), &dead)
    );
}

/// Finding 2: recovery after `fail_timeout`, direct path.
#[test]
fn a_revived_address_returns_after_fail_timeout_direct_path() {
    a_revived_address_returns(true);
}

/// Finding 2: recovery after `fail_timeout`, general path.
#[test]
fn a_revived_address_returns_after_fail_timeout_general_path() {
    a_revived_address_returns(false);
}

/// Finding 2: `check` accepts `max_fails = 3` / `fail_timeout = "1s"` and
/// refuses `max_fails = 0` (exit 2, the key named on stderr).
#[test]
fn check_refuses_max_fails_zero() {
    let text = |max_fails: u32| {
        let cfg = GatewayConfig::new()
            .direct_path(false)
            .upstream_with(
                "app",
                &["127.0.0.1:3000"],
                &format!("max_fails = {max_fails}\nfail_timeout = \"1s\""),
            )
            .open_route("open", "/");
        render(&cfg.toml(), "127.0.0.1:18080", "127.0.0.1:19090")
    };
    let dir = temp_dir("proxy-core-check");
    std::fs::write(dir.join("good.toml"), text(3)).unwrap();
    std::fs::write(dir.join("zero.toml"), text(0)).unwrap();
    let o = run_cli(&["check", "--config", "good.toml"], &[], &dir);
    assert_eq!(
        o.status.code(),
        Some(0),
        "max_fails = 3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run_cli(&["check", "--config", "zero.toml"], &[], &dir);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "max_fails = 0 accepted: {stderr}");
    assert!(stderr.contains("max_fails"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// 3. host routing

/// Finding 3: `admin` (JWT) on host `admin.local`, then `open` (none) for
/// every host. Without a token, no spelling of the request reaches `open`
/// for `admin.local`: absolute form without `Host` and a trailing dot are
/// 401; two `Host` lines, userinfo in `Host` and an absolute-form authority
/// that disagrees with `Host` are 400. None of those reach the upstream;
/// `Host: www.local` does (200). Both paths.
#[test]
fn host_routing_cannot_be_dodged() {
    let cases: [(&str, u16); 11] = [
        ("GET http://admin.local/x HTTP/1.0\r\n\r\n", 401),
        (
            "GET /x HTTP/1.1\r\nHost: ADMIN.local:8080\r\nConnection: close\r\n\r\n",
            401,
        ),
        (
            // pingora compares authority and Host as written: refused
            "GET http://admin.local./x HTTP/1.1\r\nHost: admin.local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: admin.local,www.local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: admin%2elocal\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: admin..local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: admin.local.\r\nConnection: close\r\n\r\n",
            401,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: www.local\r\nHost: admin.local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: www.local@admin.local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET http://admin.local/x HTTP/1.1\r\nHost: www.local\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "GET /x HTTP/1.1\r\nHost: www.local\r\nConnection: close\r\n\r\n",
            200,
        ),
    ];
    for (direct, what) in PATHS {
        let up = Raw::start(own);
        let routes = route(
            "admin",
            "host = \"admin.local\"\npath_prefix = \"/\"",
            "jwt",
        ) + &open_route();
        let gw = Gateway::start(&config(direct, &[&up.addr], "", &routes), &[HS_ENV]);
        for (raw, want) in cases {
            let before = up.count();
            let r = exchange(&gw.proxy_addr, raw);
            assert_eq!(r.status, want, "{what}: {raw:?}: {}", r.text());
            let reached = if want == 200 { 1 } else { 0 };
            assert_eq!(
                up.count() - before,
                reached,
                "{what}: {raw:?} reached the upstream {} times",
                up.count() - before
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 4. path decoding

/// Finding 4: `api` (JWT) on `/api/` and `open` (none) on `/`. Without a
/// token, `/%61pi/x` (`%61` is `a`), `/api;x/x` and `/%61pi;v=1/x` are 401
/// and never reach the upstream; `/public;v=1/x` is 200. Both paths.
#[test]
fn encoded_and_parameterised_paths_cannot_dodge_a_jwt_prefix() {
    for (direct, what) in PATHS {
        let up = Raw::start(own);
        let routes = route("api", "path_prefix = \"/api/\"", "jwt") + &open_route();
        let gw = Gateway::start(&config(direct, &[&up.addr], "", &routes), &[HS_ENV]);
        for path in ["/api/x", "/%61pi/x", "/api;x/x", "/%61pi;v=1/x"] {
            let r = gw.get(path, &[]);
            assert_eq!(r.status, 401, "{what}: {path}: {}", r.text());
        }
        assert_eq!(
            up.paths(),
            Vec::<String>::new(),
            "{what}: reached the upstream"
        );
        let r = gw.get("/public;v=1/x", &[]);
        assert_eq!(r.status, 200, "{what}: /public;v=1/x: {}", r.text());
        assert_eq!(up.count(), 1, "{what}");
    }
}

// ---------------------------------------------------------------------------
// 5. underscore spellings

const UNDERSCORED: [(&str, &str); 5] = [
    ("Content_Length", "5"),
    ("Transfer_Encoding", "chunked"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X_Forwarded_Host", "evil"),
    ("X_Auth_Subject", "admin"),
];

/// Fails when `seen` carries any of [`UNDERSCORED`]'s names in a spelling
/// with `_` (any case), or their values under the dashed names.
fn assert_no_underscored(seen: &Seen, what: &str) {
    let banned = [
        "content-length",
        "transfer-encoding",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-auth-subject",
    ];
    for (k, v) in &seen.headers {
        let dashed = k.to_ascii_lowercase().replace('_', "-");
        assert!(
            !(k.contains('_') && banned.contains(&dashed.as_str())),
            "{what}: {k}: {v} reached the upstream; headers {:?}",
            seen.headers
        );
    }
    let values = |name: &str| -> Vec<&str> {
        seen.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"], "{what}");
    assert!(values("x-forwarded-host").is_empty(), "{what}");
    assert!(values("x-auth-subject").is_empty(), "{what}");
    assert!(values("transfer-encoding").is_empty(), "{what}");
}

/// Finding 5: `Content_Length`, `Transfer_Encoding`, `X_Forwarded_For`,
/// `X_Forwarded_Host`, `X_Auth_Subject` on an auth = "none" route: a GET
/// and a POST (with a real body) both succeed, and the upstream sees none
/// of those names in any underscore spelling. Both paths.
#[test]
fn underscore_spellings_never_reach_the_upstream() {
    let extra: String = UNDERSCORED
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    for (direct, what) in PATHS {
        let up = Raw::start(own);
        let gw = Gateway::start(&config(direct, &[&up.addr], "", &open_route()), &[HS_ENV]);
        let raw = format!("GET /u/get HTTP/1.1\r\nHost: h\r\n{extra}Connection: close\r\n\r\n");
        let r = exchange(&gw.proxy_addr, &raw);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "for:/u/get"),
            "{what}: GET"
        );
        let seen = up.last();
        assert_eq!(seen.path, "/u/get");
        assert_no_underscored(&seen, &format!("{what}, GET"));
        assert!(seen.body.is_empty(), "{what}: GET body {:?}", seen.body);

        let raw = format!(
            "POST /u/post HTTP/1.1\r\nHost: h\r\n{extra}Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let r = exchange(&gw.proxy_addr, &raw);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "for:/u/post"),
            "{what}: POST"
        );
        let seen = up.last();
        assert_eq!(seen.path, "/u/post");
        assert_no_underscored(&seen, &format!("{what}, POST"));
        assert_eq!(seen.body, b"hello", "{what}: POST body");
        assert_eq!(up.count(), 2, "{what}");
    }
}

// ---------------------------------------------------------------------------
// 6. framing

/// Finding 6a: a request with two equal `Content-Length: 3` lines on the
/// general path (a POST; with `direct_path` true and false) is a 400 and
/// never reaches the upstream; the same POST with one line is a 200.
#[test]
fn two_content_length_lines_are_a_400() {
    for (direct, what) in PATHS {
        let up = Raw::start(own);
        let gw = Gateway::start(&config(direct, &[&up.addr], "", &open_route()), &[HS_ENV]);
        let r = exchange(
            &gw.proxy_addr,
            "POST /dup HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            up.paths(),
            Vec::<String>::new(),
            "{what}: reached the upstream"
        );
        let r = exchange(
            &gw.proxy_addr,
            "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        assert_eq!((r.status, r.text().as_str()), (200, "for:/one"), "{what}");
        assert_eq!(up.last().body, b"abc");
    }
}

/// Finding 6b: the upstream answers a GET with a chunked body framed by
/// bare LFs (`5\nhello\n0\n\n`). No bare LF and no complete answer
/// reach the client: both paths refuse the body, as pingora's parser
/// refuses it (the direct path with a 502 when nothing was sent yet, the
/// general path by cutting the response its head began), and close the
/// client connection; a new connection is served as usual.
#[test]
fn a_bare_lf_chunked_answer_is_refused_on_both_paths() {
    for (direct, what) in PATHS {
        let up = Raw::start(|req| {
            if req.path == "/lf" {
                vec![write(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
                )]
            } else {
                own(req)
            }
        });
        let gw = Gateway::start(&config(direct, &[&up.addr], "", &open_route()), &[HS_ENV]);
        let host = gw.proxy_addr.clone();
        let (mut w, mut r) = connect(&host);
        write!(w, "GET /lf HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        // an answer is a 502; else the head came and the body was cut
        if let Ok((first, raw)) = read_answer(&mut r, false) {
            let text = String::from_utf8_lossy(&raw).into_owned();
            assert_eq!(first.status, 502, "{what}: {text:?}");
            assert!(!text.contains("hello"), "{what}: {text:?}");
        }
        // the client connection ends after the 502
        let _ = write!(w, "GET /second HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert!(
            read_answer(&mut r, false).is_err(),
            "{what}: the connection carried on after a refused body"
        );
        let r = exchange(
            &gw.proxy_addr,
            &format!("GET /third HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!((r.status, r.text().as_str()), (200, "for:/third"), "{what}");
        let (d, g) = path_counts(&gw);
        assert_eq!((d > 0.0, g > 0.0), (direct, !direct), "{what}");
    }
}

/// Fields a backend routes on besides the request line: the URL and method
/// overrides never reach the upstream; the forwarding fields only a proxy
/// may set (`X-Forwarded-Host`, `Forwarded`, `X-Real-IP`, ...) reach it
/// only from a peer in `trusted_proxies`. Both paths.
#[test]
fn override_and_proxy_set_fields_reach_the_upstream_only_as_allowed() {
    const OVERRIDES: [(&str, &str); 5] = [
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
    ];
    const PROXY_SET: [(&str, &str); 6] = [
        ("X-Forwarded-Host", "admin.local"),
        ("X-Forwarded-Port", "8443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Server", "admin.local"),
        ("Forwarded", "host=admin.local"),
        ("X-Real-IP", "6.6.6.6"),
    ];
    let extra: String = OVERRIDES
        .iter()
        .chain(PROXY_SET.iter())
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    for trusted in [false, true] {
        for (direct, what) in PATHS {
            let up = Raw::start(own);
            let mut cfg = config(direct, &[&up.addr], "", &open_route());
            if trusted {
                cfg = cfg.replacen(
                    "threads = 1\n",
                    "threads = 1\ntrusted_proxies = [\"127.0.0.1\"]\n",
                    1,
                );
            }
            let gw = Gateway::start(&cfg, &[HS_ENV]);
            let raw = format!("GET /o/x HTTP/1.1\r\nHost: h\r\n{extra}Connection: close\r\n\r\n");
            let r = exchange(&gw.proxy_addr, &raw);
            assert_eq!(r.status, 200, "{what}, trusted {trusted}");
            let seen = up.last();
            let has = |name: &str| {
                seen.headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case(name))
            };
            for (name, _) in OVERRIDES {
                assert!(
                    !has(name),
                    "{what}, trusted {trusted}: {name} reached the upstream"
                );
            }
            for (name, _) in PROXY_SET {
                assert_eq!(
                    has(name),
                    trusted,
                    "{what}, trusted {trusted}: {name} at the upstream"
                );
            }
            let (d, g) = path_counts(&gw);
            assert_eq!((d > 0.0, g > 0.0), (direct, !direct), "{what}");
        }
    }
}
