//! The direct path: a bodyless HTTP/1.1 GET or HEAD, the bulk of API and
//! page traffic, proxied by a short loop with its own HTTP/1 framing
//! instead of pingora-proxy's general machinery. pingora-proxy runs every
//! request through cache and module phases, a ~14 KB boxed future, two task
//! channels joining a downstream and an upstream half, header maps built,
//! cloned and serialized again on both sides, and a connection pool that
//! spawns a watcher task per released connection; on this machine that held
//! pass-through to 0.72 of nginx's `proxy_pass`, where a plain tokio loop
//! reaches 1.14 (docs/performance.md, "The direct path").
//!
//! Here the client's head is parsed once ([`parse`]); the request phase is
//! the same `Gateway` code as on the general path (`begin`,
//! `check_limits`, `authenticate`, `forward_headers`, `upstream_answered`,
//! `finish`), so authentication, header hygiene, metrics and the request
//! log are one code. The request goes upstream as the client's header lines
//! (minus `Connection`, the reserved identity headers and the forwarding
//! headers the gateway sets) with the gateway's headers appended; the
//! response comes back as the upstream's head with its hop-by-hop fields
//! replaced and its body relayed as framed (length, chunked, or to the
//! close), byte for byte.
//!
//! Only requests with nothing for the general path to do take this one: no
//! body, no framing or hop-by-hop headers beyond `Connection:
//! keep-alive|close`, no upgrade or `Expect`, HTTP/1.1, an origin-form
//! target and nothing pipelined behind them. Everything else (and any head
//! this parser has a doubt about) goes through pingora-proxy as before.

use crate::gateway::{Answer, Ctx, Gateway, HeaderSink};
use crate::identity;
use crate::ratelimit::BodyPrefix;
use crate::runtime::{Runtime, Upstream};
use bytes::{Buf, Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, OrErr, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Headers that send a request down the general path: framing, hop-by-hop
/// fields that need stripping or nominating (RFC 9110 §7.6.1), upgrades
/// and expectations.
const GENERAL_ONLY: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "expect",
];

/// Most headers in a head the direct path takes (more: the general path).
const MAX_HEADERS: usize = 64;
/// Most proxy-set forwarding fields in a head the direct path takes.
const MAX_PROXY_SET: usize = 8;
/// Most headers in an upstream response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest upstream response head, as pingora's (`MAX_HEADER_SIZE`).
const MAX_RESPONSE_HEAD: usize = 1_048_575;
/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A request head the direct path takes: the head's bytes, the request as
/// `http` parts for the gateway's phases (header values are slices of the
/// head, not copies), and where its forwardable header lines are.
pub struct Parsed {
    buf: Bytes,
    parts: Parts,
    /// Spans (name, value) in `buf` of the headers forwarded as they came.
    forward: [(u32, u32, u32, u32); MAX_HEADERS],
    forwarded: usize,
    /// Request line's method and target spans.
    method: (u32, u32),
    target: (u32, u32),
    /// The client's first `X-Forwarded-For`.
    xff: Option<(u32, u32)>,
    /// Forwarding fields only a trusted proxy may set
    /// ([`identity::is_proxy_set`]): forwarded from a trusted peer only.
    proxy_set: [(u32, u32, u32, u32); MAX_PROXY_SET],
    proxy_sets: usize,
    /// The client sent `Connection: close`.
    close: bool,
}

/// The offset of `part` (a slice of `base`) in `base`.
fn offset(base: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize) as u32
}

fn span(buf: &Bytes, (start, end): (u32, u32)) -> &[u8] {
    buf.get(start as usize..end as usize).unwrap_or_default()
}

