//! The request lifecycle: read this first. Every request, whatever
//! transport carried it in (`proxy::direct` or `proxy::general`), goes
//! through the same steps in the same order, each a method of
//! [`Pipeline`] taking plain values (`http` request parts, the peer
//! address, a config snapshot) and this request's [`Ctx`]. A step either
//! lets the request go on ([`Next::Forward`]) or ends it with an answer
//! the transport writes through `proxy::respond` ([`Next::Respond`]).
//!
//! The steps, with the items of docs/config.md "What a request goes
//! through" each one covers:
//!
//! 1. **route** ([`Pipeline::route`], route.rs; items 1-3): the config
//!    snapshot, the client address and scheme, the assertion JWKS,
//!    framing refusals, the request target and host, the path as
//!    backends read it, the route.
//! 2. **limits** (`limits`, limits.rs, called by [`Pipeline::admit`];
//!    item 4): the route's rate limits, one store call. The transport
//!    reads the body first when a key needs it ([`Ctx::needs_body`]).
//! 3. **authn** (`authn`, authn.rs, called by [`Pipeline::admit`]; items
//!    5-11): JWT or session, revocation, CSRF, then `require` (roles,
//!    scopes); a browser gets the route's login redirect for a 401.
//! 4. **forward** ([`Pipeline::forward`], forward.rs; item 12):
//!    `X-Forwarded-*`, the identity headers, claim headers and the signed
//!    assertion, into whatever the transport builds the upstream request
//!    in ([`HeaderSink`]). The client's copies of reserved headers are
//!    gone before step 1 (`identity::is_reserved_name`, the "before them"
//!    paragraph).
//! 5. **finish** ([`Pipeline::answered`] when the upstream's head
//!    arrives, [`Pipeline::finish`] at the end, finish.rs; item 12's
//!    refunds): `count = "failures"` refunds, the `RateLimit` headers,
//!    metrics, the request log line.
//!
//! Balancing and passive health are `upstream.rs`; the transport asks for
//! the next address through [`Ctx::next_address`] and reports connects
//! with [`Ctx::connected`] / [`Ctx::connect_failed`].

mod authn;
mod finish;
mod forward;
mod limits;
mod route;

pub use authn::verify_token;
pub use forward::HeaderSink;

use crate::denial::{Answer, Reason};
use crate::identity::Identity;
use crate::ratelimit::{self, Cell};
use crate::runtime::{Route, Runtime};
use crate::state::State;
use crate::upstream::{Tried, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// The steps, over the shared state (store, caches, revocations, metrics).
pub struct Pipeline {
    pub state: Arc<State>,
}

/// Where a request goes after a step.
#[must_use]
pub enum Next {
    /// On to the next step (after the last, to the upstream).
    Forward,
    /// Ends here: the transport writes this answer (a denial, a redirect,
    /// the assertion JWKS) and the request goes to [`Pipeline::finish`].
    Respond(Answer),
}

/// Per-request state, from the first step to [`Pipeline::finish`].
pub struct Ctx {
    start: Instant,
    /// The config snapshot this request runs on, loaded once.
    rt: Option<Arc<Runtime>>,
    route: Option<usize>,
    identity: Option<Arc<Identity>>,
    reason: Reason,
    auth_label: &'static str,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    /// The scheme the client used: `https` on a TLS listener, else what a
    /// trusted proxy says in `X-Forwarded-Proto`, else `http`.
    scheme: &'static str,
    upstream_start: Option<Instant>,
    /// A gateway-served endpoint (the assertion JWKS): its metrics label.
    builtin: Option<&'static str>,
    /// The upstream addresses tried so far (a failed connect retries an
    /// address not yet tried).
    tried: Tried,
    /// `RateLimit-Policy` / `RateLimit` values for the upstream's response.
    rate_decision: Option<ratelimit::Decision>,
    /// `count = "failures"` cells, consumed if the upstream answers 401/403.
    failure_cells: Vec<Cell>,
    /// A gRPC request (`Content-Type: application/grpc*`): the gateway's
    /// own answers are gRPC statuses.
    grpc: bool,
    /// The gRPC status of the answer, when there is one (the gateway's, or
    /// the upstream's `grpc-status` in a trailers-only head or trailers),
    /// for the request log and metrics.
    pub grpc_status: Option<u8>,
    /// This request's registration as a running stream (`streams.rs`).
    watch: Option<crate::streams::Watch>,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx::new()
    }
}

