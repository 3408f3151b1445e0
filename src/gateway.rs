//! The pingora `ProxyHttp` implementation: the request lifecycle of
//! DESIGN.md and nothing else. Each phase calls one function of a module
//! that takes plain values (routing, header hygiene, authentication), so the
//! logic is unit-tested without a pingora session.

use crate::auth;
use crate::auth::session;
use crate::denial::Reason;
use crate::identity::{self, header_safe, AuthMethod, Identity};
use crate::ratelimit::{self, BodyPrefix, Cell, Count, Limit, BODY_LIMIT};
use crate::router;
use crate::runtime::{AuthMode, OnError, Route, Runtime, Tried, Upstream};
use crate::state::State;
use async_trait::async_trait;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, OrErr, Result};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The proxy service.
pub struct Gateway {
    pub state: Arc<State>,
}

/// Per-request state, from `new_ctx` to `logging`.
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
        }
    }

    /// The upstream addresses this request has tried.
    pub fn tried(&mut self) -> &mut Tried {
        &mut self.tried
    }

    /// The upstream part of the request starts (first connect or reuse).
    pub fn upstream_started(&mut self) {
        if self.upstream_start.is_none() {
            self.upstream_start = Some(Instant::now());
        }
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
    /// owned: the direct path keeps its idle connections there and holds
    /// them across phases that take the context mutably.
    pub fn upstream(&self) -> Option<(Arc<Runtime>, usize)> {
        Some((self.rt.clone()?, self.matched()?.upstream))
    }
}

/// A response the gateway writes itself (a denial, a redirect, the
/// assertion JWKS), built without a session so both proxy paths write the
/// same bytes' worth of meaning.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Bytes,
    /// The request may still have a body on the wire: close after answering.
    pub close: bool,
}

impl Answer {
    /// A denial: status, challenge, JSON body, always with a Content-Length
    /// (pingora#766). `has_body`: the connection is closed after it.
    fn deny(
        reason: Reason,
        extra: Vec<(&'static str, Cow<'static, str>)>,
        has_body: bool,
    ) -> Answer {
        let r = reason.response();
        let mut headers = Vec::with_capacity(4 + extra.len());
        headers.push(("Content-Type", Cow::Borrowed("application/json")));
        headers.push(("Content-Length", Cow::Owned(r.body.len().to_string())));
        headers.push(("Cache-Control", Cow::Borrowed("no-store")));
        if let Some(c) = r.challenge {
            headers.push(("WWW-Authenticate", Cow::Borrowed(c)));
        }
        headers.extend(extra);
        Answer {
            status: r.status,
            headers,
            body: Bytes::from_static(r.body.as_bytes()),
            close: has_body,
        }
    }
}

/// Where a request goes after its request phase.
pub type Verdict = std::result::Result<(), Answer>;