/// Parses `head` (exactly one request head, nothing after it) for the
/// direct path, or gives it back for the general path. Any doubt gives it
/// back: the general path handles every request, this one only the plain
/// ones. The client's copies of the gateway's reserved headers (`X-Auth-*`
/// and the route-mapped ones, in any spelling) are dropped here, before
/// any phase can see them.
pub fn parse(head: BytesMut, mapped: &[HeaderName]) -> std::result::Result<Parsed, BytesMut> {
    let mut forward = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut forwarded = 0;
    let mut kept = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut n_kept = 0;
    let mut xff = None;
    let mut proxy_set = [(0u32, 0u32, 0u32, 0u32); MAX_PROXY_SET];
    let mut proxy_sets = 0;
    let mut seen_host = false;
    let mut close = false;
    let (method, target, is_head) = {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return Err(head),
        }
        let is_head = match req.method {
            Some("GET") => false,
            Some("HEAD") => true,
            _ => return Err(head),
        };
        if req.version != Some(1) {
            return Err(head);
        }
        let (Some(m), Some(path)) = (req.method, req.path) else {
            return Err(head);
        };
        if !path.starts_with('/') {
            return Err(head);
        }
        let m = offset(&head, m.as_bytes());
        let t = offset(&head, path.as_bytes());
        let method = (m, m + if is_head { 4 } else { 3 });
        let target = (t, t + path.len() as u32);
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                // nominates nothing else: removing it is the whole sanitising
                let v = h.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !v.eq_ignore_ascii_case(b"keep-alive") {
                    return Err(head);
                }
                continue;
            }
            if GENERAL_ONLY.iter().any(|g| name.eq_ignore_ascii_case(g)) {
                return Err(head);
            }
            if name.eq_ignore_ascii_case("host") {
                // a second Host, or one no route can be chosen by: the
                // general path refuses it, one answer for both paths
                let ok = std::str::from_utf8(h.value)
                    .is_ok_and(|v| crate::router::valid_authority(v.trim_matches([' ', '\t'])));
                if seen_host || !ok {
                    return Err(head);
                }
                seen_host = true;
            }
            if identity::is_reserved_name(name, mapped) {
                continue;
            }
            let n = offset(&head, name.as_bytes());
            let v = offset(&head, h.value);
            let entry = (n, n + name.len() as u32, v, v + h.value.len() as u32);
            if identity::is_proxy_set(name) {
                match proxy_set.get_mut(proxy_sets) {
                    Some(p) => *p = entry,
                    None => return Err(head),
                }
                proxy_sets += 1;
                continue;
            }
            if let Some(k) = kept.get_mut(n_kept) {
                *k = entry;
                n_kept += 1;
            }
            if name.eq_ignore_ascii_case("x-forwarded-for") {
                xff = xff.or(Some((entry.2, entry.3)));
                continue;
            }
            if name.eq_ignore_ascii_case("x-forwarded-proto") {
                continue;
            }
            if let Some(f) = forward.get_mut(forwarded) {
                *f = entry;
                forwarded += 1;
            }
        }
        (method, target, is_head)
    };
    let buf = head.freeze();
    // The target goes upstream as sent, so the route must be chosen on
    // all of it: one `http` would cut short (a `#fragment`) goes to the
    // general path.
    let pq = match http::uri::PathAndQuery::from_maybe_shared(
        buf.slice(target.0 as usize..target.1 as usize),
    ) {
        Ok(pq) if pq.as_str().len() == (target.1 - target.0) as usize => pq,
        _ => return Err(BytesMut::from(buf)),
    };
    let mut headers = http::HeaderMap::with_capacity(n_kept);
    for &(ns, ne, vs, ve) in kept.iter().take(n_kept) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(span(&buf, (ns, ne))),
            HeaderValue::from_maybe_shared(buf.slice(vs as usize..ve as usize)),
        ) else {
            return Err(BytesMut::from(buf));
        };
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = if is_head { Method::HEAD } else { Method::GET };
    parts.uri = http::Uri::from(pq);
    parts.version = http::Version::HTTP_11;
    parts.headers = headers;
    Ok(Parsed {
        buf,
        parts,
        forward,
        forwarded,
        method,
        target,
        xff,
        proxy_set,
        proxy_sets,
        close,
    })
}

/// Most idle connections kept per upstream (each address shares it).
const POOL_SIZE: usize = 128;
/// An idle upstream connection older than this is closed, not reused.
const POOL_IDLE: Duration = Duration::from_secs(55);

/// Idle keep-alive connections to one upstream's addresses. Taking and
/// putting back are a short lock, never held across an await. A pooled
/// connection is a boundary between clients: one the upstream wrote to
/// while idle (bytes after a response's end, an unsolicited `408`) or
/// closed is never handed out, since whatever waits in it would be read as
/// the next client's answer ([`idle_fit`], checked on put and on take, as
/// pingora's pool watches its idle connections). A connection that became
/// unfit in the instant between the check and the write is found on use
/// and the request retried once on a fresh one (a bodyless GET or HEAD is
/// safe to send again).
#[derive(Default)]
pub struct IdlePool {
    idle: Mutex<Vec<(SocketAddr, Stream, Instant)>>,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.idle.lock().map_or(0, |i| i.len());
        f.debug_struct("IdlePool").field("idle", &n).finish()
    }
}

/// Whether an idle connection can carry another exchange: a read would
/// wait (nothing arrived, no EOF, no error). One poll with a no-op waker,
/// so it costs a `recv` that returns `EAGAIN`; over TLS, records with no
/// application data (a session ticket) are consumed and still wait.
pub(crate) fn idle_fit(stream: &mut Stream) -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::io::AsyncRead;
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

