//! The direct path: a bodyless GET or HEAD, the bulk of API and page
//! traffic, proxied by a short loop over pingora-core's HTTP/1 sessions
//! instead of pingora-proxy's general machinery. pingora-proxy runs every
//! request through cache and module phases, a ~14 KB boxed future, two task
//! channels joining a downstream and an upstream half, and a connection pool
//! that spawns a watcher task per released connection; on this machine that
//! held pass-through to 0.72 of nginx's `proxy_pass`, where a plain tokio
//! loop reaches 1.14 (docs/performance.md, "The direct path").
//!
//! The same `Gateway` phases run here (`request_filter`, `upstream_peer`,
//! `fail_to_connect`, `upstream_request_filter`, `response_filter`,
//! `fail_to_proxy`, `logging`), so authentication, header hygiene, metrics
//! and the request log are one code. Only requests with nothing for the
//! general path to do take this one: no body, no framing or hop-by-hop
//! headers beyond `Connection: keep-alive|close`, no upgrade or `Expect`,
//! an origin-form target and nothing pipelined behind them ([`eligible`]).
//! Everything else goes through pingora-proxy exactly as before.

use crate::gateway::{Ctx, Gateway};
use crate::runtime::Upstream;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::modules::http::HttpModules;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Whether the head in `buf` (exactly one head, nothing after it) can take
/// the direct path. Any doubt answers `false`: the general path handles
/// every request, this one only the plain ones.
pub fn eligible(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        _ => return false,
    }
    if !matches!(req.method, Some("GET" | "HEAD")) {
        return false;
    }
    if !req.path.is_some_and(|p| p.starts_with('/')) {
        return false;
    }
    req.headers.iter().all(|h| {
        if h.name.eq_ignore_ascii_case("connection") {
            // nominates nothing else: removing it is the whole sanitising
            let v = h.value.trim_ascii();
            return v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
        }
        !GENERAL_ONLY.iter().any(|g| h.name.eq_ignore_ascii_case(g))
    })
}

/// Most idle connections kept per upstream (each address shares it).
const POOL_SIZE: usize = 128;
/// An idle upstream connection older than this is closed, not reused.
const POOL_IDLE: Duration = Duration::from_secs(55);

/// Idle keep-alive connections to one upstream's addresses. Taking and
/// putting back are a short lock, never held across an await; a connection
/// the upstream closed while idle is found on use and the request retried
/// once on a fresh one (a bodyless GET or HEAD is safe to send again).
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

impl IdlePool {
    /// The most recently idled connection to `addr`. Entries stay in the
    /// order they were put back, so the expired ones are a prefix; they are
    /// closed after the lock is released.
    fn take(&self, addr: SocketAddr) -> Option<Stream> {
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
        found
    }

