//! The direct path (`src/direct.rs`): bodyless GET and HEAD requests skip
//! pingora-proxy. What the upstream sends back arrives whole whatever its
//! framing (chunked, close-delimited, 204, HEAD, an interim 103); a pooled
//! upstream connection the upstream closed while idle is retried once on a
//! fresh one, and a request the upstream drops unanswered on a fresh
//! connection is a 502, sent once. Requests the direct path does not take
//! (a body, hop-by-hop headers) still arrive as before.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

fn config(upstream: &str) -> String {
    GatewayConfig::new()
        .upstream("app", &[upstream])
        .open_route("open", "/")
        .toml()
}

/// Reads one request head; `None` when the connection closed first.
fn read_head(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" && !head.is_empty() {
            return Some(head);
        }
        head.push_str(&line);
    }
}

/// An upstream that answers each request by `answer(path)`, counting
/// requests; `close_after` closes the connection after each answer (with
/// no `Connection: close`, as an upstream whose idle timeout fires).
struct Scripted {
    addr: String,
    requests: Arc<AtomicUsize>,
    conns: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(close_after: bool, answer: fn(&str) -> Option<Vec<u8>>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let (r, c) = (requests.clone(), conns.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                thread::spawn(move || {
                    let mut w = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    while let Some(head) = read_head(&mut reader) {
                        r.fetch_add(1, Ordering::SeqCst);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let Some(bytes) = answer(&path) else {
                            return; // dropped unanswered
                        };
                        let _ = w.write_all(&bytes);
                        let _ = w.flush();
                        if close_after || path == "/close" {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            requests,
            conns,
        }
    }
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn framings(path: &str) -> Option<Vec<u8>> {
    Some(match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n".to_vec(),
        "/close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
        "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        "/hints" => {
            let mut b = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
            b.extend(ok("after the hints"));
            b
        }
        _ => ok("plain"),
    })
}

#[test]
fn every_response_framing_arrives_whole() {
    let up = Scripted::start(false, framings);
    let gw = Gateway::start(&config(&up.addr), &[]);
    let r = gw.get("/chunked", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));
    let r = gw.get("/close", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "until the end"));
    let r = gw.get("/empty", &[]);
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = gw.get("/plain", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "plain"));
    let r = request(&gw.proxy_addr, "HEAD", "/plain", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    // all of these took the direct path
    assert_eq!(paths(&gw), (5.0, 0.0));
    // a HEAD answer has no body: the next request on the connection is
    // answered as a request of its own, not taken for the rest of a body
    let host = &gw.proxy_addr;
    let s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut reader = BufReader::new(s);
    write!(w, "HEAD /plain HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let head = read_head(&mut reader).expect("HEAD answered");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    write!(
        w,
        "GET /plain HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nplain"), "{rest}");
    // an interim 103 is relayed, then the answer
    let mut s = TcpStream::connect(&gw.proxy_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /hints HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let hints = all.find("HTTP/1.1 103").expect("103 relayed");
    let answer = all.find("HTTP/1.1 200").expect("200 after it");
    assert!(hints < answer, "{all}");
    assert!(all.ends_with("after the hints"), "{all}");
    assert_eq!(paths(&gw), (8.0, 0.0));
}

#[test]
fn a_pooled_connection_closed_by_the_upstream_is_retried_on_a_fresh_one() {
    // every answer ends its connection, without saying so: each pooled
    // connection is dead by the time the next request takes it
    let up = Scripted::start(true, |_| Some(ok("fresh")));
    let gw = Gateway::start(&config(&up.addr), &[]);
    for i in 0..4 {
        let r = gw.get("/x", &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "fresh"), "request {i}");
        // the upstream's close reaches the gateway's idle connection
        thread::sleep(Duration::from_millis(50));
    }
    // each request reached the upstream once, each on its own connection
    assert_eq!(up.requests(), 4);
    assert_eq!(up.conns(), 4);
    assert_eq!(paths(&gw), (4.0, 0.0));
}

#[test]
fn a_request_dropped_unanswered_on_a_fresh_connection_is_a_502_sent_once() {
    let up = Scripted::start(false, |_| None);
    let gw = Gateway::start(&config(&up.addr), &[]);
    let r = gw.get("/x", &[]);
    assert_error(&r, 502, "bad_gateway", "upstream_error");
    assert_eq!(up.requests(), 1);
    assert_eq!(up.conns(), 1);
}

/// `authgate_proxy_path_total` by path: (direct, general).
fn paths(gw: &Gateway) -> (f64, f64) {
    let m = gw.metrics();
    let n = |p| metric(&m, "authgate_proxy_path_total", &[("path", p)]).unwrap_or(0.0);
    (n("direct"), n("general"))
}