impl IdlePool {
    /// The most recently idled connection to `addr` that is still fit
    /// ([`idle_fit`]). Entries stay in the order they were put back, so
    /// the expired ones are a prefix; unfit and expired ones are closed
    /// after the lock is released.
    fn take(&self, addr: SocketAddr) -> Option<Stream> {
        loop {
            let (found, expired) = {
                let mut idle = self.idle.lock().ok()?;
                let now = Instant::now();
                let stale = idle
                    .iter()
                    .take_while(|(_, _, since)| now.duration_since(*since) >= POOL_IDLE)
                    .count();
                let expired: Vec<_> = idle.drain(..stale).collect();
                let found = idle
                    .iter()
                    .rposition(|(a, _, _)| *a == addr)
                    .map(|i| idle.remove(i).1);
                (found, expired)
            };
            drop(expired);
            let mut stream = found?;
            if idle_fit(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for reuse, unless something already arrived on it.
    fn put(&self, addr: SocketAddr, mut stream: Stream) {
        if !idle_fit(&mut stream) {
            return;
        }
        let evicted = match self.idle.lock() {
            Ok(mut idle) => {
                let oldest = (idle.len() >= POOL_SIZE).then(|| idle.remove(0));
                idle.push((addr, stream, Instant::now()));
                oldest
            }
            Err(_) => None,
        };
        drop(evicted);
    }
}

/// The buffers of one direct request, taken from a small per-thread
/// free list and given back after it ([`Buffers::take`],
/// [`Buffers::give_back`]): no allocation per request in the steady
/// state, and none held by idle keep-alive connections.
#[derive(Default)]
pub struct Buffers {
    /// The request head sent upstream.
    req: Vec<u8>,
    /// What the upstream sent, not yet relayed.
    resp: BytesMut,
    /// What goes to the client next.
    out: Vec<u8>,
}

/// Most buffer sets a thread keeps for reuse.
const FREE_BUFFERS: usize = 32;
/// A buffer grown past this (a long head or a large response) is freed
/// rather than kept.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    static FREE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffers {
    /// A set of buffers: a free one of this thread's, or new.
    pub fn take() -> Buffers {
        FREE.with(|f| f.try_borrow_mut().ok().and_then(|mut f| f.pop()))
            .unwrap_or_default()
    }

    /// Returns `b` to this thread's free list (cleared), unless the list
    /// is full or `b` grew large.
    pub fn give_back(mut b: Buffers) {
        if b.req.capacity() > KEEP_CAPACITY
            || b.resp.capacity() > KEEP_CAPACITY
            || b.out.capacity() > KEEP_CAPACITY
        {
            return;
        }
        b.req.clear();
        b.resp.clear();
        b.out.clear();
        FREE.with(|f| {
            if let Ok(mut f) = f.try_borrow_mut() {
                if f.len() < FREE_BUFFERS {
                    f.push(b);
                }
            }
        });
    }
}

/// The direct path's parts: the gateway's phases and a connector (TCP,
/// and TLS with the upstream's trust store and name, as pingora's own).
pub struct Direct {
    pub gateway: Gateway,
    pub connector: TransportConnector,
}

/// The gateway's headers appended to a request head as lines.
struct LineSink<'a>(&'a mut Vec<u8>);

impl HeaderSink for LineSink<'_> {
    fn put(&mut self, name: &'static str, value: &HeaderValue) -> Result<()> {
        line(self.0, name.as_bytes(), value.as_bytes());
        Ok(())
    }
    fn put_text(&mut self, name: &'static str, value: &str) -> Result<()> {
        if value.bytes().any(identity::breaks_header) {
            return Error::e_explain(ErrorType::InternalError, "header value");
        }
        line(self.0, name.as_bytes(), value.as_bytes());
        Ok(())
    }
    fn put_named(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()> {
        line(self.0, name.as_str().as_bytes(), value.as_bytes());
        Ok(())
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How one exchange on an upstream connection ended.
enum Exchange {
    /// The response reached the client (`keep`: the client connection can
    /// carry the next request).
    Relayed { status: u16, keep: bool },
    /// Failed; `sent`: the status already sent to the client, if any (then
    /// the client connection is closed mid-response, there is no answer
    /// left to give).
    Failed {
        error: Box<Error>,
        sent: Option<u16>,
    },
    /// Nothing came back: a pooled connection may have been closed.
    Stale,
}

/// How an upstream response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy)]
enum Framing {
    None,
    /// This many bytes (left).
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    Close,
}

impl Framing {
    /// How many of `buf`'s bytes (what arrived next) belong to the body,
    /// and whether the body ends with them; the body's bytes as the client
    /// gets them are appended to `out`.
    fn take(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(usize, bool), &'static str> {
        let (n, done) = match self {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let n = (buf.len() as u64).min(*left);
                *left -= n;
                (n as usize, *left == 0)
            }
            Framing::Chunked(c) => {
                let used = c.advance(buf, out)?;
                return Ok((used, c.done()));
            }
            Framing::Close => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..n]);
        Ok((n, done))
    }
}

impl Direct {
    /// Serves one request parsed by [`parse`]; returns the client
    /// connection when it can carry the next request. `closing`: the
    /// server is shutting down, so this is the connection's last answer.
    pub async fn serve(
        &self,
        client: Stream,
        req: Parsed,
        rt: Arc<Runtime>,
        closing: bool,
    ) -> Option<Stream> {
        let mut bufs = Buffers::take();
        let kept = self.serve_with(client, req, rt, &mut bufs, closing).await;
        Buffers::give_back(bufs);
        kept
    }