/// Something that takes the headers the gateway adds to a forwarded
/// request: pingora's `RequestHeader` on the general path, the head bytes
/// on the direct path.
///
/// Values come by reference: the direct path copies their bytes into the
/// head and never needs a handle of its own (a cached identity's values
/// share one buffer, and a clone and drop per header is two atomic updates
/// on a cache line that is usually cold).
pub trait HeaderSink {
    fn put(&mut self, name: &'static str, value: &HeaderValue) -> Result<()>;
    /// A value that is plain text (an address list): no `HeaderValue` is
    /// built for it on the direct path. Refused if it is not a valid value.
    fn put_text(&mut self, name: &'static str, value: &str) -> Result<()>;
    fn put_named(&mut self, name: &HeaderName, value: &HeaderValue) -> Result<()>;
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

impl Gateway {
    /// Ends a request with `reason`: recorded for the log and metrics.
    fn deny(&self, ctx: &mut Ctx, reason: Reason, req: &Parts) -> Verdict {
        ctx.reason = reason;
        Err(Answer::deny(reason, Vec::new(), has_body(&req.headers)))
    }

    /// A 400 for a head the gateway will not interpret: the connection
    /// closes after it (whatever follows may be framed otherwise than it
    /// looks).
    fn bad_request(&self, ctx: &mut Ctx) -> Verdict {
        ctx.reason = Reason::BadRequest;
        Err(Answer::deny(Reason::BadRequest, Vec::new(), true))
    }

    /// Gives back `failures` charges for an attempt that did not fail.
    async fn refund(&self, cells: &[Cell]) {
        if let Err(e) = self.state.store.rate_refund(cells).await {
            self.state
                .metrics
                .store_errors
                .with_label_values(&["ratelimit"])
                .inc();
            tracing::warn!(error = %e, op = "ratelimit", "a successful attempt could not be refunded");
        }
    }

    /// The request phase up to the route: the config snapshot, the client's
    /// address and scheme, the assertion JWKS, Host, the path and the
    /// route. The client's copies of reserved headers must already be gone
    /// (they are never read here).
    pub fn begin(
        &self,
        req: &Parts,
        raw_target: &[u8],
        peer: Option<IpAddr>,
        rt: Arc<Runtime>,
        ctx: &mut Ctx,
    ) -> Verdict {
        ctx.rt = Some(rt.clone());
        ctx.peer = peer;
        if let Some(p) = peer {
            let xff = req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            ctx.client_ip = Some(identity::client_ip(p, xff, &rt.server.trusted_proxies));
        }
        ctx.scheme = if rt.server.tls.is_some() {
            "https"
        } else {
            let trusted =
                peer.is_some_and(|p| rt.server.trusted_proxies.iter().any(|n| n.contains(&p)));
            match req.headers.get("x-forwarded-proto").map(|v| v.as_bytes()) {
                Some(v) if trusted && v.eq_ignore_ascii_case(b"https") => "https",
                _ => "http",
            }
        };
        let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
        if let Some(a) = rt
            .assertion
            .as_ref()
            .filter(|a| get && req.uri.path() == a.jwks_path)
        {
            ctx.reason = Reason::Ok;
            ctx.builtin = Some("assertion_jwks");
            let answer = Answer {
                status: 200,
                headers: vec![
                    ("Content-Type", Cow::Borrowed("application/json")),
                    ("Content-Length", Cow::Owned(a.jwks.len().to_string())),
                    ("Cache-Control", Cow::Borrowed("public, max-age=300")),
                ],
                body: Bytes::from(a.jwks.clone()),
                close: false,
            };
            return Err(answer);
        }
        // Framing a backend could read otherwise than the gateway: two
        // `Content-Length` lines (even equal), or one beside a
        // `Transfer-Encoding` (RFC 9112 §6.1, as nginx refuses them).
        let lengths = req
            .headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .count();
        if lengths > 1
            || (lengths == 1 && req.headers.contains_key(http::header::TRANSFER_ENCODING))
        {
            return self.bad_request(ctx);
        }
        // origin-form, absolute-form, or `*` for OPTIONS (RFC 9112 §3.2):
        // any other target (`%2f/api/x`, `;x/api`) is routed by a path
        // the upstream never sees
        let target_ok = raw_target.first() == Some(&b'/')
            || (raw_target == b"*" && req.method == http::Method::OPTIONS)
            || matches!(target_authority(raw_target), Ok(Some(_)));
        if !target_ok {
            return self.bad_request(ctx);
        }
        let Ok(host) = request_host(req, raw_target) else {
            return self.bad_request(ctx);
        };
        let path = match router::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(_) => return self.deny(ctx, Reason::BadRequest, req),
        };
        let Some(route_idx) = rt.router.resolve(host, req.method.as_str(), &path) else {
            return self.deny(ctx, Reason::NoRoute, req);
        };
        let Some(route) = rt.routes.get(route_idx) else {
            return self.deny(ctx, Reason::NoRoute, req);
        };
        ctx.route = Some(route_idx);
        ctx.auth_label = route.auth.label();
        Ok(())
    }

    /// Checks the matched route's rate limits (one store call). `body`: the
    /// request body when the route's keys need it.
    pub async fn check_limits(
        &self,
        req: &Parts,
        body: Option<&BodyPrefix>,
        ctx: &mut Ctx,
    ) -> Verdict {
        let Some(rt) = ctx.rt.clone() else {
            return Ok(());
        };
        let Some(route) = ctx.route.and_then(|i| rt.routes.get(i)) else {
            return Ok(());
        };
        if route.limits.is_empty() {
            return Ok(());
        }
        let ip = ctx
            .client_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let cells: std::result::Result<Vec<Cell>, Reason> = route
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(Cell {
                    key: ratelimit::key_for(&route.name, i, &l.key, ip, &req.headers, body)?,
                    emission_us: l.emission_us(),
                    window_us: l.window_us,
                    consume: true,
                })
            })
            .collect();
        let cells = match cells {
            Ok(cells) => cells,
            Err(reason) => return self.deny(ctx, reason, req),
        };
        match self.state.store.rate_check(&cells).await {
            Err(e) => {
                self.state
                    .metrics
                    .store_errors
                    .with_label_values(&["ratelimit"])
                    .inc();
                let on_error = rt.store.on_error;
                tracing::warn!(error = %e, op = "ratelimit", route = route.name.as_str(), on_error = ?on_error, "store error");
                match on_error {
                    OnError::Deny => self.deny(ctx, Reason::StoreUnavailable, req),
                    OnError::Allow => Ok(()),
                }
            }
            Ok(d) => {
                if !d.allowed {
                    let limits: Vec<&Limit> = route.limits.iter().collect();
                    let (policy, state) = ratelimit::headers(&limits, &d);
                    self.state
                        .metrics
                        .rate_limited
                        .with_label_values(&[route.name.as_str()])
                        .inc();
                    let retry = ratelimit::retry_after_secs(&d).to_string();
                    ctx.reason = Reason::RateLimited;
                    return Err(Answer::deny(
                        Reason::RateLimited,
                        vec![
                            ("Retry-After", Cow::Owned(retry)),
                            ("RateLimit-Policy", Cow::Owned(policy)),
                            ("RateLimit", Cow::Owned(state)),
                        ],
                        has_body(&req.headers),
                    ));
                }
                ctx.rate_decision = Some(d);
                ctx.failure_cells = cells
                    .into_iter()
                    .zip(&route.limits)
                    .filter(|(_, l)| l.count == Count::Failures)
                    .map(|(c, _)| c)
                    .collect();
                Ok(())
            }
        }
    }

