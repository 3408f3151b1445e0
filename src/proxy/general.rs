//! The general transport: pingora-proxy's `ProxyHttp`, for every request
//! the direct transport does not take (bodies, upgrades, HTTP/1.0, any
//! head with a doubt). pingora parses, frames, pools (with its idle
//! watcher) and retries; each phase here calls one pipeline step and
//! nothing else.

use crate::denial::Reason;
use crate::identity;
use crate::pipeline::{has_body, Ctx, HeaderSink, Next, Pipeline};
use crate::proxy::respond;
use crate::ratelimit::{BodyPrefix, BODY_LIMIT};
use crate::runtime::Runtime;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, OrErr, Result};

/// The proxy service pingora-proxy runs.
pub struct General {
    pub pipeline: Pipeline,
}

impl HeaderSink for RequestHeader {
    fn put(&mut self, name: &'static str, value: &HeaderValue) -> Result<()> {
        self.insert_header(name, value.clone())
    }
    fn put_text(&mut self, name: &'static str, value: &str) -> Result<()> {
        let value =
            HeaderValue::from_str(value).or_err(ErrorType::InternalError, "header value")?;
        self.insert_header(name, value)
    }
    fn put_named(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()> {
        self.insert_header(name.clone(), value.clone())
    }
}

/// A duplicate of the upstream socket's descriptor, held while the stream
/// runs so that it can be shut down (`streams.rs`).
fn duplicate(fd: std::os::unix::io::RawFd) -> Option<std::net::TcpStream> {
    // SAFETY: `fd` is the upstream connection's open socket, which pingora
    // keeps open for the whole of the `connected_to_upstream` call this runs
    // in; it is only borrowed here, to duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from)
}

fn stream_ended(reason: Reason) -> &'static str {
    match reason {
        Reason::Expired => "the stream's credential expired",
        _ => "the stream's credential was revoked",
    }
}

/// Ends a stream whose credential was revoked or expired while it ran. Its
/// answer had not started: the refusal, as for a request refused at the
/// start. It had: a gRPC call gets UNAUTHENTICATED in trailers; anything
/// else is cut (HTTP/2: RST_STREAM; HTTP/1.1: the connection closes).
async fn end_stream(session: &mut Session, reason: Reason, ctx: &mut Ctx) -> FailToProxy {
    if session.response_written().is_none() {
        let answer = ctx.refuse(reason, true);
        let _ = respond::send(session, answer).await;
    } else if ctx.is_grpc() {
        if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
            let mut trailers = http::HeaderMap::with_capacity(2);
            trailers.insert("grpc-status", HeaderValue::from_static("16"));
            trailers.insert("grpc-message", HeaderValue::from_static(reason.as_str()));
            if h2.write_trailers(trailers).is_ok() {
                ctx.grpc_status = Some(16);
            }
        }
    }
    FailToProxy {
        error_code: 401,
        can_reuse_downstream: false,
    }
}

/// Reads the whole request body (at most [`BODY_LIMIT`]) for rate-limit
/// keys. The key must come from the same field occurrence the backend will
/// use, which a prefix cannot promise (a duplicate key after the prefix
/// would decide for the backend: docs/security.md F2), so a longer body is
/// refused with 413 rather than keyed on a guess. What is read here stays in
/// pingora's 64 KiB retry buffer, which it sends upstream first, so every
/// byte is forwarded. A client sending `Expect: 100-continue` is answered
/// `100 Continue` here (or 413 at once when its length is over the limit).
async fn read_body(session: &mut Session) -> std::result::Result<BodyPrefix, Reason> {
    let req = session.req_header();
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    let length = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if !chunked && length.is_some_and(|l| l > BODY_LIMIT as u64) {
        return Err(Reason::BodyTooLarge);
    }
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // The client waits for a go-ahead before sending the body: give it
        // here (the key is in the body), and don't ask the upstream again.
        session
            .as_mut()
            .write_continue_response()
            .await
            .map_err(|_| Reason::BadRequest)?;
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
    }
    if !chunked && length.unwrap_or(0) == 0 {
        return Ok(BodyPrefix {
            bytes: Vec::new(),
            complete: true,
        });
    }
    session.as_mut().enable_retry_buffering();
    let mut out = BodyPrefix {
        bytes: Vec::with_capacity(length.unwrap_or(1024).min(BODY_LIMIT as u64) as usize),
        complete: false,
    };
    loop {
        let chunk = match tokio::time::timeout(BODY_READ_TIMEOUT, session.read_request_body()).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(_)) | Err(_) => return Err(Reason::BadRequest),
        };
        let Some(chunk) = chunk else {
            break;
        };
        if out.bytes.len() + chunk.len() > BODY_LIMIT {
            return Err(Reason::BodyTooLarge);
        }
        out.bytes.extend_from_slice(&chunk);
        if session.as_mut().is_body_done() {
            break;
        }
    }
    if session.as_ref().retry_buffer_truncated() {
        // cannot happen below the limit; never forward a truncated body
        return Err(Reason::BodyTooLarge);
    }
    out.complete = true;
    Ok(out)
}

/// How long an idle client connection is kept open between requests.
const IDLE_KEEPALIVE_SECS: u64 = 60;

