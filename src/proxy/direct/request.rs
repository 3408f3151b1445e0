//! The client's side of a direct request: its head parsed once with
//! `httparse` into `http` parts whose header values are slices of the head
//! (no copies), the reserved headers dropped before any step sees them,
//! and the head sent upstream (the client's forwardable lines as they
//! came, then the pipeline's fields). Any doubt gives the head back to
//! the general transport.

use crate::identity;
use crate::pipeline::{Ctx, HeaderSink, Pipeline};
use crate::proxy::respond::line;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method};
use pingora::{Error, ErrorType, Result};

/// Most headers in a head the direct path takes (more: the general path).
const MAX_HEADERS: usize = 64;
/// Most proxy-set forwarding fields in a head the direct path takes.
const MAX_PROXY_SET: usize = 8;
/// A request head the direct path takes: the head's bytes, the request as
/// `http` parts for the gateway's phases (header values are slices of the
/// head, not copies), and where its forwardable header lines are.
pub struct Parsed {
    pub(super) buf: Bytes,
    pub(super) parts: Parts,
    /// Spans (name, value) in `buf` of the headers forwarded as they came.
    pub(super) forward: [(u32, u32, u32, u32); MAX_HEADERS],
    pub(super) forwarded: usize,
    /// Request line's method and target spans.
    pub(super) method: (u32, u32),
    pub(super) target: (u32, u32),
    /// The client's first `X-Forwarded-For`.
    pub(super) xff: Option<(u32, u32)>,
    /// Forwarding fields only a trusted proxy may set
    /// ([`identity::is_proxy_set`]): forwarded from a trusted peer only.
    pub(super) proxy_set: [(u32, u32, u32, u32); MAX_PROXY_SET],
    pub(super) proxy_sets: usize,
    /// The client sent `Connection: close`.
    pub(super) close: bool,
}

impl Parsed {
    /// The request target as sent.
    pub fn target(&self) -> &[u8] {
        span(&self.buf, self.target)
    }
}

/// The offset of `part` (a slice of `base`) in `base`.
fn offset(base: &[u8], part: &[u8]) -> u32 {
    (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize) as u32
}

pub(super) fn span(buf: &Bytes, (start, end): (u32, u32)) -> &[u8] {
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
            if identity::DIRECT_REFUSED.has(name) {
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

/// The head sent upstream: the request line, the client's forwardable
/// header lines as they came, the gateway's headers.
pub(super) fn request_head(
    pipeline: &Pipeline,
    req: &Parsed,
    ctx: &Ctx,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.clear();
    out.extend_from_slice(span(&req.buf, req.method));
    out.push(b' ');
    out.extend_from_slice(span(&req.buf, req.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for &(ns, ne, vs, ve) in req.forward.iter().take(req.forwarded) {
        line(out, span(&req.buf, (ns, ne)), span(&req.buf, (vs, ve)));
    }
    if req.proxy_sets > 0 && ctx.peer_trusted() {
        for &(ns, ne, vs, ve) in req.proxy_set.iter().take(req.proxy_sets) {
            line(out, span(&req.buf, (ns, ne)), span(&req.buf, (vs, ve)));
        }
    }
    let xff = req
        .xff
        .and_then(|s| std::str::from_utf8(span(&req.buf, s)).ok());
    pipeline.forward(ctx, xff, &mut LineSink(out))?;
    out.extend_from_slice(b"\r\n");
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