    /// Authenticates and authorizes the request for the matched route.
    pub async fn authenticate(&self, req: &Parts, ctx: &mut Ctx) -> Verdict {
        let Some(rt) = ctx.rt.clone() else {
            return self.deny(ctx, Reason::NoRoute, req);
        };
        let Some(route) = ctx.route.and_then(|i| rt.routes.get(i)) else {
            return self.deny(ctx, Reason::NoRoute, req);
        };
        if route.auth == AuthMode::None {
            route
                .metrics(&self.state.metrics)
                .auth_for("none")
                .observe(ctx.start.elapsed().as_secs_f64());
            return Ok(());
        }
        if route.auth == AuthMode::JwtOrSession && auth::bearer(&req.headers).is_err() {
            ctx.auth_label = "session";
        }
        let mut result = auth::authenticate(&self.state, &rt, route, &req.headers).await;
        if let Ok(id) = &result {
            // Known from here on, for the log line, even if refused below.
            ctx.auth_label = id.method.as_str();
            ctx.identity = Some(id.clone());
            // Cookies ride along on cross-site requests; bearer tokens don't.
            if id.method == AuthMethod::Session
                && session::is_unsafe(&req.method)
                && !session::csrf_ok(&req.headers, ctx.scheme, allowed_origins(&rt))
            {
                result = Err(Reason::Csrf);
            }
        }
        let result = result.and_then(|id| auth::authorize(&route.require, &id));
        route
            .metrics(&self.state.metrics)
            .auth_for(ctx.auth_label)
            .observe(ctx.start.elapsed().as_secs_f64());
        match result {
            Ok(()) => Ok(()),
            Err(reason) => {
                if reason.response().status == 401
                    && route.login_redirect.is_some()
                    && is_browser(req)
                {
                    ctx.reason = reason;
                    let location =
                        login_location(route.login_redirect.as_deref().unwrap_or("/"), &req.uri);
                    return Err(Answer {
                        status: 302,
                        headers: vec![
                            ("Location", Cow::Owned(location)),
                            ("Content-Length", Cow::Borrowed("0")),
                            ("Cache-Control", Cow::Borrowed("no-store")),
                        ],
                        body: Bytes::new(),
                        close: has_body(&req.headers),
                    });
                }
                self.deny(ctx, reason, req)
            }
        }
    }

