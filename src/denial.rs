//! Why a request was not forwarded, and the one place that turns that into a
//! response. Every reason is a contract code (also the metrics label and the
//! log field), so the status, challenge and JSON body can never drift apart.

use bytes::Bytes;
use std::borrow::Cow;

/// A contract reason code. `Ok` is the label of allowed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The request was allowed (metrics/log label only).
    Ok,
    MissingCredentials,
    Malformed,
    BadSignature,
    UnknownKey,
    AlgNotAllowed,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    Revoked,
    SessionNotFound,
    BadCookieSignature,
    InsufficientRole,
    InsufficientScope,
    Csrf,
    RateLimited,
    StoreUnavailable,
    KeysUnavailable,
    NoRoute,
    UpstreamError,
    /// A rate-limited route's body could not be read safely and forwarded
    /// whole (a rare chunked pattern): 413 rather than lose bytes.
    BodyTooLarge,
    /// The request line itself is unacceptable (dot-segments in the path):
    /// 400 before any route is chosen, so a prefix can never be escaped.
    BadRequest,
    /// The request head did not arrive within `request_header_timeout`
    /// (slowloris): 408, then the connection is closed.
    HeadTimeout,
    /// The request head is over `max_header_bytes`: 431.
    HeadTooLarge,
}

/// What the client gets back for a denial: built from static parts so a
/// denial allocates nothing but the response header itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyResponse {
    pub status: u16,
    pub challenge: Option<&'static str>,
    pub body: &'static str,
}

macro_rules! body {
    ($err:literal, $reason:literal) => {
        concat!("{\"error\":\"", $err, "\",\"reason\":\"", $reason, "\"}")
    };
}

const CH_REALM: &str = "Bearer realm=\"authgate\"";
const CH_INVALID: &str = "Bearer error=\"invalid_token\"";
const CH_SCOPE: &str = "Bearer error=\"insufficient_scope\"";

impl Reason {
    /// The contract's reason code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::MissingCredentials => "missing_credentials",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Revoked => "revoked",
            Reason::SessionNotFound => "session_not_found",
            Reason::BadCookieSignature => "bad_cookie_signature",
            Reason::InsufficientRole => "insufficient_role",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::Csrf => "csrf",
            Reason::RateLimited => "rate_limited",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::NoRoute => "no_route",
            Reason::UpstreamError => "upstream_error",
            Reason::BadRequest => "malformed",
            Reason::BodyTooLarge => "malformed",
            Reason::HeadTimeout => "malformed",
            Reason::HeadTooLarge => "malformed",
        }
    }

    /// The response for this reason; `Ok` has none and maps to a 500 so a
    /// logic error can never look like success.
    pub const fn response(self) -> DenyResponse {
        let (status, challenge, body) = match self {
            Reason::Ok => (500, None, body!("internal", "ok")),
            Reason::MissingCredentials => (
                401,
                Some(CH_REALM),
                body!("unauthorized", "missing_credentials"),
            ),
            Reason::Malformed => (401, Some(CH_INVALID), body!("invalid_token", "malformed")),
            Reason::BadSignature => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "bad_signature"),
            ),
            Reason::UnknownKey => (401, Some(CH_INVALID), body!("invalid_token", "unknown_key")),
            Reason::AlgNotAllowed => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "alg_not_allowed"),
            ),
            Reason::Expired => (401, Some(CH_INVALID), body!("invalid_token", "expired")),
            Reason::NotYetValid => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "not_yet_valid"),
            ),
            Reason::WrongIssuer => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "wrong_issuer"),
            ),
            Reason::WrongAudience => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "wrong_audience"),
            ),
            Reason::Revoked => (401, Some(CH_INVALID), body!("invalid_token", "revoked")),
            Reason::SessionNotFound => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "session_not_found"),
            ),
            Reason::BadCookieSignature => (
                401,
                Some(CH_INVALID),
                body!("invalid_token", "bad_cookie_signature"),
            ),
            Reason::InsufficientRole => {
                (403, Some(CH_SCOPE), body!("forbidden", "insufficient_role"))
            }
            Reason::InsufficientScope => (
                403,
                Some(CH_SCOPE),
                body!("forbidden", "insufficient_scope"),
            ),
            Reason::Csrf => (403, None, body!("forbidden", "csrf")),
            Reason::RateLimited => (429, None, body!("rate_limited", "rate_limited")),
            Reason::StoreUnavailable => (503, None, body!("unavailable", "store_unavailable")),
            Reason::KeysUnavailable => (503, None, body!("unavailable", "keys_unavailable")),
            Reason::NoRoute => (404, None, body!("not_found", "no_route")),
            Reason::UpstreamError => (502, None, body!("bad_gateway", "upstream_error")),
            Reason::BadRequest => (400, None, body!("bad_request", "malformed")),
            Reason::BodyTooLarge => (413, None, body!("payload_too_large", "malformed")),
            Reason::HeadTimeout => (408, None, body!("request_timeout", "malformed")),
            Reason::HeadTooLarge => (
                431,
                None,
                body!("request_header_fields_too_large", "malformed"),
            ),
        };
        DenyResponse {
            status,
            challenge,
            body,
        }
    }

    /// The `outcome` label: denials are the client's doing, 5xx are ours.
    pub const fn outcome(self) -> &'static str {
        match self {
            Reason::Ok => "allowed",
            Reason::StoreUnavailable | Reason::KeysUnavailable | Reason::UpstreamError => "error",
            _ => "denied",
        }
    }
}

