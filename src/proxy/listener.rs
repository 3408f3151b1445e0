//! The listener: request heads under a deadline and a size cap, before
//! pingora parses them, and the choice of transport for each (direct or
//! general). pingora 0.9 times out each read of a head (60 s) but not the head
//! as a whole, and takes heads up to 1 MiB: a client trickling one byte
//! every few seconds held a connection for hours (slowloris,
//! docs/security.md F4), and a 512 KB header was forwarded to backends that
//! refuse a hundredth of it (F5). This wrapper reads each HTTP/1 head itself
//! — a fresh connection's and every keep-alive request's — within
//! `request_header_timeout` and `max_header_bytes`, answers 408 or 431
//! otherwise, and hands the bytes to pingora as an already-read prefix
//! (`set_pipelined_prefix`), so pingora parses exactly what it would have
//! read and no byte is read twice or lost.

use crate::denial::Reason;
use crate::proxy::direct::{self, Direct};
use crate::proxy::preface::Preface;
use crate::proxy::respond::refuse;
use crate::runtime::HeadLimits;
use crate::state::State;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// How long a connection may sit idle before its next request (the first
/// byte of a head), as pingora's keep-alive timeout.
const IDLE: Duration = Duration::from_secs(60);

/// A pingora HTTP app (the proxy) behind the head guard, and the direct
/// transport that plain bodyless requests take instead (`proxy::direct`).
pub struct HeadGuard<A> {
    inner: Arc<A>,
    direct: Direct,
    limits: HeadLimits,
    state: Arc<State>,
}

impl<A> HeadGuard<A> {
    /// Wraps `inner`; `limits` are bound at start-up.
    pub fn new(inner: A, direct: Direct, limits: HeadLimits, state: Arc<State>) -> Self {
        HeadGuard {
            inner: Arc::new(inner),
            direct,
            limits,
            state,
        }
    }
}

/// What reading a head gave.
#[derive(Debug)]
enum Head {
    /// The head (and whatever followed it in the same reads).
    Read(BytesMut),
    /// Closed, idle past the keep-alive time, or shutting down: nothing to say.
    Gone,
    TimedOut,
    TooLarge,
}

/// Whether `buf` (a request head and what was read after it) holds a
/// pipelined request behind a bodyless first one.
fn pipelined(buf: &[u8]) -> bool {
    let Some(end) = head_end(buf, 0) else {
        return false;
    };
    if end >= buf.len() {
        return false;
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(buf), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    !req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
    })
}

/// The end of a head in `buf` (after its blank line), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = memchr::memchr(b'\n', buf.get(i..)?) {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a plain connection said.
enum Sniffed {
    H2(Stream),
    Http1(Stream),
    Gone,
}

/// Reads a plain connection's first bytes until they either are the
/// HTTP/2 preface or cannot be (the first byte that differs), within the
/// idle time for the first byte and the head deadline for the rest, then
/// puts them back (pingora's `rewind`) for whichever protocol reads next.
/// pingora's own h2c detection waits for 24 bytes, so an HTTP/1 request
/// shorter than the preface would hang; this one decides on the first
/// byte that differs.
async fn sniff_h2c(mut stream: Stream, limits: HeadLimits, shutdown: &ShutdownWatch) -> Sniffed {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    let mut stop = shutdown.clone();
    let deadline = tokio::time::Instant::now() + IDLE;
    let mut head_deadline = None;
    let h2 = loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf.get(..n) != H2_PREFACE.get(..n) {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
        let until = head_deadline.unwrap_or(deadline);
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout_at(until, stream.read_buf(&mut buf)) => r,
            _ = stop.wait_for(|down| *down) => return Sniffed::Gone,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Sniffed::Gone,
        }
        head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + limits.timeout);
    };
    // Only a TCP stream is read here (TLS connections negotiate by ALPN).
    let Ok(mut tcp) = stream
        .into_any()
        .downcast::<pingora::protocols::l4::stream::Stream>()
    else {
        return Sniffed::Gone;
    };
    tcp.rewind(&buf);
    if h2 {
        Sniffed::H2(tcp)
    } else {
        Sniffed::Http1(tcp)
    }
}

async fn read_head(stream: &mut Stream, limits: HeadLimits, shutdown: &ShutdownWatch) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    let mut stop = shutdown.clone();
    let first = tokio::select! {
        biased;
        r = tokio::time::timeout(IDLE, stream.read_buf(&mut buf)) => r,
        _ = stop.wait_for(|down| *down) => return Head::Gone,
    };
    if !matches!(first, Ok(Ok(n)) if n > 0) {
        return Head::Gone;
    }
    let deadline = tokio::time::Instant::now() + limits.timeout;
    // a blank line can start one byte before the newest bytes
    let mut from = 0;
    loop {
        // Empty lines before a request line are allowed (RFC 9112 §2.2) and
        // are no head: they must not end the search, or a client could send
        // them and then trickle the real head past the deadline.
        let lead = buf
            .iter()
            .take_while(|&&c| c == b'\r' || c == b'\n')
            .count();
        if let Some(end) = head_end(&buf, from.max(lead)) {
            return if end > limits.max_bytes {
                Head::TooLarge
            } else {
                Head::Read(buf)
            };
        }
        if buf.len() > limits.max_bytes {
            return Head::TooLarge;
        }
        from = buf.len().saturating_sub(2);
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
        }
    }
}

