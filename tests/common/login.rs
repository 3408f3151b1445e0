//! Helpers for login-style routes (rate limits):
//!
//! - [`Upstream::login`]: the echo upstream of [`super::Upstream`], except that it
//!   answers 401 when the request body contains `password=wrong` (or the JSON
//!   `"password":"wrong"`), like a login endpoint refusing a bad password, and
//!   NNN for a body containing `status=NNN`.
//! - [`Upstream::start_with_status`]: the same with any status rule.
//! - [`send_raw`]: a client for hand-framed requests (chunked bodies, bodies
//!   sent in several writes with pauses between them).

use super::{bad, Upstream};
use super::{read_chunked, read_headers, read_line, RecordedRequest, Response};
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Decides the status of the upstream's answer from the request it received.
pub type StatusRule = fn(&RecordedRequest) -> u16;

/// 401 for `password=wrong` (form) or `"password":"wrong"` (JSON); the status
/// NNN for a body containing `status=NNN` (e.g. `status=403`, `status=500`);
/// else 200.
pub fn wrong_password_401(req: &RecordedRequest) -> u16 {
    let has = |needle: &[u8]| req.body.windows(needle.len()).any(|w| w == needle);
    if has(b"password=wrong") || has(br#""password":"wrong""#) {
        return 401;
    }
    let asked = req
        .body
        .windows(10)
        .find(|w| w.starts_with(b"status="))
        .and_then(|w| std::str::from_utf8(&w[7..]).ok())
        .and_then(|n| n.parse::<u16>().ok())
        .filter(|n| (200..600).contains(n));
    asked.unwrap_or(200)
}

impl Upstream {
    /// An echo upstream answering 401 for a wrong password (see [`wrong_password_401`]).
    pub fn login() -> Upstream {
        Upstream::start_with_status(wrong_password_401)
    }

    /// An echo upstream (same JSON as [`Upstream::start`]) whose status comes from `rule`.
    pub fn start_with_status(rule: StatusRule) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (h, r) = (hits.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, r) = (h.clone(), r.clone());
                thread::spawn(move || {
                    let _ = super::serve_recorded(stream, &h, &r, rule);
                });
            }
        });
        Upstream {
            addr,
            hits,
            requests,
        }
    }
}

/// Writes `parts` one after the other on one connection (flushing each and
/// sleeping `pause` between them, so the server sees separate reads), then reads
/// one response; stops writing early when the server has already answered. The
/// request is sent exactly as given: the caller frames it
/// (request line, headers, `Connection: close`, body framing). Write errors are
/// ignored (the server may answer before reading everything).
pub fn send_raw(addr: &str, parts: &[&[u8]], pause: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.set_write_timeout(Some(Duration::from_secs(15)))?;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(pause);
            // The server answered early (e.g. a 429 after the body prefix): send
            // no more, so that the answer is not lost to a reset connection.
            if answered(&stream)? {
                break;
            }
        }
        if stream.write_all(p).and_then(|_| stream.flush()).is_err() {
            break;
        }
    }
    let mut reader = BufReader::new(stream);
    // Interim 1xx answers (100 Continue) are skipped.
    let (status, headers) = loop {
        let status_line = read_line(&mut reader)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let headers = read_headers(&mut reader)?;
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body =
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
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

/// Whether the server has sent anything yet (without consuming it).
fn answered(stream: &TcpStream) -> std::io::Result<bool> {
    stream.set_nonblocking(true)?;
    let mut b = [0u8; 1];
    let r = match stream.peek(&mut b) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(_) => Ok(true),
    };
    stream.set_nonblocking(false)?;
    r
}

/// `data` as HTTP/1.1 chunks of at most `chunk` bytes each, with the final
/// zero-size chunk.
pub fn chunked(data: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / chunk.max(1) * 8 + 8);
    for c in data.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One HTTP/1.1 chunk (no terminator).
pub fn one_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}