    /// The upstream answered `status`: refunds `failures` charges for a
    /// success, and gives the `RateLimit-Policy` and `RateLimit` values
    /// for the response on a rate-limited route.
    pub async fn upstream_answered(&self, status: u16, ctx: &mut Ctx) -> Option<(String, String)> {
        let charged = std::mem::take(&mut ctx.failure_cells);
        let refund = !charged.is_empty() && !matches!(status, 401 | 403);
        if refund {
            self.refund(&charged).await;
        }
        let mut d = ctx.rate_decision.take()?;
        let route = ctx.matched()?;
        if refund {
            // The headers tell the budget after this answer.
            for (backlog, l) in d.backlog_us.iter_mut().zip(&route.limits) {
                if l.count == Count::Failures {
                    *backlog = backlog.saturating_sub(l.emission_us());
                }
            }
        }
        let limits: Vec<&Limit> = route.limits.iter().collect();
        Some(ratelimit::headers(&limits, &d))
    }

    /// The peer to connect to for this try (after a failed connect, an
    /// address this request has not tried: [`Upstream::pick`]).
    pub fn peer(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some((rt, i)) = ctx.upstream() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no upstream for route",
            ));
        };
        let up = rt
            .upstreams
            .get(i)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream for route"))?;
        // every address tried: this is pingora retrying a pooled
        // connection that failed on reuse (a failed connect with nothing
        // left to try is not retried), so the same address, fresh
        let addr = up
            .pick(&mut ctx.tried)
            .or_else(|| up.last_tried(&ctx.tried))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream has no address"))?;
        Ok(Box::new(self.peer_at(up, addr, ctx)))
    }

    /// The peer for `addr` of `up`: its timeouts and, over TLS, its trust
    /// store and name.
    pub fn peer_at(&self, up: &Upstream, addr: std::net::SocketAddr, ctx: &mut Ctx) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, up.tls, up.sni.clone());
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        if up.tls {
            peer.options.verify_cert = true;
            peer.options.verify_hostname = true;
            peer.options.ca = up.ca.clone();
            // pingora's connection pool key ignores the CA: keep pooled TLS
            // connections apart per upstream and per config, so a
            // connection verified under one trust store never serves
            // another (or a reloaded one).
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            up.name.hash(&mut h);
            ctx.rt.as_ref().map(|rt| rt.generation).hash(&mut h);
            peer.group_key = h.finish();
        }
        ctx.upstream_started();
        peer
    }

    /// A failed connect (counted against its address's health): whether
    /// an address is left to try. Nothing was sent, so any request,
    /// idempotent or not, is safe to retry.
    pub fn connect_failed(&self, ctx: &mut Ctx) -> bool {
        ctx.matched_upstream()
            .is_some_and(|u| u.connect_failed(&ctx.tried))
    }

    /// The latest connect attempt succeeded: its address is in rotation.
    pub fn connected(&self, ctx: &Ctx) {
        if let Some(u) = ctx.matched_upstream() {
            u.connected(&ctx.tried);
        }
    }

    /// Whether the client's peer is in `trusted_proxies`.
    pub fn peer_trusted(ctx: &Ctx) -> bool {
        ctx.peer.is_some_and(|peer| {
            ctx.rt
                .as_ref()
                .is_some_and(|rt| rt.server.trusted_proxies.iter().any(|n| n.contains(&peer)))
        })
    }

    /// The headers the gateway adds to a forwarded request (the client's
    /// copies of them are already gone): `X-Forwarded-For`/`-Proto`, the
    /// identity, the route's claim headers and the signed assertion.
    /// `client_xff`: the client's `X-Forwarded-For`.
    pub fn forward_headers(
        &self,
        ctx: &Ctx,
        client_xff: Option<&str>,
        out: &mut impl HeaderSink,
    ) -> Result<()> {
        if let Some(peer) = ctx.peer {
            let trusted = Self::peer_trusted(ctx);
            let existing = client_xff.filter(|s| !s.trim().is_empty());
            let peer = identity::IpText::new(peer);
            match (trusted, existing) {
                (true, Some(prev)) => {
                    out.put_text("X-Forwarded-For", &format!("{prev}, {}", peer.as_str()))?
                }
                _ => out.put_text("X-Forwarded-For", peer.as_str())?,
            }
        }
        // static values: no copy per request (each is checked at compile time)
        const HTTP: HeaderValue = HeaderValue::from_static("http");
        const HTTPS: HeaderValue = HeaderValue::from_static("https");
        const JWT: HeaderValue = HeaderValue::from_static("jwt");
        const SESSION: HeaderValue = HeaderValue::from_static("session");
        let proto = if ctx.scheme == "https" { HTTPS } else { HTTP };
        out.put("X-Forwarded-Proto", &proto)?;
        let Some(id) = &ctx.identity else {
            return Ok(());
        };
        let r = id.rendered();
        if let Some(v) = &r.subject {
            out.put("X-Auth-Subject", v)?;
        }
        let method = match id.method {
            AuthMethod::Jwt => JWT,
            AuthMethod::Session => SESSION,
        };
        out.put("X-Auth-Method", &method)?;
        for (name, value) in [
            ("X-Auth-Issuer", &r.issuer),
            ("X-Auth-Email", &r.email),
            ("X-Auth-Roles", &r.roles),
            ("X-Auth-Scopes", &r.scopes),
        ] {
            if let Some(v) = value {
                out.put(name, v)?;
            }
        }
        if let Some((rt, route)) = ctx.rt.as_ref().zip(ctx.matched()) {
            if route.assertion {
                if let Some(a) = &rt.assertion {
                    let jwt = a
                        .sign(id, &route.name, auth::jwt::now_unix())
                        .and_then(|jwt| HeaderValue::from_str(&jwt).ok())
                        .ok_or_else(|| {
                            Error::explain(
                                ErrorType::InternalError,
                                "cannot sign the identity assertion",
                            )
                        })?;
                    out.put("X-Auth-Assertion", &jwt)?;
                }
            }
            for (name, claim) in &route.headers {
                if let Some(v) = id.claim_value(claim) {
                    let v = HeaderValue::from_str(&header_safe(&v))
                        .or_err(ErrorType::InternalError, "claim header value")?;
                    out.put_named(name, &v)?;
                }
            }
        }
        Ok(())
    }

    /// The status for an error that ended a request before an answer, as
    /// pingora-proxy decides it: 502 for the upstream's, none (0) when the
    /// client went away, 400 for other client faults, 500 for ours.
    pub fn error_status(e: &Error) -> u16 {
        match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        }
    }

    /// The upstream-error denial (502, with the usual JSON body).
    pub fn upstream_error(&self, ctx: &mut Ctx) -> Answer {
        ctx.reason = Reason::UpstreamError;
        Answer::deny(Reason::UpstreamError, Vec::new(), true)
    }

    /// The end of every request: refunds charges for a failure that never
    /// came, counts it, and writes the request log line.
    pub async fn finish(
        &self,
        method: &str,
        path: &str,
        status: u16,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) {
        // Charged for a failure that never came (no upstream answer).
        let charged = std::mem::take(&mut ctx.failure_cells);
        if !charged.is_empty() {
            self.refund(&charged).await;
        }
        if ctx.reason == Reason::Ok && e.is_some_and(|e| *e.esource() == ErrorSource::Upstream) {
            ctx.reason = Reason::UpstreamError;
        }
        let matched = ctx.matched();
        let route = matched.map_or(ctx.builtin.unwrap_or("unmatched"), |r| r.name.as_str());
        let m = &self.state.metrics;
        match matched.map(|r| r.metrics(m)) {
            Some(rm) => {
                if ctx.reason == Reason::Ok {
                    rm.allowed.inc();
                } else {
                    m.requests
                        .with_label_values(&[route, ctx.reason.outcome(), ctx.reason.as_str()])
                        .inc();
                }
                if let Some(t) = ctx.upstream_start {
                    rm.upstream.observe(t.elapsed().as_secs_f64());
                }
            }
            None => m
                .requests
                .with_label_values(&[route, ctx.reason.outcome(), ctx.reason.as_str()])
                .inc(),
        }
        let client_ip = ctx.client_ip.map(identity::IpText::new);
        tracing::info!(
            route,
            method,
            auth = ctx.auth_label,
            path,
            status,
            outcome = ctx.reason.outcome(),
            reason = ctx.reason.as_str(),
            subject = ctx.identity.as_ref().and_then(|i| i.subject.as_deref()),
            client_ip = client_ip.as_ref().map(identity::IpText::as_str),
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }

    /// Writes an [`Answer`] on the general path.
    async fn send(&self, session: &mut Session, answer: Answer) -> Result<bool> {
        let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len()))?;
        for (name, value) in answer.headers {
            match value {
                Cow::Borrowed(v) => resp.insert_header(name, v)?,
                Cow::Owned(v) => resp.insert_header(name, v)?,
            }
        }
        if answer.close {
            session.set_keepalive(None);
        }
        let end = answer.body.is_empty() || session.req_header().method == http::Method::HEAD;
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(Some(answer.body), true).await?;
        }
        Ok(true)
    }
}