impl<A: HttpServerApp> HeadGuard<A> {
    /// Keep-alive settings for a connection's next request: those the last
    /// one left, or the defaults on a fresh connection; none when shutting
    /// down.
    fn prepare(
        &self,
        session: &mut ServerSession,
        settings: Option<HttpPersistentSettings>,
        shutdown: &ShutdownWatch,
    ) {
        match settings {
            // authgate never turns pipelining on, so these carry no
            // prefix of their own
            Some(s) => s.apply_to_session(session),
            None => {
                session.set_keepalive(Some(IDLE.as_secs()));
                session.set_keepalive_reuses_remaining(
                    self.inner
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit),
                );
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
    }
}

#[async_trait]
impl<A> ServerApp for HeadGuard<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // HTTP/2: negotiated by ALPN on the TLS listener, or (`[server]
        // h2c`) sent with prior knowledge on the plain one. pingora serves
        // its streams, each through the general transport and the same
        // pipeline; the head guard is HTTP/1's (h2 has its own limits:
        // the server's h2 settings).
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream: Stream = Box::new(Preface::new(stream, self.limits.timeout));
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        if stream.get_ssl_digest().is_none() && self.state.runtime().server.h2c {
            match sniff_h2c(stream, self.limits, shutdown).await {
                Sniffed::H2(s) => {
                    let s: Stream = Box::new(Preface::new(s, self.limits.timeout));
                    return ServerApp::process_new(&self.inner, s, shutdown).await;
                }
                Sniffed::Http1(s) => stream = s,
                Sniffed::Gone => return None,
            }
        }
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            let head = match read_head(&mut stream, self.limits, shutdown).await {
                Head::Read(head) => head,
                Head::Gone => return None,
                Head::TimedOut => {
                    self.state.metrics.heads_refused("timeout");
                    refuse(stream, Reason::HeadTimeout).await;
                    return None;
                }
                Head::TooLarge => {
                    self.state.metrics.heads_refused("too_large");
                    refuse(stream, Reason::HeadTooLarge).await;
                    return None;
                }
            };
            let rt = self.state.runtime();
            let parsed = if rt.direct_transport() {
                direct::parse(head, &rt.mapped_headers)
            } else {
                Err(head)
            };
            let head = match parsed {
                Ok(request) => {
                    self.state.metrics.path_direct.inc();
                    let closing = *shutdown.borrow();
                    stream = self.direct.serve(stream, request, rt, closing).await?;
                    settings = None;
                    continue;
                }
                Err(head) => head,
            };
            drop(rt);
            self.state.metrics.path_general.inc();
            let pipelined = pipelined(&head);
            let mut session = ServerSession::new_http1(stream);
            self.prepare(&mut session, settings.take(), shutdown);
            if pipelined {
                // pingora (pipelining off) answers this request and drops
                // the ones behind it: say so (`Connection: close`), so the
                // client sends them again (RFC 9112 §9.3.2), rather than
                // promise keep-alive. No reuse left survives the
                // keep-alive the request phase sets.
                session.set_keepalive_reuses_remaining(Some(0));
            }
            session.set_pipelined_prefix(head);
            let reused = self.inner.process_new_http(session, shutdown).await?;
            let (next, next_settings) = reused.consume();
            stream = next;
            settings = next_settings;
        }
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.inner).await;
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn pipelined_requests_behind_a_bodyless_one_are_seen() {
        use super::pipelined;
        assert!(pipelined(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n"
        ));
        assert!(!pipelined(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!pipelined(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        ));
    }

    #[test]
    fn finds_the_blank_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), None);
        // resumed two bytes before the newest read
        let b = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(head_end(b, b.len() - 3), Some(b.len()));
    }

    /// The byte-at-a-time search `head_end` replaced (memchr's SIMD search
    /// must find the same end, long token lines included).
    fn reference(buf: &[u8], from: usize) -> Option<usize> {
        (from..buf.len()).find_map(|i| match (buf[i], buf.get(i + 1), buf.get(i + 2)) {
            (b'\n', Some(b'\n'), _) => Some(i + 2),
            (b'\n', Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
    }

    proptest::proptest! {
        #[test]
        fn finds_what_a_byte_scan_finds(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(b'a'..=b'z', 0..200),
                    proptest::strategy::Just(b"\r\n".to_vec()),
                    proptest::strategy::Just(b"\n".to_vec()),
                    proptest::strategy::Just(b"\r".to_vec()),
                ],
                0..40,
            ),
            from in 0usize..64,
        ) {
            let buf: Vec<u8> = parts.concat();
            let from = from.min(buf.len());
            proptest::prop_assert_eq!(head_end(&buf, from), reference(&buf, from));
        }
    }

    #[tokio::test]
    async fn leading_empty_lines_do_not_end_the_deadline() {
        use super::{read_head, Head, HeadLimits};
        use std::time::Duration;
        let limits = HeadLimits {
            timeout: Duration::from_millis(200),
            max_bytes: 4096,
        };
        let (_tx, rx) = tokio::sync::watch::channel(false);
        use tokio::io::AsyncWriteExt;
        // empty lines, then a head that never ends (the client stays
        // connected): timed out
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"\r\n\r\n\n\nGET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut stream: pingora::protocols::Stream = Box::new(server);
        assert!(matches!(
            read_head(&mut stream, limits, &rx).await,
            Head::TimedOut
        ));
        // empty lines, then a whole head: read
        let (mut client, server) = tokio::io::duplex(4096);
        client
            .write_all(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut stream: pingora::protocols::Stream = Box::new(server);
        assert!(matches!(
            read_head(&mut stream, limits, &rx).await,
            Head::Read(_)
        ));
        drop(client);
    }
}