impl Ctx {
    /// A request's state at its start.
    pub fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            rt: None,
            route: None,
            identity: None,
            reason: Reason::Ok,
            auth_label: "none",
            peer: None,
            client_ip: None,
            scheme: "http",
            upstream_start: None,
            tried: Tried::default(),
            builtin: None,
            rate_decision: None,
            failure_cells: Vec::new(),
            grpc: false,
            grpc_status: None,
            watch: None,
        }
    }

    /// Registers this request as a running stream whose upstream socket is
    /// `socket` (a duplicate descriptor), when its route revalidates
    /// streams and it carries a credential.
    pub fn watch_stream(
        &mut self,
        streams: &std::sync::Arc<crate::streams::Streams>,
        socket: impl FnOnce() -> Option<std::net::TcpStream>,
    ) {
        if self.watch.is_some() || !self.matched().is_some_and(|r| r.revalidate_streams) {
            return;
        }
        let Some(identity) = self.identity.clone() else {
            return;
        };
        if let Some(s) = socket() {
            self.watch = Some(streams.watch(identity, s));
        }
    }

    /// The upstream's answer ended: a stream is no longer ended after this.
    pub fn stream_finished(&self) {
        if let Some(w) = &self.watch {
            w.finish();
        }
    }

    /// Why this stream was ended while it ran (its credential was revoked
    /// or expired), if it was: recorded as the request's reason.
    pub fn stream_ended(&mut self) -> Option<Reason> {
        let r = self.watch.as_ref().and_then(crate::streams::Watch::ended)?;
        self.reason = r;
        Some(r)
    }

    /// The answer as this request's client reads it: a gRPC request gets
    /// every refusal as a gRPC status ([`Answer::grpc`]), recorded for the
    /// log and metrics. Every answer the pipeline or a transport gets from
    /// `Ctx` comes through here ([`Ctx::respond`], [`Ctx::refuse`],
    /// [`Ctx::upstream_error`], [`Ctx::error`]), so no transport shapes one.
    fn shape(&mut self, answer: Answer) -> Answer {
        if !self.grpc || answer.status == 200 {
            return answer;
        }
        self.grpc_status = Some(crate::denial::grpc_code(answer.status));
        answer.grpc(self.reason.as_str())
    }

    /// Records the upstream's `grpc-status` (a number 0..=16; anything else
    /// is not a status and is ignored).
    pub fn note_grpc_status(&mut self, v: Option<&http::HeaderValue>) {
        if let Some(code) = v
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u8>().ok())
            .filter(|c| *c <= 16)
        {
            self.grpc_status = Some(code);
        }
    }

    /// Whether this is a gRPC request.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Ends the request with `reason`'s denial (recorded for the log and
    /// metrics). `close`: the request may still have a body on the wire.
    fn deny(&mut self, reason: Reason, close: bool) -> Next {
        self.reason = reason;
        self.respond(Answer::deny(reason, Vec::new(), close))
    }

    /// Ends the request with `answer`, as the client reads it ([`Ctx::shape`]).
    fn respond(&mut self, answer: Answer) -> Next {
        Next::Respond(self.shape(answer))
    }

    /// The matched route, in this request's config snapshot.
    pub fn matched(&self) -> Option<&Route> {
        self.rt.as_ref()?.routes.get(self.route?)
    }

    /// The matched route's upstream.
    pub fn matched_upstream(&self) -> Option<&Upstream> {
        self.rt.as_ref()?.upstreams.get(self.matched()?.upstream)
    }

    /// The config snapshot and the index of the matched route's upstream,
    /// owned: the direct transport keeps its idle connections there and
    /// holds them across steps that take the context mutably.
    pub fn upstream(&self) -> Option<(Arc<Runtime>, usize)> {
        Some((self.rt.clone()?, self.matched()?.upstream))
    }

    /// Whether the matched route's rate limits are checked, and then
    /// whether they need the request body (`Some(true)`: the transport
    /// reads it before [`Pipeline::admit`]).
    pub fn needs_body(&self) -> Option<bool> {
        self.matched()
            .filter(|r| !r.limits.is_empty())
            .map(|r| r.limits_need_body)
    }

    /// The config generation this request runs on (pooled TLS
    /// connections are kept apart per generation).
    pub fn generation(&self) -> u64 {
        self.rt.as_ref().map_or(0, |rt| rt.generation)
    }

    /// The address for the next connect attempt ([`Upstream::pick`]); the
    /// upstream part of the request starts with the first.
    pub fn next_address(&mut self, up: &Upstream) -> Option<SocketAddr> {
        self.upstream_started();
        up.pick(&mut self.tried)
    }

    /// The address of the latest attempt (pingora retrying a pooled
    /// connection that failed on reuse goes to the same one, fresh).
    pub fn last_address(&self, up: &Upstream) -> Option<SocketAddr> {
        up.last_tried(&self.tried)
    }

    /// The upstream part of the request starts (first connect or reuse).
    pub fn upstream_started(&mut self) {
        if self.upstream_start.is_none() {
            self.upstream_start = Some(Instant::now());
        }
    }

    /// A failed connect (counted against its address's health): whether
    /// an address is left to try. Nothing was sent, so any request,
    /// idempotent or not, is safe to retry.
    pub fn connect_failed(&self) -> bool {
        self.matched_upstream()
            .is_some_and(|u| u.connect_failed(&self.tried))
    }

    /// The latest connect attempt succeeded: its address is in rotation.
    pub fn connected(&self) {
        if let Some(u) = self.matched_upstream() {
            u.connected(&self.tried);
        }
    }

    /// Whether the client's peer is in `trusted_proxies`.
    pub fn peer_trusted(&self) -> bool {
        self.peer
            .is_some_and(|peer| self.rt.as_ref().is_some_and(|rt| rt.server.trusts(peer)))
    }

    /// The upstream failed before answering: the 502 denial.
    pub fn upstream_error(&mut self) -> Answer {
        self.reason = Reason::UpstreamError;
        self.shape(Answer::deny(Reason::UpstreamError, Vec::new(), true))
    }

    /// A denial decided by the transport (a body that could not be read).
    pub fn refuse(&mut self, reason: Reason, close: bool) -> Answer {
        self.reason = reason;
        self.shape(Answer::deny(reason, Vec::new(), close))
    }

    /// An error status without a contract reason (a client fault or an
    /// internal error found by the transport): [`Answer::error`].
    pub fn error(&mut self, status: u16) -> Answer {
        self.shape(Answer::error(status))
    }
}

impl Pipeline {
    /// Steps 2 and 3 after [`Pipeline::route`]: rate limits (with the
    /// body, if [`Ctx::needs_body`] asked for it), then authentication and
    /// authorization.
    pub async fn admit(
        &self,
        req: &http::request::Parts,
        body: Option<&ratelimit::BodyPrefix>,
        ctx: &mut Ctx,
    ) -> Next {
        if ctx.needs_body().is_some() {
            if let Next::Respond(a) = self.limits(req, body, ctx).await {
                return Next::Respond(a);
            }
        }
        self.authn(req, ctx).await
    }
}

/// Whether a request has a body on the wire (then a denial closes the
/// connection: what follows could be read as the next request).
pub(crate) fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