/// A response the gateway writes itself (a denial, a redirect, the
/// assertion JWKS), built without a session; `proxy::respond` writes it
/// on every transport, so all of them send the same status, fields and
/// body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Bytes,
    /// The request may still have a body on the wire: close after answering.
    pub close: bool,
}

impl Answer {
    /// A denial: status, challenge, JSON body, always with a
    /// Content-Length (pingora#766), never cached. `close`: the connection
    /// is closed after it.
    pub fn deny(
        reason: Reason,
        extra: Vec<(&'static str, Cow<'static, str>)>,
        close: bool,
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
            close,
        }
    }

    /// A browser's way to the login page: 302 to `location`, no body.
    pub fn redirect(location: String, close: bool) -> Answer {
        Answer {
            status: 302,
            headers: vec![
                ("Location", Cow::Owned(location)),
                ("Content-Length", Cow::Borrowed("0")),
                ("Cache-Control", Cow::Borrowed("no-store")),
            ],
            body: Bytes::new(),
            close,
        }
    }

    /// A JSON document the gateway serves (the assertion JWKS).
    pub fn json(status: u16, body: Bytes, cache_control: &'static str) -> Answer {
        Answer {
            status,
            headers: vec![
                ("Content-Type", Cow::Borrowed("application/json")),
                ("Content-Length", Cow::Owned(body.len().to_string())),
                ("Cache-Control", Cow::Borrowed(cache_control)),
            ],
            body,
            close: false,
        }
    }

    /// The same refusal as a gRPC client reads it: HTTP 200, trailers-only
    /// (one HEADERS frame that ends the stream) with `grpc-status` mapped
    /// from the HTTP status ([`grpc_code`]) and `grpc-message` naming the
    /// reason code; the challenge, `Retry-After` and `RateLimit` fields
    /// stay. A gRPC client reports an HTTP error page as a protocol error
    /// (UNKNOWN/INTERNAL), losing why it was refused.
    pub fn grpc(self, reason: &'static str) -> Answer {
        let code = grpc_code(self.status);
        let mut headers = Vec::with_capacity(self.headers.len() + 2);
        headers.push(("Content-Type", Cow::Borrowed("application/grpc")));
        headers.push(("grpc-status", Cow::Borrowed(GRPC_CODES[usize::from(code)])));
        headers.push(("grpc-message", Cow::Borrowed(reason)));
        headers.push(("Content-Length", Cow::Borrowed("0")));
        headers.extend(self.headers.into_iter().filter(|(n, _)| {
            [
                "WWW-Authenticate",
                "Retry-After",
                "RateLimit-Policy",
                "RateLimit",
                "Cache-Control",
            ]
            .iter()
            .any(|k| k.eq_ignore_ascii_case(n))
        }));
        Answer {
            status: 200,
            headers,
            body: Bytes::new(),
            close: self.close,
        }
    }

    /// An error without a contract reason (pingora's client-fault or
    /// internal statuses): empty body, and the connection closes.
    pub fn error(status: u16) -> Answer {
        Answer {
            status,
            headers: vec![
                ("Content-Length", Cow::Borrowed("0")),
                ("Cache-Control", Cow::Borrowed("private, no-store")),
            ],
            body: Bytes::new(),
            close: true,
        }
    }
}

