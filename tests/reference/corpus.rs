//! The differential corpus: raw HTTP/1.1 client requests, and how the
//! scripted upstream answers them ([`Kind`]). `tests/differential.rs` runs
//! every case on both transports; `tests/http2.rs` replays the cases an
//! HTTP/2 client can express (one well-formed request, origin-form target,
//! no HTTP/1 framing or connection fields) over HTTP/2 and HTTP/1.1.
#![allow(dead_code)]

use std::time::Duration;

/// How the upstream answers a case's requests (the follow-up requests,
/// `/follow/...`, always get [`Kind::Length`]). Every answer carries
/// `X-Up-Id` (the request's `X-Req-Id`) and, where it has a body, the body
/// `n=<count> id=<X-Req-Id> path=<target>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// `Content-Length` (a HEAD: the length, no body).
    #[default]
    Length,
    /// Chunked in two chunks, with a trailer field.
    ChunkedTrailers,
    /// Chunked with bare LF line ends.
    ChunkedBareLf,
    /// No length: the body ends when the upstream closes.
    Close,
    NoContent,
    NotModified,
    /// `103 Early Hints`, then the answer.
    EarlyHints,
    /// Misbehaving: another whole response right after the answer, in the
    /// same write.
    AfterEnd,
    /// Misbehaving: another whole response 100 ms after the answer, while
    /// the connection idles.
    Late,
    /// Misbehaving: `Content-Length: 3` and `Transfer-Encoding: chunked`
    /// on a longer chunked body, connection kept open.
    ClTe,
    /// Misbehaving: a 204 with a length and a body.
    NoContentWithBody,
    /// Misbehaving: a body even for HEAD.
    HeadWithBody,
    /// `Content-Length`, then the connection closed 150 ms later, whatever
    /// was sent on it meanwhile: an idle timeout firing just as a pooled
    /// connection is reused (the follow-up request, sent at once).
    IdleClose,
}

pub struct Case {
    pub name: &'static str,
    /// Raw requests: `{id}` becomes `<name>.<index>`, `{tok}` a valid token.
    pub requests: Vec<String>,
    /// All requests in one write (else one at a time on one connection,
    /// a new one after an answer that closes it).
    pub pipelined: bool,
    pub kind: Kind,
    /// Wait before the follow-up request, listening for stray bytes on
    /// the case's connection meanwhile (zero: the follow-up goes at once,
    /// then the listening).
    pub settle: Duration,
}

pub fn case<const N: usize>(name: &'static str, kind: Kind, requests: [String; N]) -> Case {
    Case {
        name,
        requests: requests.into(),
        pipelined: false,
        kind,
        settle: Duration::ZERO,
    }
}

impl Case {
    fn pipelined(mut self) -> Case {
        self.pipelined = true;
        self
    }
    fn settle(mut self, ms: u64) -> Case {
        self.settle = Duration::from_millis(ms);
        self
    }
}

pub const AUTH: &str = "Authorization: Bearer {tok}\r\n";

/// `METHOD target HTTP/1.1`, `Host: gw.test`, `fields` (whole lines), the
/// request id.
pub fn rq(method: &str, target: &str, fields: &str) -> String {
    host_rq(method, target, "gw.test", fields)
}

pub fn host_rq(method: &str, target: &str, host: &str, fields: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{fields}X-Req-Id: {{id}}\r\n\r\n")
}

pub fn get(target: &str, fields: &str) -> String {
    rq("GET", target, fields)
}

/// A request from its head's lines (without line ends) and its body.
pub fn msg(lines: &[&str], body: &str) -> String {
    let mut m: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    m.push_str("\r\n");
    m.push_str(body);
    m
}

