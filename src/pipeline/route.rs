//! Step 1: which route a request is for, and the refusals that come
//! before any route can be chosen (framing a backend could read otherwise,
//! a target or host that is not what it looks like, a path with escapes).

use super::{has_body, Ctx, Next, Pipeline};
use crate::denial::{Answer, Reason};
use crate::identity;
use crate::router;
use crate::runtime::Runtime;
use bytes::Bytes;
use http::request::Parts;
use std::net::IpAddr;
use std::sync::Arc;

impl Pipeline {
    /// Step 1, up to the route: the config snapshot, the client's
    /// address and scheme, the assertion JWKS, Host, the path and the
    /// route. The client's copies of reserved headers must already be gone
    /// (they are never read here).
    pub fn route(
        &self,
        req: &Parts,
        raw_target: &[u8],
        peer: Option<IpAddr>,
        rt: Arc<Runtime>,
        ctx: &mut Ctx,
    ) -> Next {
        ctx.rt = Some(rt.clone());
        ctx.peer = peer;
        ctx.grpc = crate::denial::is_grpc(req.headers.get(http::header::CONTENT_TYPE));
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
            let trusted = peer.is_some_and(|p| rt.server.trusts(p));
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
            let answer = Answer::json(200, Bytes::from(a.jwks.clone()), "public, max-age=300");
            return ctx.respond(answer);
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
            return ctx.deny(Reason::BadRequest, true);
        }
        // origin-form, absolute-form, or `*` for OPTIONS (RFC 9112 §3.2):
        // any other target (`%2f/api/x`, `;x/api`) is routed by a path
        // the upstream never sees
        let target_ok = raw_target.first() == Some(&b'/')
            || (raw_target == b"*" && req.method == http::Method::OPTIONS)
            || matches!(target_authority(raw_target), Ok(Some(_)));
        if !target_ok {
            return ctx.deny(Reason::BadRequest, true);
        }
        let Ok(host) = request_host(req, raw_target) else {
            return ctx.deny(Reason::BadRequest, true);
        };
        let path = match router::normalize(req.uri.path()) {
            Ok(p) => p,
            Err(_) => return ctx.deny(Reason::BadRequest, has_body(&req.headers)),
        };
        let Some(route_idx) = rt.router.resolve(host, req.method.as_str(), &path) else {
            return ctx.deny(Reason::NoRoute, has_body(&req.headers));
        };
        let Some(route) = rt.routes.get(route_idx) else {
            return ctx.deny(Reason::NoRoute, has_body(&req.headers));
        };
        ctx.route = Some(route_idx);
        ctx.auth_label = route.auth.label();
        Next::Forward
    }
}

/// The host a request is routed on (lower case not applied, without port
/// and one trailing dot: [`router::host_of`]). An absolute-form target's
/// authority is the host (RFC 9112 §3.2.2); a `Host` line beside it must
/// name the same host. Refused (`Err`): two `Host` lines, a host with
/// userinfo or any byte an authority cannot hold, an authority and a
/// `Host` that disagree, and HTTP/1.1 without a host (RFC 9112 §3.2).
pub(crate) fn request_host<'a>(
    req: &'a Parts,
    raw_target: &'a [u8],
) -> std::result::Result<&'a str, ()> {
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
pub(crate) fn target_authority(target: &[u8]) -> std::result::Result<Option<&str>, ()> {
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
