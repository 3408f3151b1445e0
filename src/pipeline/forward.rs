//! Step 4: what the upstream learns about the request: `X-Forwarded-For`
//! and `-Proto`, the identity headers, the route's claim headers and the
//! signed assertion. Written into a [`HeaderSink`], so both transports
//! send the same fields (pingora's `RequestHeader` on the general one,
//! head bytes on the direct one).

use super::{Ctx, Pipeline};
use crate::identity::{self, header_safe, AuthMethod};
use http::{HeaderName, HeaderValue};
use pingora::{Error, ErrorType, OrErr, Result};

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

impl Pipeline {
    /// Step 4: the headers the gateway adds to a forwarded request (the client's
    /// copies of them are already gone): `X-Forwarded-For`/`-Proto`, the
    /// identity, the route's claim headers and the signed assertion.
    /// `client_xff`: the client's `X-Forwarded-For`.
    pub fn forward(
        &self,
        ctx: &Ctx,
        client_xff: Option<&str>,
        out: &mut impl HeaderSink,
    ) -> Result<()> {
        if let Some(peer) = ctx.peer {
            let trusted = ctx.peer_trusted();
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
                        .sign(id, &route.name, crate::clock::now_unix())
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
}
