//! The direct transport: a bodyless HTTP/1.1 GET or HEAD, the bulk of API
//! and page traffic, proxied by a short loop with its own HTTP/1 framing
//! instead of pingora-proxy's general machinery (docs/performance.md, "The
//! direct path", has the measurements that justify a second transport).
//!
//! It runs the same pipeline steps as the general transport, in the same
//! order (route, limits, authn, forward, finish); only the bytes differ.
//! The request goes upstream as the client's header lines (minus
//! `Connection`, the reserved identity headers and the forwarding headers
//! the gateway sets) with the pipeline's fields appended
//! ([`request`]); the response comes back as the upstream's head with its
//! hop-by-hop fields replaced and its body relayed as framed
//! ([`response`]).
//!
//! Only requests with nothing for the general transport to do take this
//! one: no body, no framing or hop-by-hop headers beyond `Connection:
//! keep-alive|close`, no upgrade or `Expect`, HTTP/1.1, an origin-form
//! target and nothing pipelined behind them. Everything else (and any head
//! this parser has a doubt about) goes through pingora-proxy. It is proven
//! identical to the general transport by tests/differential.rs and can be
//! switched off (`[server] direct_path = false`).

mod buffers;
mod chunked;
mod request;
mod response;

pub use chunked::chunked_end;
pub use request::{parse, Parsed};

use crate::pipeline::{Ctx, Next, Pipeline};
use crate::proxy::respond::{self, answer_bytes, write_out};
use crate::ratelimit::BodyPrefix;
use crate::runtime::Runtime;
use buffers::Buffers;
use http::Method;
use pingora::connectors::TransportConnector;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType};
use response::{Exchange, Relay};
use std::net::IpAddr;
use std::sync::Arc;

/// The direct transport's parts: the pipeline and a connector (TCP, and
/// TLS with the upstream's trust store and name, as pingora's own).
pub struct Direct {
    pub pipeline: Pipeline,
    pub connector: TransportConnector,
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
        let p = &self.pipeline;
        let mut ctx = Ctx::new();
        let peer = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let verdict = self.admit(&req, peer, rt, &mut ctx).await;
        let keep_client = !req.close && !closing;
        let head_only = req.parts.method == Method::HEAD;
        let (status, error, keep) = match verdict {
            Next::Respond(answer) => {
                let keep = keep_client && !answer.close;
                answer_bytes(&mut bufs.out, &answer, head_only, keep);
                let sent = write_out(&mut client, &bufs.out).await.is_ok();
                (answer.status, None, keep && sent)
            }
            Next::Forward => match self
                .proxy(&mut client, &req, &mut ctx, bufs, keep_client)
                .await
            {
                Exchange::Relayed { status, keep } => (status, None, keep),
                Exchange::Failed {
                    error,
                    sent: Some(status),
                } => (status, Some(error), false),
                Exchange::Failed { error, sent: None } => {
                    let code = respond::error_status(&error);
                    let status = match code {
                        502 => {
                            let answer = ctx.upstream_error();
                            answer_bytes(&mut bufs.out, &answer, head_only, false);
                            let _ = write_out(&mut client, &bufs.out).await;
                            502
                        }
                        0 => 0,
                        code => {
                            let answer = ctx.error(code);
                            answer_bytes(&mut bufs.out, &answer, head_only, false);
                            let _ = write_out(&mut client, &bufs.out).await;
                            code
                        }
                    };
                    tracing::error!(
                        target: "authgate::direct",
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
                    let answer = ctx.upstream_error();
                    answer_bytes(&mut bufs.out, &answer, head_only, false);
                    let _ = write_out(&mut client, &bufs.out).await;
                    tracing::error!(
                        target: "authgate::direct",
                        "Fail to proxy: {error}, status: 502, {} {}",
                        req.parts.method,
                        req.parts.uri.path()
                    );
                    (502, Some(error), false)
                }
            },
        };
        p.finish(
            req.parts.method.as_str(),
            req.parts.uri.path(),
            status,
            error.as_deref(),
            &mut ctx,
        )
        .await;
        keep.then_some(client)
    }

    /// Steps 1 to 3: route, rate limits, authentication.
    async fn admit(
        &self,
        req: &Parsed,
        peer: Option<IpAddr>,
        rt: Arc<Runtime>,
        ctx: &mut Ctx,
    ) -> Next {
        let p = &self.pipeline;
        if let Next::Respond(a) = p.route(&req.parts, req.target(), peer, rt, ctx) {
            return Next::Respond(a);
        }
        // a direct request has no body: keys from it see an empty one
        let empty = BodyPrefix {
            bytes: Vec::new(),
            complete: true,
        };
        let body = (ctx.needs_body() == Some(true)).then_some(&empty);
        p.admit(&req.parts, body, ctx).await
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
        let p = &self.pipeline;
        let Some((rt, index)) = ctx.upstream() else {
            let error = Error::explain(ErrorType::InternalError, "no upstream for route");
            return Exchange::Failed { error, sent: None };
        };
        let Some(upstream) = rt.upstreams.get(index) else {
            let error = Error::explain(ErrorType::InternalError, "no upstream for route");
            return Exchange::Failed { error, sent: None };
        };
        if let Err(error) = request::request_head(p, req, ctx, &mut bufs.req) {
            return Exchange::Failed { error, sent: None };
        }
        let mut fresh_only = false;
        let mut last_addr = None;
        loop {
            // a stale pooled connection is retried on the same address
            let addr = match (fresh_only, last_addr) {
                (true, Some(a)) => Some(a),
                _ => ctx.next_address(upstream),
            };
            let Some(addr) = addr else {
                let error = Error::explain(ErrorType::InternalError, "upstream has no address");
                return Exchange::Failed { error, sent: None };
            };
            let pooled = (!fresh_only).then(|| upstream.pool.take(addr)).flatten();
            let (stream, reused) = match pooled {
                Some(s) => (s, true),
                None => {
                    let peer = upstream.peer(addr, ctx.generation());
                    match self.connector.new_stream(&peer).await {
                        Ok(s) => {
                            ctx.connected();
                            (s, false)
                        }
                        Err(mut e) => {
                            e.as_up();
                            if ctx.connect_failed() {
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
            .run(p, ctx, upstream, addr)
            .await;
            match exchange {
                // a pooled connection the upstream had closed: once more, fresh
                Exchange::Stale if reused && !fresh_only => fresh_only = true,
                other => return other,
            }
        }
    }
}