    async fn serve_with(
        &self,
        mut client: Stream,
        req: Parsed,
        rt: Arc<Runtime>,
        bufs: &mut Buffers,
        closing: bool,
    ) -> Option<Stream> {
        let gw = &self.gateway;
        let mut ctx = Ctx::new();
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let verdict = self.admit(&req, peer, rt, &mut ctx).await;
        let keep_client = !req.close && !closing;
        let head_only = req.parts.method == Method::HEAD;
        let (status, error, keep) = match verdict {
            Err(answer) => {
                let keep = keep_client && !answer.close;
                answer_bytes(&mut bufs.out, &answer, head_only, keep);
                let sent = write_out(&mut client, &bufs.out).await.is_ok();
                (answer.status, None, keep && sent)
            }
            Ok(()) => match self
                .proxy(&mut client, &req, &mut ctx, bufs, keep_client)
                .await
            {
                Exchange::Relayed { status, keep } => (status, None, keep),
                Exchange::Failed {
                    error,
                    sent: Some(status),
                } => (status, Some(error), false),
                Exchange::Failed { error, sent: None } => {
                    let code = Gateway::error_status(&error);
                    let status = match code {
                        502 => {
                            let answer = gw.upstream_error(&mut ctx);
                            answer_bytes(&mut bufs.out, &answer, head_only, false);
                            let _ = write_out(&mut client, &bufs.out).await;
                            502
                        }
                        0 => 0,
                        code => {
                            let answer = Answer {
                                status: code,
                                headers: vec![
                                    ("Content-Length", "0".into()),
                                    ("Cache-Control", "private, no-store".into()),
                                ],
                                body: Bytes::new(),
                                close: true,
                            };
                            answer_bytes(&mut bufs.out, &answer, head_only, false);
                            let _ = write_out(&mut client, &bufs.out).await;
                            code
                        }
                    };
                    tracing::error!(
                        "Fail to proxy: {error}, status: {code}, {} {}",
                        req.parts.method,
                        req.parts.uri.path()
                    );
                    (status, Some(error), false)
                }
                Exchange::Stale => {
                    let error = Error::explain(
                        ErrorType::ConnectionClosed,
                        "upstream closed the connection before answering",
                    )
                    .into_up();
                    let answer = gw.upstream_error(&mut ctx);
                    answer_bytes(&mut bufs.out, &answer, head_only, false);
                    let _ = write_out(&mut client, &bufs.out).await;
                    tracing::error!(
                        "Fail to proxy: {error}, status: 502, {} {}",
                        req.parts.method,
                        req.parts.uri.path()
                    );
                    (502, Some(error), false)
                }
            },
        };
        gw.finish(
            req.parts.method.as_str(),
            req.parts.uri.path(),
            status,
            error.as_deref(),
            &mut ctx,
        )
        .await;
        keep.then_some(client)
    }