/// The host a request is routed on (lower case not applied, without port
/// and one trailing dot: [`router::host_of`]). An absolute-form target's
/// authority is the host (RFC 9112 §3.2.2); a `Host` line beside it must
/// name the same host. Refused (`Err`): two `Host` lines, a host with
/// userinfo or any byte an authority cannot hold, an authority and a
/// `Host` that disagree, and HTTP/1.1 without a host (RFC 9112 §3.2).
fn request_host<'a>(req: &'a Parts, raw_target: &'a [u8]) -> std::result::Result<&'a str, ()> {
    let mut lines = req.headers.get_all(http::header::HOST).iter();
    let header = lines.next();
    if lines.next().is_some() {
        return Err(());
    }
    let header = match header {
        Some(v) => {
            let text = v.to_str().map_err(|_| ())?.trim_matches([' ', '\t']);
            router::valid_authority(text).then_some(text).ok_or(())?;
            Some(router::host_of(Some(text)))
        }
        None => None,
    };
    // pingora keeps an absolute-form target's authority off `uri`: read it
    // from the target as sent
    let authority = match req.uri.authority().map(|a| a.as_str()) {
        Some(a) => Some(a),
        None => target_authority(raw_target)?,
    };
    let authority = match authority {
        Some(a) => {
            router::valid_authority(a).then_some(()).ok_or(())?;
            Some(router::host_of(Some(a)))
        }
        None => None,
    };
    match (authority, header) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(()),
        (Some(a), _) => Ok(a),
        (None, Some(h)) => Ok(h),
        (None, None) if req.version == http::Version::HTTP_11 => Err(()),
        (None, None) => Ok(""),
    }
}