pub fn cases() -> Vec<Case> {
    use Kind::*;
    let tok = AUTH;
    vec![
        // plain GET/HEAD, with and without a valid token
        case("get-open", Length, [get("/open/x", "")]),
        case("head-open", Length, [rq("HEAD", "/open/x", "")]),
        case("get-open-token", Length, [get("/open/x", tok)]),
        case("get-open-query", Length, [get("/open/x?a=1&b=%20c", "")]),
        case("get-api-no-token", Length, [get("/api/x", "")]),
        case("get-api-token", Length, [get("/api/x?q=1", tok)]),
        // gRPC refusals are gRPC statuses (HTTP 200, trailers-only) on
        // both transports; a forwarded one is the upstream's
        case(
            "grpc-api-no-token",
            Length,
            [get("/api/x", "Content-Type: application/grpc\r\n")],
        ),
        case(
            "grpc-api-bad-token",
            Length,
            [get(
                "/api/x",
                "Content-Type: application/grpc+proto\r\nAuthorization: Bearer not.a.token\r\n",
            )],
        ),
        case(
            "grpc-open",
            Length,
            [get("/open/x", "Content-Type: application/grpc\r\n")],
        ),
        case("head-api-no-token", Length, [rq("HEAD", "/api/x", "")]),
        case("head-api-token", Length, [rq("HEAD", "/api/x", tok)]),
        case(
            "get-api-bad-token",
            Length,
            [get("/api/x", "Authorization: Bearer not.a.token\r\n")],
        ),
        case(
            "get-admin-no-token",
            Length,
            [host_rq("GET", "/x", "admin.local", "")],
        ),
        case(
            "get-admin-token",
            Length,
            [host_rq("GET", "/x", "admin.local", tok)],
        ),
        case(
            "head-admin-no-token",
            Length,
            [host_rq("HEAD", "/x", "admin.local", "")],
        ),
        case(
            "admin-host-upper",
            Length,
            [host_rq("GET", "/x", "ADMIN.LOCAL", "")],
        ),
        case(
            "admin-host-port",
            Length,
            [host_rq("GET", "/x", "admin.local:8080", "")],
        ),
        case(
            "conn-close-api",
            Length,
            [get("/api/x", "Connection: close\r\n")],
        ),
        case(
            "conn-close-token",
            Length,
            [get("/api/x", &format!("Connection: close\r\n{tok}"))],
        ),
        case(
            "conn-nominates",
            Length,
            [get(
                "/open/x",
                "Connection: keep-alive, X-Drop\r\nX-Drop: 1\r\n",
            )],
        ),
        // paths
        case("pct-api", Length, [get("/%61pi/x", "")]),
        case("pct-api-token", Length, [get("/%61pi/x", tok)]),
        case("pct-slash", Length, [get("/api%2fx", "")]),
        case("params-api", Length, [get("/api;x/x", "")]),
        case("params-api-last", Length, [get("/api/x;y", "")]),
        case("dots-parent", Length, [get("/open/../api/x", "")]),
        case("dots-encoded", Length, [get("/open/%2e%2e/api/x", "")]),
        case("dots-current", Length, [get("/api/./x", "")]),
        case("dots-params", Length, [get("/open/..;/api/x", "")]),
        case("double-slash", Length, [get("//api//x", "")]),
        case("fragment", Length, [get("/open/x#/../../api/x", "")]),
        case("upper-api", Length, [get("/API/x", "")]),
        case("target-pct-slash-first", Length, [get("%2f/api/x", "")]),
        case("target-params-first", Length, [get(";x/api/x", "")]),
        case("target-asterisk", Length, [rq("OPTIONS", "*", "")]),
        // Host tricks
        case(
            "host-trailing-dot",
            Length,
            [host_rq("GET", "/x", "admin.local.", "")],
        ),
        case(
            "absolute-http10-no-host",
            Length,
            [msg(
                &["GET http://admin.local/x HTTP/1.0", "X-Req-Id: {id}"],
                "",
            )],
        ),
        case(
            "absolute-other-host",
            Length,
            [msg(
                &[
                    "GET http://admin.local/x HTTP/1.1",
                    "Host: gw.test",
                    "X-Req-Id: {id}",
                ],
                "",
            )],
        ),
        case(
            "absolute-api",
            Length,
            [msg(
                &[
                    "GET http://gw.test/api/x HTTP/1.1",
                    "Host: gw.test",
                    "X-Req-Id: {id}",
                ],
                "",
            )],
        ),
        case(
            "host-duplicate",
            Length,
            [msg(
                &[
                    "GET /x HTTP/1.1",
                    "Host: gw.test",
                    "Host: admin.local",
                    "X-Req-Id: {id}",
                ],
                "",
            )],
        ),
        case(
            "host-duplicate-admin-first",
            Length,
            [msg(
                &[
                    "GET /x HTTP/1.1",
                    "Host: admin.local",
                    "Host: gw.test",
                    "X-Req-Id: {id}",
                ],
                "",
            )],
        ),
        case(
            "host-userinfo",
            Length,
            [host_rq("GET", "/x", "www@admin.local", "")],
        ),
        case(
            "host-empty",
            Length,
            [msg(
                &["GET /open/x HTTP/1.1", "Host:", "X-Req-Id: {id}"],
                "",
            )],
        ),
        case(
            "host-missing",
            Length,
            [msg(&["GET /open/x HTTP/1.1", "X-Req-Id: {id}"], "")],
        ),
        case(
            "http10-open",
            Length,
            [msg(&["GET /open/x HTTP/1.0", "X-Req-Id: {id}"], "")],
        ),
        // underscore headers
        case(
            "us-content-length",
            Length,
            [get("/open/x", "Content_Length: 5\r\n")],
        ),
        case(
            "us-transfer-encoding",
            Length,
            [get("/open/x", "Transfer_Encoding: chunked\r\n")],
        ),
        case(
            "us-xff",
            Length,
            [get("/open/x", "X_Forwarded_For: 6.6.6.6\r\n")],
        ),
        case(
            "us-subject-open",
            Length,
            [get("/open/x", "X_Auth_Subject: admin\r\n")],
        ),
        case(
            "us-subject-token",
            Length,
            [get(
                "/api/x",
                "X_Auth_Subject: admin\r\nAuthorization: Bearer {tok}\r\n",
            )],
        ),
        // spoofed identity and forwarding headers
        case(
            "spoof-subject-open",
            Length,
            [get("/open/x", "X-Auth-Subject: admin\r\n")],
        ),
        case(
            "spoof-subject-no-token",
            Length,
            [get("/api/x", "X-Auth-Subject: admin\r\n")],
        ),
        case(
            "spoof-subject-token",
            Length,
            [get(
                "/api/x",
                "X-Auth-Subject: admin\r\nAuthorization: Bearer {tok}\r\n",
            )],
        ),
        case(
            "spoof-roles-lower",
            Length,
            [get(
                "/api/x",
                "x-auth-roles: root\r\nAuthorization: Bearer {tok}\r\n",
            )],
        ),
        case(
            "spoof-xff",
            Length,
            [get("/open/x", "X-Forwarded-For: 6.6.6.6\r\n")],
        ),
        case(
            "spoof-xff-twice",
            Length,
            [get(
                "/open/x",
                "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n",
            )],
        ),
        case(
            "spoof-xfp",
            Length,
            [get("/open/x", "X-Forwarded-Proto: https\r\n")],
        ),
        // bodies (the general path on both)
        case(
            "post-open",
            Length,
            [msg(
                &[
                    "POST /open/x HTTP/1.1",
                    "Host: gw.test",
                    "Content-Length: 5",
                    "X-Req-Id: {id}",
                ],
                "hello",
            )],
        ),
        case(
            "post-api-no-token",
            Length,
            [msg(
                &[
                    "POST /api/x HTTP/1.1",
                    "Host: gw.test",
                    "Content-Length: 5",
                    "X-Req-Id: {id}",
                ],
                "hello",
            )],
        ),
        case(
            "get-with-body",
            Length,
            [msg(
                &[
                    "GET /open/x HTTP/1.1",
                    "Host: gw.test",
                    "Content-Length: 5",
                    "X-Req-Id: {id}",
                ],
                "hello",
            )],
        ),
        case(
            "post-chunked",
            Length,
            [msg(
                &[
                    "POST /open/x HTTP/1.1",
                    "Host: gw.test",
                    "Transfer-Encoding: chunked",
                    "X-Req-Id: {id}",
                ],
                "5\r\nhello\r\n0\r\n\r\n",
            )],
        ),
        // pipelining and keep-alive
        case(
            "pipelined-open",
            Length,
            [get("/open/a", ""), get("/open/b", "")],
        )
        .pipelined(),
        case(
            "pipelined-api-then-open",
            Length,
            [get("/api/a", ""), get("/open/b", "")],
        )
        .pipelined(),
        case(
            "pipelined-head-then-get",
            Length,
            [rq("HEAD", "/open/a", ""), get("/open/b", "")],
        )
        .pipelined(),
        case(
            "pipelined-token-then-none",
            Length,
            [get("/api/a", tok), get("/api/b", "")],
        )
        .pipelined(),
        case(
            "keepalive-sequence",
            Length,
            [
                get("/open/a", ""),
                get("/api/b", ""),
                get("/api/c", tok),
                rq("HEAD", "/open/d", ""),
                get("/open/e", ""),
            ],
        ),
        // upstream framings, each followed by a second request on the
        // same client connection
        case(
            "up-chunked-trailers",
            ChunkedTrailers,
            [get("/open/a", ""), get("/api/b", tok)],
        ),
        case(
            "up-chunked-bare-lf",
            ChunkedBareLf,
            [get("/open/a", ""), get("/api/b", tok)],
        ),
        case(
            "up-close-delimited",
            Close,
            [get("/open/a", ""), get("/api/b", tok)],
        ),
        case("up-close-head", Close, [rq("HEAD", "/open/a", "")]),
        case("up-idle-close", IdleClose, [get("/open/a", "")]),
        case("up-idle-close-head", IdleClose, [rq("HEAD", "/open/a", "")]),
        case(
            "up-204",
            NoContent,
            [get("/open/a", ""), get("/api/b", tok)],
        ),
        case(
            "up-304",
            NotModified,
            [
                get("/open/a", "If-None-Match: \"e1\"\r\n"),
                get("/api/b", tok),
            ],
        ),
        case(
            "up-head-length",
            Length,
            [rq("HEAD", "/open/a", ""), get("/open/b", "")],
        ),
        case(
            "up-head-chunked",
            ChunkedTrailers,
            [rq("HEAD", "/open/a", ""), get("/open/b", "")],
        ),
        case(
            "up-103",
            EarlyHints,
            [get("/open/a", ""), get("/api/b", tok)],
        ),
        // misbehaving upstreams
        case(
            "up-after-end",
            AfterEnd,
            [get("/open/a", ""), get("/open/b", "")],
        ),
        case(
            "up-after-end-pipelined",
            AfterEnd,
            [get("/open/a", ""), get("/open/b", "")],
        )
        .pipelined(),
        case("up-after-end-head", AfterEnd, [rq("HEAD", "/open/a", "")]),
        case("up-late", Late, [get("/open/a", "")]).settle(300),
        case("up-late-head", Late, [rq("HEAD", "/open/a", "")]).settle(300),
        case("up-cl-te", ClTe, [get("/open/a", ""), get("/open/b", "")]),
        case(
            "up-204-with-body",
            NoContentWithBody,
            [get("/open/a", ""), get("/open/b", "")],
        ),
        case(
            "up-head-with-body",
            HeadWithBody,
            [rq("HEAD", "/open/a", ""), get("/open/b", "")],
        ),
    ]
}