    /// The request phase: route, rate limits, authentication.
    async fn admit(
        &self,
        req: &Parsed,
        peer: Option<IpAddr>,
        rt: Arc<Runtime>,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Answer> {
        let gw = &self.gateway;
        gw.begin(&req.parts, span(&req.buf, req.target), peer, rt, ctx)?;
        if let Some(need_body) = ctx
            .matched()
            .filter(|r| !r.limits.is_empty())
            .map(|r| r.limits_need_body)
        {
            // a direct request has no body: keys from it see an empty one
            let empty = BodyPrefix {
                bytes: Vec::new(),
                complete: true,
            };
            let body = need_body.then_some(&empty);
            gw.check_limits(&req.parts, body, ctx).await?;
        }
        gw.authenticate(&req.parts, ctx).await
    }

    /// Connects (the next address after a failed connect, a fresh
    /// connection after a stale pooled one), sends the request and relays
    /// the response.
    async fn proxy(
        &self,
        client: &mut Stream,
        req: &Parsed,
        ctx: &mut Ctx,
        bufs: &mut Buffers,
        keep_client: bool,
    ) -> Exchange {
        let gw = &self.gateway;
        let Some((rt, index)) = ctx.upstream() else {
            let error = Error::explain(ErrorType::InternalError, "no upstream for route");
            return Exchange::Failed { error, sent: None };
        };
        let Some(upstream) = rt.upstreams.get(index) else {
            let error = Error::explain(ErrorType::InternalError, "no upstream for route");
            return Exchange::Failed { error, sent: None };
        };
        if let Err(error) = request_head(gw, req, ctx, &mut bufs.req) {
            return Exchange::Failed { error, sent: None };
        }
        let mut fresh_only = false;
        let mut last_addr = None;
        loop {
            // a stale pooled connection is retried on the same address
            let addr = match (fresh_only, last_addr) {
                (true, Some(a)) => Some(a),
                _ => upstream.pick(ctx.tried()),
            };
            let Some(addr) = addr else {
                let error = Error::explain(ErrorType::InternalError, "upstream has no address");
                return Exchange::Failed { error, sent: None };
            };
            ctx.upstream_started();
            let pooled = (!fresh_only).then(|| upstream.pool.take(addr)).flatten();
            let (stream, reused) = match pooled {
                Some(s) => (s, true),
                None => {
                    let peer = gw.peer_at(upstream, addr, ctx);
                    match self.connector.new_stream(&peer).await {
                        Ok(s) => {
                            gw.connected(ctx);
                            (s, false)
                        }
                        Err(mut e) => {
                            e.as_up();
                            if gw.connect_failed(ctx) {
                                // the next attempt: an address not yet tried
                                fresh_only = false;
                                last_addr = None;
                                continue;
                            }
                            return Exchange::Failed {
                                error: e,
                                sent: None,
                            };
                        }
                    }
                }
            };
            last_addr = Some(addr);
            let exchange = Relay {
                client: &mut *client,
                upstream: stream,
                bufs: &mut *bufs,
                head_only: req.parts.method == Method::HEAD,
                keep_client,
                read_timeout: upstream.read_timeout,
                wrote: false,
            }
            .run(gw, ctx, upstream, addr)
            .await;
            match exchange {
                // a pooled connection the upstream had closed: once more, fresh
                Exchange::Stale if reused && !fresh_only => fresh_only = true,
                other => return other,
            }
        }
    }
}

/// The head sent upstream: the request line, the client's forwardable
/// header lines as they came, the gateway's headers.
fn request_head(gw: &Gateway, req: &Parsed, ctx: &Ctx, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.extend_from_slice(span(&req.buf, req.method));
    out.push(b' ');
    out.extend_from_slice(span(&req.buf, req.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for &(ns, ne, vs, ve) in req.forward.iter().take(req.forwarded) {
        line(out, span(&req.buf, (ns, ne)), span(&req.buf, (vs, ve)));
    }
    if req.proxy_sets > 0 && Gateway::peer_trusted(ctx) {
        for &(ns, ne, vs, ve) in req.proxy_set.iter().take(req.proxy_sets) {
            line(out, span(&req.buf, (ns, ne)), span(&req.buf, (vs, ve)));
        }
    }
    let xff = req
        .xff
        .and_then(|s| std::str::from_utf8(span(&req.buf, s)).ok());
    gw.forward_headers(ctx, xff, &mut LineSink(out))?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Writes all of `bytes` to the client.
async fn write_out(client: &mut Stream, bytes: &[u8]) -> Result<()> {
    client
        .write_all(bytes)
        .await
        .or_err(ErrorType::WriteError, "writing to the client")?;
    client
        .flush()
        .await
        .or_err(ErrorType::WriteError, "flushing to the client")
}

/// An [`Answer`] as bytes in `out`, with `Date` and `Connection` as every
/// response gets them. A value with a line break (none the gateway makes)
/// is left out rather than let split the head.
fn answer_bytes(out: &mut Vec<u8>, answer: &Answer, head_only: bool, keep: bool) {
    out.clear();
    status_line(out, answer.status, None);
    for (name, value) in &answer.headers {
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        line(out, name.as_bytes(), value.as_bytes());
    }
    date_line(out);
    connection_line(out, keep);
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&answer.body);
    }
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&[u8]>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(status).as_bytes());
    out.push(b' ');
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.unwrap_or(canonical.as_bytes()));
    out.extend_from_slice(b"\r\n");
}

fn date_line(out: &mut Vec<u8>) {
    line(
        out,
        b"Date",
        pingora::protocols::http::date::get_cached_date().as_bytes(),
    );
}

fn connection_line(out: &mut Vec<u8>, keep: bool) {
    out.extend_from_slice(if keep {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
}

/// Whether a `Connection` value (a comma list) has `token`.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One request/response exchange on an upstream connection.
struct Relay<'a> {
    client: &'a mut Stream,
    upstream: Stream,
    bufs: &'a mut Buffers,
    head_only: bool,
    keep_client: bool,
    read_timeout: Duration,
    /// Some of the final response reached the client (after that, a
    /// failure can only close the connection; before it, the client gets a
    /// 502, as from the general path).
    wrote: bool,
}

/// What a response head said.
struct ResponseHead {
    status: u16,
    /// Its length in the buffer.
    len: usize,
    framing: Framing,
    /// The upstream keeps the connection open after this response, and
    /// nothing may follow the body's end: not when the body ended by rule
    /// (HEAD, 204, 304) while the head announced one, nor after a
    /// `Content-Length` beside a `Transfer-Encoding` (RFC 9112 §6.3: close
    /// after it), since an upstream that sends the announced bytes anyway
    /// would leave them for the next exchange.
    upstream_keep: bool,
    /// It has a `Date`.
    dated: bool,
}

impl Relay<'_> {
    async fn run(
        mut self,
        gw: &Gateway,
        ctx: &mut Ctx,
        upstream: &Upstream,
        addr: SocketAddr,
    ) -> Exchange {
        if self.upstream.write_all(&self.bufs.req).await.is_err()
            || self.upstream.flush().await.is_err()
        {
            return Exchange::Stale;
        }
        self.bufs.resp.clear();
        let mut received = false;
        let head = loop {
            let head = match self.parse_head() {
                Ok(Some(h)) => h,
                Ok(None) => {
                    match self.read_upstream().await {
                        Ok(0) if !received => return Exchange::Stale,
                        Ok(0) => {
                            let error = Error::explain(
                                ErrorType::ConnectionClosed,
                                "upstream closed the connection mid-head",
                            )
                            .into_up();
                            return Exchange::Failed { error, sent: None };
                        }
                        Ok(_) => received = true,
                        // nothing came back: the connection was dead (or
                        // the upstream dropped it unanswered)
                        Err(e) if !received && matches!(e.etype(), ErrorType::ReadError) => {
                            return Exchange::Stale
                        }
                        Err(error) => return Exchange::Failed { error, sent: None },
                    }
                    continue;
                }
                Err(error) => return Exchange::Failed { error, sent: None },
            };
            if (100..200).contains(&head.status) {
                if head.status == 101 {
                    let error = Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "upstream switched protocols unasked",
                    )
                    .into_up();
                    return Exchange::Failed { error, sent: None };
                }
                // 103 Early Hints and the like: relayed, then the real answer
                end_head(&mut self.bufs.out, None, true);
                if let Err(e) = write_out(self.client, &self.bufs.out).await {
                    return Exchange::Failed {
                        error: e.into_down(),
                        sent: None,
                    };
                }
                self.bufs.resp.advance(head.len);
                continue;
            }
            break head;
        };
        let status = head.status;
        let limits = gw.upstream_answered(status, ctx).await;
        let close_delimited = matches!(head.framing, Framing::Close);
        let keep = self.keep_client && !close_delimited;
        let tail = ResponseTail { limits, keep };
        end_head(&mut self.bufs.out, Some(&tail), head.dated);
        self.bufs.resp.advance(head.len);
        match self.relay_body(head.framing).await {
            Ok(clean) => {
                if clean && head.upstream_keep && !close_delimited {
                    upstream.pool.put(addr, self.upstream);
                }
                Exchange::Relayed { status, keep }
            }
            Err(error) if self.wrote => Exchange::Failed {
                error,
                sent: Some(status),
            },
            Err(error) => {
                self.bufs.out.clear();
                Exchange::Failed { error, sent: None }
            }
        }
    }