/// Whether a request is gRPC by its `Content-Type`: it starts with
/// `application/grpc` (`application/grpc+proto`, and gRPC-Web's
/// `application/grpc-web*`, whose clients read a trailers-only status from
/// the head too). Its refusals are gRPC statuses.
pub fn is_grpc(content_type: Option<&http::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.as_bytes().get(..16))
        .is_some_and(|p| p.eq_ignore_ascii_case(b"application/grpc"))
}

/// The gRPC status codes 0..=16 as text (a header value without a
/// per-answer allocation).
pub const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The gRPC status for an HTTP status the gateway answers with:
/// UNAUTHENTICATED (16) for 401, PERMISSION_DENIED (7) for 403,
/// RESOURCE_EXHAUSTED (8) for 429 and for a request over a size limit
/// (413, 431), UNAVAILABLE (14) for 502/503/504, INVALID_ARGUMENT (3) for
/// 400, UNIMPLEMENTED (12) for 404 (no route, as gRPC's own HTTP mapping),
/// DEADLINE_EXCEEDED (4) for 408, INTERNAL (13) for 500, UNKNOWN (2) else.
pub fn grpc_code(http: u16) -> u8 {
    match http {
        401 => 16,
        403 => 7,
        429 | 413 | 431 => 8,
        502..=504 => 14,
        400 => 3,
        404 => 12,
        408 => 4,
        500 => 13,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_and_answers() {
        let ct = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert!(is_grpc(ct("application/grpc").as_ref()));
        assert!(is_grpc(ct("application/grpc+proto").as_ref()));
        assert!(is_grpc(ct("Application/GRPC; charset=utf-8").as_ref()));
        assert!(is_grpc(ct("application/grpc-web+proto").as_ref()));
        assert!(!is_grpc(ct("application/grp").as_ref()));
        assert!(!is_grpc(ct("text/application/grpc").as_ref()));
        assert!(!is_grpc(ct("application/json").as_ref()));
        assert!(!is_grpc(None));
        let a = Answer::deny(
            Reason::RateLimited,
            vec![("Retry-After", Cow::Borrowed("3"))],
            false,
        )
        .grpc(Reason::RateLimited.as_str());
        assert_eq!(a.status, 200);
        assert!(a.body.is_empty());
        let h = |n: &str| {
            a.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.to_string())
        };
        assert_eq!(h("grpc-status").as_deref(), Some("8"));
        assert_eq!(h("grpc-message").as_deref(), Some("rate_limited"));
        assert_eq!(h("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(h("retry-after").as_deref(), Some("3"));
        for (http, grpc) in [
            (401, 16),
            (403, 7),
            (429, 8),
            (502, 14),
            (503, 14),
            (404, 12),
        ] {
            assert_eq!(grpc_code(http), grpc, "{http}");
        }
    }

    #[test]
    fn bodies_are_json_with_the_contract_codes() {
        for r in [
            Reason::MissingCredentials,
            Reason::Expired,
            Reason::InsufficientScope,
            Reason::NoRoute,
            Reason::UpstreamError,
        ] {
            let v: serde_json::Value = serde_json::from_str(r.response().body).unwrap();
            assert_eq!(v["reason"], r.as_str());
        }
        assert_eq!(Reason::MissingCredentials.response().status, 401);
        assert_eq!(Reason::InsufficientRole.response().status, 403);
        assert_eq!(Reason::KeysUnavailable.response().status, 503);
    }
}