/// Longest wait for each read of a body-keyed route's body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes every client-sent header the gateway owns (`X-Auth-*`, every
/// route-mapped header, the `_` spellings and overrides
/// [`identity::is_reserved_name`] lists), whatever its case, on every
/// route; and, from a peer outside `trusted_proxies`, the forwarding
/// fields only a proxy may set ([`identity::is_proxy_set`]).
fn strip_reserved(req: &mut RequestHeader, rt: &Runtime, trusted: bool) {
    loop {
        let found = req
            .headers
            .keys()
            .find(|n| {
                identity::is_reserved(n, &rt.mapped_headers)
                    || (!trusted && identity::is_proxy_set(n.as_str()))
            })
            .cloned();
        match found {
            Some(name) => {
                req.remove_header(&name);
            }
            None => break,
        }
    }
}

#[async_trait]
impl ProxyHttp for General {
    type CTX = Ctx;

    /// No downstream modules. pingora's default adds its response
    /// compression module switched off, which authgate never switches on
    /// (it passes the upstream's bytes through as they are); it still built
    /// a module context and ran its filters on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // pingora keeps idle HTTP/1.1 connections forever by default
        // (pingora#447): bound them.
        session.set_keepalive(Some(IDLE_KEEPALIVE_SECS));
        let rt = self.pipeline.state.runtime();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = peer.is_some_and(|p| rt.server.trusts(p));
        strip_reserved(session.req_header_mut(), &rt, trusted);
        let req = session.req_header();
        let p = &self.pipeline;
        if let Next::Respond(answer) = p.route(req, req.raw_path(), peer, rt, ctx) {
            return respond::send(session, answer).await;
        }
        let body = match ctx.needs_body() {
            Some(true) => match read_body(session).await {
                Ok(b) => Some(b),
                Err(reason) => {
                    let close = has_body(&session.req_header().headers);
                    let answer = ctx.refuse(reason, close);
                    return respond::send(session, answer).await;
                }
            },
            _ => None,
        };
        match p.admit(session.req_header(), body.as_ref(), ctx).await {
            Next::Forward => Ok(false),
            Next::Respond(answer) => respond::send(session, answer).await,
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if ctx.is_grpc() {
            // a trailers-only answer carries its status in the head
            ctx.note_grpc_status(upstream_response.headers.get("grpc-status"));
        }
        if let Some((policy, state)) = self.pipeline.answered(status, ctx).await {
            upstream_response.insert_header("RateLimit-Policy", policy)?;
            upstream_response.insert_header("RateLimit", state)?;
        }
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<bytes::Bytes>> {
        if ctx.is_grpc() {
            ctx.note_grpc_status(trailers.get("grpc-status"));
        }
        Ok(None)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some((rt, i)) = ctx.upstream() else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for route");
        };
        let Some(up) = rt.upstreams.get(i) else {
            return Error::e_explain(ErrorType::InternalError, "no upstream for route");
        };
        // every address tried: this is pingora retrying a pooled
        // connection that failed on reuse (a failed connect with nothing
        // left to try is not retried), so the same address, fresh
        let addr = ctx
            .next_address(up)
            .or_else(|| ctx.last_address(up))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream has no address"))?;
        Ok(Box::new(up.peer(addr, ctx.generation())))
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.connected();
        // A request that can outlive its credential: an HTTP/2 stream or an
        // upgraded connection (WebSocket).
        if session.as_downstream().is_http2() || session.is_upgrade_req() {
            ctx.watch_stream(&self.pipeline.state.streams, || duplicate(fd));
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(reason) = ctx.stream_ended() {
            return Error::e_explain(ErrorType::HTTPStatus(401), stream_ended(reason));
        }
        if end_of_stream {
            ctx.stream_finished();
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        _trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(reason) = ctx.stream_ended() {
            return Error::e_explain(ErrorType::HTTPStatus(401), stream_ended(reason));
        }
        ctx.stream_finished();
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.stream_ended().is_some()
            || !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
        {
            // a stream ended for its credential is never sent again
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if ctx.connect_failed() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // a handle on the client's value (shared bytes), not a copy
        let xff = upstream_request.headers.get("x-forwarded-for").cloned();
        let xff = xff.as_ref().and_then(|v| v.to_str().ok());
        self.pipeline.forward(ctx, xff, upstream_request)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(reason) = ctx.stream_ended() {
            return end_stream(session, reason, ctx).await;
        }
        let code = respond::error_status(e);
        if session.response_written().is_some() {
            // the upstream's head is already out: a second answer would be
            // written as its body (a 200 whose body is our 502), so the
            // connection ends here, the response cut short
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        if code == 502 {
            let answer = ctx.upstream_error();
            let _ = respond::send(session, answer).await;
        } else if code > 0 && ctx.is_grpc() {
            let answer = ctx.error(code);
            let _ = respond::send(session, answer).await;
        } else if code > 0 {
            respond::send_error(session, code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        // Never the query string: it may carry credentials.
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        self.pipeline
            .finish(req.method.as_str(), req.uri.path(), status, e, ctx)
            .await;
    }
}