    /// Reads more of the response (with the upstream's read timeout).
    async fn read_upstream(&mut self) -> Result<usize> {
        let resp = &mut self.bufs.resp;
        if resp.capacity() - resp.len() < READ_CHUNK / 2 {
            resp.reserve(READ_CHUNK);
        }
        match pingora::time::timeout(self.read_timeout, self.upstream.read_buf(resp)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading from the upstream", e)
                .map_err(|e| e.into_up()),
            Err(_) => {
                Err(Error::explain(ErrorType::ReadTimedout, "upstream read timed out").into_up())
            }
        }
    }

    /// The response head at the start of the buffer, if it is all there;
    /// its rewrite for the client in `out`, up to the gateway's fields
    /// ([`end_head`]): HTTP/1.1, its status and reason, its fields but the
    /// hop-by-hop ones (`Connection`, `Keep-Alive`, `Proxy-Connection`)
    /// and, when a `Transfer-Encoding` frames the body, `Content-Length`.
    fn parse_head(&mut self) -> Result<Option<ResponseHead>> {
        let head_only = self.head_only;
        let Buffers { resp: buf, out, .. } = &mut *self.bufs;
        let buf = &buf[..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        let len = match config.parse_response(&mut resp, buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream response head too large",
                )
                .into_up())
            }
            Err(e) => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("upstream response head: {e}"),
                )
                .into_up())
            }
        };
        let status = resp.code.unwrap_or(0);
        let http11 = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut encoded = false;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value.trim_ascii())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|_| h.value.trim_ascii().iter().all(u8::is_ascii_digit));
                match (v, length) {
                    (Some(v), None) => length = Some(v),
                    (Some(v), Some(l)) if v == l => {}
                    _ => {
                        return Err(Error::explain(
                            ErrorType::InvalidHTTPHeader,
                            "upstream response with an invalid Content-Length",
                        )
                        .into_up())
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                // chunked must be the last coding (RFC 9112 §6.3)
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= has_token(h.value, b"close");
                keep_alive |= has_token(h.value, b"keep-alive");
            }
        }
        let by_rule = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        let announced = encoded || length.is_some_and(|l| l > 0);
        let framing = if by_rule {
            Framing::None
        } else if encoded && chunked {
            Framing::Chunked(Chunked::default())
        } else if encoded {
            Framing::Close
        } else {
            match length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        // RFC 9112 §9.3: 1.1 persists unless closed; 1.0 only when asked,
        // and never after a Transfer-Encoding (§6.1)
        let upstream_keep = !close
            && (if http11 { true } else { keep_alive && !encoded })
            && (!by_rule || !announced)
            && (!encoded || length.is_none());
        out.clear();
        status_line(out, status, resp.reason.map(str::as_bytes));
        let mut dated = false;
        for h in resp.headers.iter() {
            let n = h.name;
            if n.eq_ignore_ascii_case("connection")
                || n.eq_ignore_ascii_case("keep-alive")
                || n.eq_ignore_ascii_case("proxy-connection")
                || (encoded && n.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            dated |= n.eq_ignore_ascii_case("date");
            line(out, n.as_bytes(), h.value);
        }
        Ok(Some(ResponseHead {
            status,
            len,
            framing,
            upstream_keep,
            dated,
        }))
    }

    /// Sends the head in `out` and the body after it. `Ok(true)`: the
    /// body ended exactly where the framing said (the connection is fit
    /// for another exchange).
    async fn relay_body(&mut self, mut framing: Framing) -> Result<bool> {
        loop {
            let Buffers { resp, out, .. } = &mut *self.bufs;
            let (used, done) = framing
                .take(resp, out)
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e).into_up())?;
            resp.advance(used);
            if done {
                // anything after the end: the connection is not fit to reuse
                let clean = self.bufs.resp.is_empty();
                self.flush_out().await?;
                return Ok(clean);
            }
            // not done: all of the buffer was body
            self.flush_out().await?;
            if self.read_upstream().await? == 0 {
                return match framing {
                    Framing::Close => Ok(false),
                    _ => Err(Error::explain(
                        ErrorType::ConnectionClosed,
                        "upstream closed mid-body",
                    )
                    .into_up()),
                };
            }
        }
    }

    /// Writes what `out` holds to the client.
    async fn flush_out(&mut self) -> Result<()> {
        if !self.bufs.out.is_empty() {
            self.wrote = true;
            let r = write_out(self.client, &self.bufs.out).await;
            self.bufs.out.clear();
            r.map_err(|e| e.into_down())?;
        }
        Ok(())
    }
}