/// The authority of an absolute-form request target (`scheme://authority
/// [/path]`); `None` for any other form. `Err`: an absolute form whose
/// authority is not UTF-8.
fn target_authority(target: &[u8]) -> std::result::Result<Option<&str>, ()> {
    if target.first() == Some(&b'/') || target == b"*" {
        return Ok(None);
    }
    let Some(at) = memchr::memmem::find(target, b"://") else {
        return Ok(None);
    };
    let scheme = &target[..at];
    if scheme.is_empty()
        || !scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
    {
        return Ok(None);
    }
    let rest = &target[at + 3..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).map(Some).map_err(|_| ())
}

/// A browser navigation: GET or HEAD whose `Accept` mentions `text/html`.
fn is_browser(req: &Parts) -> bool {
    (req.method == http::Method::GET || req.method == http::Method::HEAD)
        && req
            .headers
            .get_all(http::header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains("text/html")))
}

/// `<login_redirect>?return_to=<url-encoded original path and query>`.
fn login_location(base: &str, uri: &http::Uri) -> String {
    let original = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sep = if base.contains('?') { '&' } else { '?' };
    let encoded =
        percent_encoding::utf8_percent_encode(original, percent_encoding::NON_ALPHANUMERIC);
    format!("{base}{sep}return_to={encoded}")
}