    fn put(&self, addr: SocketAddr, stream: Stream) {
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

/// The direct path's parts: the gateway's phases and a connector (TCP,
/// and TLS with the upstream's trust store and name, as pingora's own).
pub struct Direct {
    pub gateway: Gateway,
    pub connector: TransportConnector,
}

/// What the upstream exchange gave: the error (if any) and whether the
/// client connection can be reused.
type Outcome = (bool, Option<Box<Error>>);

impl Direct {
    /// Serves one request whose head was checked by [`eligible`]; returns
    /// the client connection when it can carry the next request.
    pub async fn serve(&self, mut session: Session) -> Option<ReusedHttpStream> {
        match session.downstream_session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            // as pingora-proxy answers a head its parser refuses
            Err(e) => {
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.downstream_session.respond_error(400).await;
                }
                return None;
            }
        }
        let gw = &self.gateway;
        let mut ctx = gw.new_ctx();
        let (mut reuse, error) = match gw.request_filter(&mut session, &mut ctx).await {
            Ok(true) => (true, None),
            Ok(false) => self.proxy(&mut session, &mut ctx).await,
            Err(e) => (false, Some(e)),
        };
        if let Some(e) = &error {
            let r = gw.fail_to_proxy(&mut session, e, &mut ctx).await;
            reuse = r.can_reuse_downstream;
            tracing::error!(
                "Fail to proxy: {e}, status: {}, {}",
                r.error_code,
                gw.request_summary(&session, &ctx)
            );
        }
        gw.logging(&mut session, error.as_deref(), &mut ctx).await;
        if !reuse {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let Session {
            downstream_session, ..
        } = session;
        downstream_session
            .finish()
            .await
            .ok()
            .flatten()
            .map(|s| ReusedHttpStream::from_reusable_stream(s, settings))
    }

    /// Connects (retrying the next address as `fail_to_connect` decides),
    /// sends the request and relays the response.
    async fn proxy(&self, session: &mut Session, ctx: &mut Ctx) -> Outcome {
        let gw = &self.gateway;
        let rt = ctx.upstream();
        let Some(upstream) = rt.as_ref().and_then(|(rt, i)| rt.upstreams.get(*i)) else {
            let e = Error::explain(ErrorType::InternalError, "no upstream for route");
            return (false, Some(e));
        };
        let mut fresh_only = false;
        loop {
            let peer = match gw.upstream_peer(session, ctx).await {
                Ok(p) => p,
                Err(e) => return (false, Some(e)),
            };
            let addr = match peer.address().as_inet() {
                Some(a) => *a,
                None => {
                    let e = Error::explain(ErrorType::InternalError, "upstream is not TCP");
                    return (false, Some(e));
                }
            };
            let (stream, reused) = match (!fresh_only).then(|| upstream.pool.take(addr)).flatten() {
                Some(s) => (s, true),
                None => match self.connector.new_stream(&*peer).await {
                    Ok(s) => (s, false),
                    Err(mut e) => {
                        e.as_up();
                        let e = gw.fail_to_connect(session, &peer, ctx, e);
                        if e.retry() {
                            continue;
                        }
                        return (false, Some(e.into_up()));
                    }
                },
            };
            match self
                .exchange(session, ctx, &peer, stream, addr, upstream)
                .await
            {
                Exchange::Relayed => return (true, None),
                Exchange::Failed(e) => return (false, Some(e)),
                // a pooled connection the upstream had closed: once more, fresh
                Exchange::Stale if reused && !fresh_only => fresh_only = true,
                Exchange::Stale => {
                    let e = Error::explain(
                        ErrorType::ConnectionClosed,
                        "upstream closed the connection before answering",
                    );
                    return (false, Some(e.into_up()));
                }
            }
        }
    }

    /// One request/response exchange on `stream`.
    async fn exchange(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        peer: &HttpPeer,
        stream: Stream,
        addr: SocketAddr,
        upstream: &Upstream,
    ) -> Exchange {
        let gw = &self.gateway;
        let mut up = UpstreamSession::new_with_options(stream, peer);
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;

        let mut req = session.req_header().clone();
        req.set_version(http::Version::HTTP_11);
        req.remove_header(&http::header::CONNECTION);
        if let Err(e) = gw.upstream_request_filter(session, &mut req, ctx).await {
            return Exchange::Failed(e);
        }
        if up.write_request_header(Box::new(req)).await.is_err() {
            return Exchange::Stale;
        }
        let mut head = loop {
            match up.read_response().await {
                Ok(_) => {}
                // nothing came back: the connection was dead (or the
                // upstream dropped it unanswered)
                Err(e) if up.resp_header().is_none() && up.body_bytes_received() == 0 => {
                    if matches!(
                        e.etype(),
                        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
                    ) {
                        return Exchange::Stale;
                    }
                    return Exchange::Failed(e.into_up());
                }
                Err(e) => return Exchange::Failed(e.into_up()),
            }
            let Some(h) = up.resp_header() else {
                let e = Error::explain(ErrorType::InvalidHTTPHeader, "no response header");
                return Exchange::Failed(e.into_up());
            };
            if h.status.is_informational() && h.status != http::StatusCode::SWITCHING_PROTOCOLS {
                // 103 Early Hints and the like: relayed, then the real answer
                let info = Box::new(h.clone());
                if let Err(e) = session.write_response_header(info, false).await {
                    return Exchange::Failed(e.into_down());
                }
                continue;
            }
            break Box::new(h.clone());
        };
        if let Err(e) = gw.response_filter(session, &mut head, ctx).await {
            return Exchange::Failed(e);
        }
        let body_done = up.is_body_done();
        if let Err(e) = session.write_response_header(head, body_done).await {
            return Exchange::Failed(e.into_down());
        }
        if !body_done {
            loop {
                let chunk = match up.read_body_bytes().await {
                    Ok(c) => c,
                    Err(e) => return Exchange::Failed(e.into_up()),
                };
                let end = chunk.is_none() || up.is_body_done();
                if let Err(e) = session.write_response_body(chunk, end).await {
                    return Exchange::Failed(e.into_down());
                }
                if end {
                    break;
                }
            }
        }
        up.respect_keepalive();
        if let Some(s) = up.reuse().await {
            upstream.pool.put(addr, s);
        }
        Exchange::Relayed
    }
}

/// How one exchange on a connection ended.
enum Exchange {
    /// The response reached the client; the upstream connection went back
    /// to the pool if it could.
    Relayed,
    Failed(Box<Error>),
    /// Nothing was sent back: a pooled connection may have been closed.
    Stale,
}

/// A `pingora_proxy::Session` over `stream` without downstream modules
/// (authgate adds none: `Gateway::init_downstream_modules`).
pub fn session_for(stream: Stream) -> Session {
    thread_local! {
        static NO_MODULES: HttpModules = HttpModules::new();
    }
    NO_MODULES.with(|m| Session::new_h1_with_modules(stream, m))
}

#[cfg(test)]
mod tests {
    use super::eligible;

    #[test]
    fn only_plain_bodyless_requests_are_eligible() {
        assert!(eligible(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(eligible(b"HEAD /a?b=c HTTP/1.0\r\n\r\n"));
        assert!(eligible(
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
            // a pipelined second request stays with the general path
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: x\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(!eligible(head), "{}", String::from_utf8_lossy(head));
        }
    }
}