/// What the gateway adds to a final response head.
struct ResponseTail {
    /// `RateLimit-Policy` and `RateLimit`.
    limits: Option<(String, String)>,
    /// The client connection stays open.
    keep: bool,
}

/// Ends a response head [`Relay::parse_head`] began: for a final
/// response the rate-limit headers, `Date` when the upstream sent none,
/// and `Connection`; then the blank line.
fn end_head(out: &mut Vec<u8>, tail: Option<&ResponseTail>, dated: bool) {
    if let Some(tail) = tail {
        if let Some((policy, state)) = &tail.limits {
            line(out, b"RateLimit-Policy", policy.as_bytes());
            line(out, b"RateLimit", state.as_bytes());
        }
        if !dated {
            date_line(out);
        }
        connection_line(out, tail.keep);
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a chunked body at the start of `buf` ends (`Ok(None)`: not in
/// `buf`), as the relay finds it; for the fuzzer, which feeds it in
/// pieces too.
pub fn chunked_end(buf: &[u8], piece: usize) -> std::result::Result<Option<usize>, &'static str> {
    let mut c = Chunked::default();
    let mut at = 0;
    let mut out = Vec::new();
    for part in buf.chunks(piece.max(1)) {
        let used = c.advance(part, &mut out)?;
        if used > part.len() {
            return Err("advanced past its input");
        }
        at += used;
        if c.done() {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Where a chunked body (RFC 9112 §7.1) is, read byte for byte as it
/// passes through, and its framing as the client gets it: chunk
/// extensions dropped (as pingora's re-encoding does); a line end that is
/// not `CRLF` (a bare `LF` or `CR`) refused, as pingora's parser refuses
/// it, since a client or a proxy in front could frame such a body
/// otherwise than the gateway did. Chunk data and trailer fields pass
/// unchanged.
/// Why a chunked body with a bare `LF` line end is refused.
const BARE_LF: &str = "bare LF in chunked framing";

#[derive(Clone, Copy, Default)]
struct Chunked {
    state: ChunkState,
    /// The chunk size being read, or the data left in the chunk.
    n: u64,
    /// Hex digits seen in the size being read.
    digits: bool,
    /// The previous byte of a size, extension or trailer line was `CR`.
    cr: bool,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// In the hex digits of a chunk size.
    #[default]
    Size,
    /// After the size: extensions, up to the line's end.
    Ext,
    Data,
    /// The CR after a chunk's data.
    DataCr,
    /// The LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// The LF of the final empty line.
    EndLf,
    /// Inside a trailer field line.
    Trailer,
    Done,
}

impl Chunked {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Moves over `buf`, writing the body's bytes as the client gets them
    /// to `out`; how many of `buf`'s bytes belong to the body (all of
    /// them, or up to the end).
    fn advance(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<usize, &'static str> {
        let mut i = 0;
        while i < buf.len() && self.state != ChunkState::Done {
            let b = buf[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        if self.n >> 60 != 0 {
                            return Err("chunk size too large");
                        }
                        self.n = self.n * 16 + d;
                        self.digits = true;
                        out.push(b);
                    }
                    _ if !self.digits => return Err("invalid chunk size"),
                    b'\r' => {
                        self.cr = true;
                        self.state = ChunkState::Ext;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\n' => return Err(BARE_LF),
                    _ => return Err("invalid chunk size"),
                },
                ChunkState::Ext => match b {
                    b'\n' if self.cr => self.line_end(out),
                    b'\n' => return Err(BARE_LF),
                    _ if self.cr => return Err("bare CR in a chunk size line"),
                    b'\r' => self.cr = true,
                    _ => {}
                },
                ChunkState::Data => {
                    let take = (buf.len() - i).min(self.n as usize);
                    out.extend_from_slice(&buf[i..i + take]);
                    self.n -= take as u64;
                    i += take;
                    if self.n == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => return Err(BARE_LF),
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::DataLf => match b {
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.state = ChunkState::Size;
                    }
                    _ => return Err("chunk data longer than its size"),
                },
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Err(BARE_LF),
                    _ => {
                        out.push(b);
                        self.state = ChunkState::Trailer;
                    }
                },
                ChunkState::EndLf => match b {
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.state = ChunkState::Done;
                    }
                    _ => return Err("invalid end of chunked body"),
                },
                ChunkState::Trailer => match b {
                    b'\n' if !self.cr => return Err(BARE_LF),
                    b'\n' => {
                        out.extend_from_slice(b"\r\n");
                        self.cr = false;
                        self.state = ChunkState::TrailerStart;
                    }
                    _ if self.cr => return Err("bare CR in a trailer field"),
                    b'\r' => self.cr = true,
                    _ => out.push(b),
                },
                ChunkState::Done => {}
            }
            i += 1;
        }
        Ok(i)
    }

    /// The end of a chunk-size line (written `CRLF`): data follows, or the
    /// trailers.
    fn line_end(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.digits = false;
        self.cr = false;
        self.state = if self.n == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Chunked;

    fn direct(head: &[u8]) -> bool {
        super::parse(bytes::BytesMut::from(head), &[]).is_ok()
    }

    #[test]
    fn only_plain_bodyless_requests_are_direct() {
        assert!(direct(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(direct(b"HEAD /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(direct(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nAuthorization: Bearer t\r\n\r\n"
        ));
        for head in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"[..],
            b"GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            // a fragment the router would not see but the upstream would
            b"GET /open#/../admin HTTP/1.1\r\nHost: x\r\n\r\n",
            // HTTP/1.0 (keep-alive rules of its own): the general path
            b"GET /a HTTP/1.0\r\n\r\n",
            // a pipelined second request stays with the general path
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(!direct(head), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn reserved_headers_never_reach_the_phases() {
        let mapped = [http::HeaderName::from_static("x-user")];
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: admin\r\nX_Auth_Roles: root\r\nx_USER: bob\r\nAccept: */*\r\n\r\n";
        let Ok(p) = super::parse(bytes::BytesMut::from(&head[..]), &mapped) else {
            panic!("not direct");
        };
        assert!(p.parts.headers.get("x-auth-subject").is_none());
        assert!(p.parts.headers.get("x_auth_roles").is_none());
        assert_eq!(p.parts.headers.len(), 2);
        assert_eq!(p.forwarded, 2);
    }

    /// Feeds `body` in pieces of every size; the end must be found at the
    /// same byte each time.
    fn end_of(body: &[u8]) -> Result<usize, &'static str> {
        let mut first = None;
        for step in 1..=body.len().max(1) {
            let mut c = Chunked::default();
            let mut at = 0;
            while at < body.len() && !c.done() {
                let piece = &body[at..(at + step).min(body.len())];
                at += c.advance(piece, &mut Vec::new())?;
            }
            let end = if c.done() { at } else { usize::MAX };
            match first {
                None => first = Some(end),
                Some(f) => assert_eq!(f, end, "step {step}"),
            }
        }
        Ok(first.unwrap_or(usize::MAX))
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        let b = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        assert_eq!(end_of(b), Ok(b.len() - 4));
        let t = b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        assert_eq!(end_of(t), Ok(t.len() - 4));
        let unfinished = b"5\r\nhello\r\n0\r\n";
        assert_eq!(end_of(unfinished), Ok(usize::MAX));
        assert!(end_of(b"5\r\nhello!!\r\n0\r\n\r\n").is_err());
        assert!(end_of(b"zz\r\n").is_err());
        assert!(end_of(b"fffffffffffffffff\r\n").is_err());
    }

    /// Chunk extensions are dropped, data and trailers pass unchanged, in
    /// any split of the bytes; a line end other than CRLF is refused.
    #[test]
    fn chunked_framing_is_relayed_with_crlf_only() {
        let cases: [(&[u8], &[u8]); 3] = [
            (
                b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
                b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            ),
            (b"3\r\na\nb\r\n0\r\n\r\n", b"3\r\na\nb\r\n0\r\n\r\n"),
            (b"0\r\n\r\n", b"0\r\n\r\n"),
        ];
        for (input, want) in cases {
            for step in 1..=input.len() {
                let mut c = Chunked::default();
                let mut out = Vec::new();
                for piece in input.chunks(step) {
                    c.advance(piece, &mut out).unwrap();
                }
                assert!(c.done());
                assert_eq!(out, want, "step {step}");
            }
        }
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5;x\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\n\n",
            b"0\r\nX-T: 1\n\r\n",
            b"5\rX\nhello",
            b"0\r\nX-T: a\rb\r\n",
        ] {
            let mut c = Chunked::default();
            assert!(
                c.advance(bad, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