#[test]
fn requests_the_direct_path_leaves_alone_arrive_as_before() {
    let (gw, up) = Gateway::with_upstream(&config("{upstream}"), &[]);
    assert_eq!(paths(&gw), (0.0, 0.0));
    // a body
    let r = request(&gw.proxy_addr, "POST", "/form", &[], b"a=1");
    assert_eq!(r.status, 200, "{}", r.text());
    let last = up.last();
    assert_eq!(
        (last.method.as_str(), last.body.as_slice()),
        ("POST", &b"a=1"[..])
    );
    assert_eq!(paths(&gw), (0.0, 1.0));
    // a Connection header naming another header: that one is not forwarded
    let r = gw.get(
        "/nominated",
        &[("Connection", "keep-alive, X-Drop-Me"), ("X-Drop-Me", "1")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path, "/nominated");
    assert_eq!(up.last().header("x-drop-me"), None);
    assert_eq!(paths(&gw), (0.0, 2.0));
    // plain GETs, direct, with the forwarding headers
    let r = gw.get("/plain?q=1", &[("Accept", "text/plain")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let last = up.last();
    assert_eq!(last.path, "/plain?q=1");
    assert_eq!(last.header("accept").as_deref(), Some("text/plain"));
    assert_eq!(last.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(last.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(last.header("connection"), None);
    assert_eq!(paths(&gw), (1.0, 2.0));
    // a fragment in the target: the general path, where the route and the
    // upstream both see the target without it
    let r = gw.get("/frag#/../admin", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path, "/frag");
    assert_eq!(paths(&gw), (1.0, 3.0));
}

fn odd_answers(path: &str) -> Option<Vec<u8>> {
    // bodies many reads long
    let big = "x".repeat(300_000);
    match path {
        "/big" => return Some(ok(&big)),
        "/big-chunked" => {
            let mut b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..3 {
                b.extend(format!("{:x}\r\n{}\r\n", 100_000, &big[..100_000]).bytes());
            }
            b.extend(b"0\r\n\r\n");
            return Some(b);
        }
        _ => {}
    }
    let raw: &[u8] = match path {
        "/trailer" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
        "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "/old" => b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
        "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        _ => b"NOT HTTP AT ALL\r\n\r\n",
    };
    Some(raw.to_vec())
}

/// Reads from `s` until what was read ends with `end`.
fn read_through(s: &mut TcpStream, end: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end.as_bytes()) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

#[test]
fn bodies_are_relayed_as_framed_and_hop_by_hop_fields_stay_behind() {
    let up = Scripted::start(false, odd_answers);
    let gw = Gateway::start(&config(&up.addr), &[]);
    let host = gw.proxy_addr.clone();
    let mut s = TcpStream::connect(&host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // chunked with a trailer, relayed whole; the connection carries on
    write!(s, "GET /trailer HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let first = read_through(&mut s, "0\r\nX-Sum: 1\r\n\r\n");
    let (head, body) = first.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\nx-kept: yes"), "{head}");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
    assert!(!head.contains("proxy-connection"), "{head}");
    assert_eq!(head.matches("\r\nconnection:").count(), 1, "{head}");
    assert!(head.contains("\r\nconnection: keep-alive"), "{head}");
    // chunked and a length: the chunks frame it, the length is dropped
    write!(s, "GET /both HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let second = read_through(&mut s, "2\r\nok\r\n0\r\n\r\n");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        !second.to_ascii_lowercase().contains("content-length"),
        "{second}"
    );
    // an HTTP/1.0 answer: relayed as HTTP/1.1, its connection not reused
    write!(
        s,
        "GET /old HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut third = String::new();
    s.read_to_string(&mut third).unwrap();
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(third.ends_with("\r\n\r\nold!"), "{third}");
    assert!(
        third.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{third}"
    );
    // bodies many reads long, by length and chunked
    for path in ["/big", "/big-chunked"] {
        let r = gw.get(path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), 300_000, "{path}");
        assert!(r.body.iter().all(|&b| b == b'x'), "{path}");
    }
    // lengths that disagree, and a head that is no HTTP: 502, not relayed
    assert_error(
        &gw.get("/two-lengths", &[]),
        502,
        "bad_gateway",
        "upstream_error",
    );
    assert_error(
        &gw.get("/garbage", &[]),
        502,
        "bad_gateway",
        "upstream_error",
    );
    // /trailer and /both shared one upstream connection (a length beside
    // chunked ends it: RFC 9112 §6.3); /old the second (the 1.0 answer
    // ended it); /big, /big-chunked and /two-lengths the third (its bad
    // answer ended it); /garbage a fourth
    assert_eq!(up.requests(), 7);
    assert_eq!(up.conns(), 4);
    assert_eq!(paths(&gw), (7.0, 0.0));
}