fn allowed_origins(rt: &Runtime) -> &[String] {
    rt.sessions
        .as_ref()
        .map_or(&[], |s| s.allowed_origins.as_slice())
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

fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

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
impl ProxyHttp for Gateway {
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
        let rt = self.state.runtime();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted =
            peer.is_some_and(|p| rt.server.trusted_proxies.iter().any(|n| n.contains(&p)));
        strip_reserved(session.req_header_mut(), &rt, trusted);
        let req = session.req_header();
        let mut verdict = self.begin(req, req.raw_path(), peer, rt, ctx);
        let needs_body = ctx
            .matched()
            .map(|r| (!r.limits.is_empty(), r.limits_need_body));
        if verdict.is_ok() {
            if let Some((true, need_body)) = needs_body {
                let body = if need_body {
                    match read_body(session).await {
                        Ok(b) => Some(b),
                        Err(reason) => {
                            ctx.reason = reason;
                            let close = has_body(&session.req_header().headers);
                            return self
                                .send(session, Answer::deny(reason, Vec::new(), close))
                                .await;
                        }
                    }
                } else {
                    None
                };
                verdict = self
                    .check_limits(session.req_header(), body.as_ref(), ctx)
                    .await;
            }
        }
        if verdict.is_ok() {
            verdict = self.authenticate(session.req_header(), ctx).await;
        }
        match verdict {
            Ok(()) => Ok(false),
            Err(answer) => self.send(session, answer).await,
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if let Some((policy, state)) = self.upstream_answered(status, ctx).await {
            upstream_response.insert_header("RateLimit-Policy", policy)?;
            upstream_response.insert_header("RateLimit", state)?;
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.peer(ctx)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.connected(ctx);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if self.connect_failed(ctx) {
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
        self.forward_headers(ctx, xff, upstream_request)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = Self::error_status(e);
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
            let answer = self.upstream_error(ctx);
            let _ = self.send(session, answer).await;
        } else if code > 0 {
            let _ = session.respond_error(code).await;
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
        self.finish(req.method.as_str(), req.uri.path(), status, e, ctx)
            .await;
    }
}
