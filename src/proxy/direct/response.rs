//! The upstream's side of a direct request: one request/response exchange
//! on an upstream connection. The response head is parsed with `httparse`
//! and rewritten for the client (HTTP/1.1, hop-by-hop fields replaced,
//! the pipeline's `RateLimit` fields, `Date`, `Connection`), the body
//! relayed byte for byte as framed (length, chunked, or to the close), and
//! the connection pooled again only when the body ended exactly where its
//! framing said and nothing followed.

use super::buffers::Buffers;
use super::chunked::Chunked;
use crate::identity;
use crate::pipeline::{Ctx, Pipeline};
use crate::proxy::respond::{connection_line, date_line, line, status_line, write_out};
use crate::upstream::Upstream;
use bytes::Buf;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most headers in an upstream response head.
const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest upstream response head, as pingora's (`MAX_HEADER_SIZE`).
const MAX_RESPONSE_HEAD: usize = 1_048_575;
/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How one exchange on an upstream connection ended.
pub(super) enum Exchange {
    /// The response reached the client (`keep`: the client connection can
    /// carry the next request).
    Relayed { status: u16, keep: bool },
    /// Failed; `sent`: the status already sent to the client, if any (then
    /// the client connection is closed mid-response, there is no answer
    /// left to give).
    Failed {
        error: Box<Error>,
        sent: Option<u16>,
    },
    /// Nothing came back: a pooled connection may have been closed.
    Stale,
}

/// How an upstream response body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy)]
enum Framing {
    None,
    /// This many bytes (left).
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    Close,
}

impl Framing {
    /// How many of `buf`'s bytes (what arrived next) belong to the body,
    /// and whether the body ends with them; the body's bytes as the client
    /// gets them are appended to `out`.
    fn take(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(usize, bool), &'static str> {
        let (n, done) = match self {
            Framing::None => (0, true),
            Framing::Length(left) => {
                let n = (buf.len() as u64).min(*left);
                *left -= n;
                (n as usize, *left == 0)
            }
            Framing::Chunked(c) => {
                let used = c.advance(buf, out)?;
                return Ok((used, c.done()));
            }
            Framing::Close => (buf.len(), false),
        };
        out.extend_from_slice(&buf[..n]);
        Ok((n, done))
    }
}

/// Whether a `Connection` value (a comma list) has `token`.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One request/response exchange on an upstream connection.
pub(super) struct Relay<'a> {
    pub(super) client: &'a mut Stream,
    pub(super) upstream: Stream,
    pub(super) bufs: &'a mut Buffers,
    pub(super) head_only: bool,
    pub(super) keep_client: bool,
    pub(super) read_timeout: Duration,
    /// Some of the final response reached the client (after that, a
    /// failure can only close the connection; before it, the client gets a
    /// 502, as from the general path).
    pub(super) wrote: bool,
}

/// What a response head said.
struct ResponseHead {
    status: u16,
    /// Its length in the buffer.
    len: usize,
    framing: Framing,
    /// The upstream keeps the connection open after this response, and
    /// nothing may follow the body's end: not when the body ended by rule
    /// (HEAD, 204, 304) while the head announced one, nor after a
    /// `Content-Length` beside a `Transfer-Encoding` (RFC 9112 §6.3: close
    /// after it), since an upstream that sends the announced bytes anyway
    /// would leave them for the next exchange.
    upstream_keep: bool,
    /// It has a `Date`.
    dated: bool,
}

impl Relay<'_> {
    pub(super) async fn run(
        mut self,
        pipeline: &Pipeline,
        ctx: &mut Ctx,
        upstream: &Upstream,
        addr: SocketAddr,
    ) -> Exchange {
        if self.upstream.write_all(&self.bufs.req).await.is_err()
            || self.upstream.flush().await.is_err()
        {
            return Exchange::Stale;
        }
        self.bufs.resp.clear();
        let mut received = false;
        let head = loop {
            let head = match self.parse_head() {
                Ok(Some(h)) => h,
                Ok(None) => {
                    match self.read_upstream().await {
                        Ok(0) if !received => return Exchange::Stale,
                        Ok(0) => {
                            let error = Error::explain(
                                ErrorType::ConnectionClosed,
                                "upstream closed the connection mid-head",
                            )
                            .into_up();
                            return Exchange::Failed { error, sent: None };
                        }
                        Ok(_) => received = true,
                        // nothing came back: the connection was dead (or
                        // the upstream dropped it unanswered)
                        Err(e) if !received && matches!(e.etype(), ErrorType::ReadError) => {
                            return Exchange::Stale
                        }
                        Err(error) => return Exchange::Failed { error, sent: None },
                    }
                    continue;
                }
                Err(error) => return Exchange::Failed { error, sent: None },
            };
            if (100..200).contains(&head.status) {
                if head.status == 101 {
                    let error = Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "upstream switched protocols unasked",
                    )
                    .into_up();
                    return Exchange::Failed { error, sent: None };
                }
                // 103 Early Hints and the like: relayed, then the real answer
                end_head(&mut self.bufs.out, None, true);
                if let Err(e) = write_out(self.client, &self.bufs.out).await {
                    return Exchange::Failed {
                        error: e.into_down(),
                        sent: None,
                    };
                }
                self.bufs.resp.advance(head.len);
                continue;
            }
            break head;
        };
        let status = head.status;
        let limits = pipeline.answered(status, ctx).await;
        let close_delimited = matches!(head.framing, Framing::Close);
        let keep = self.keep_client && !close_delimited;
        let tail = ResponseTail { limits, keep };
        end_head(&mut self.bufs.out, Some(&tail), head.dated);
        self.bufs.resp.advance(head.len);
        match self.relay_body(head.framing).await {
            Ok(clean) => {
                if clean && head.upstream_keep && !close_delimited {
                    upstream.pool.put(addr, self.upstream);
                }
                Exchange::Relayed { status, keep }
            }
            Err(error) if self.wrote => Exchange::Failed {
                error,
                sent: Some(status),
            },
            Err(error) => {
                self.bufs.out.clear();
                Exchange::Failed { error, sent: None }
            }
        }
    }

    /// Reads more of the response (with the upstream's read timeout).
    async fn read_upstream(&mut self) -> Result<usize> {
        let resp = &mut self.bufs.resp;
        if resp.capacity() - resp.len() < READ_CHUNK / 2 {
            resp.reserve(READ_CHUNK);
        }
        match pingora::time::timeout(self.read_timeout, self.upstream.read_buf(resp)).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Error::e_because(ErrorType::ReadError, "reading from the upstream", e)
                .map_err(|e| e.into_up()),
            Err(_) => {
                Err(Error::explain(ErrorType::ReadTimedout, "upstream read timed out").into_up())
            }
        }
    }

    /// The response head at the start of the buffer, if it is all there;
    /// its rewrite for the client in `out`, up to the gateway's fields
    /// ([`end_head`]): HTTP/1.1, its status and reason, its fields but the
    /// hop-by-hop ones (`Connection`, `Keep-Alive`, `Proxy-Connection`)
    /// and, when a `Transfer-Encoding` frames the body, `Content-Length`.
    fn parse_head(&mut self) -> Result<Option<ResponseHead>> {
        let head_only = self.head_only;
        let Buffers { resp: buf, out, .. } = &mut *self.bufs;
        let buf = &buf[..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let mut config = httparse::ParserConfig::default();
        config.allow_spaces_after_header_name_in_responses(true);
        let len = match config.parse_response(&mut resp, buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "upstream response head too large",
                )
                .into_up())
            }
            Err(e) => {
                return Err(Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    format!("upstream response head: {e}"),
                )
                .into_up())
            }
        };
        let status = resp.code.unwrap_or(0);
        let http11 = resp.version == Some(1);
        let mut length: Option<u64> = None;
        let mut encoded = false;
        let mut chunked = false;
        let mut close = false;
        let mut keep_alive = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value.trim_ascii())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|_| h.value.trim_ascii().iter().all(u8::is_ascii_digit));
                match (v, length) {
                    (Some(v), None) => length = Some(v),
                    (Some(v), Some(l)) if v == l => {}
                    _ => {
                        return Err(Error::explain(
                            ErrorType::InvalidHTTPHeader,
                            "upstream response with an invalid Content-Length",
                        )
                        .into_up())
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                // chunked must be the last coding (RFC 9112 §6.3)
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                close |= has_token(h.value, b"close");
                keep_alive |= has_token(h.value, b"keep-alive");
            }
        }
        let by_rule = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        let announced = encoded || length.is_some_and(|l| l > 0);
        let framing = if by_rule {
            Framing::None
        } else if encoded && chunked {
            Framing::Chunked(Chunked::default())
        } else if encoded {
            Framing::Close
        } else {
            match length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            }
        };
        // RFC 9112 §9.3: 1.1 persists unless closed; 1.0 only when asked,
        // and never after a Transfer-Encoding (§6.1)
        let upstream_keep = !close
            && (if http11 { true } else { keep_alive && !encoded })
            && (!by_rule || !announced)
            && (!encoded || length.is_none());
        out.clear();
        status_line(out, status, resp.reason.map(str::as_bytes));
        let mut dated = false;
        for h in resp.headers.iter() {
            let n = h.name;
            if identity::RESPONSE_HOPS.has(n)
                || (encoded && n.eq_ignore_ascii_case("content-length"))
            {
                continue;
            }
            dated |= n.eq_ignore_ascii_case("date");
            line(out, n.as_bytes(), h.value);
        }
        Ok(Some(ResponseHead {
            status,
            len,
            framing,
            upstream_keep,
            dated,
        }))
    }

    /// Sends the head in `out` and the body after it. `Ok(true)`: the
    /// body ended exactly where the framing said (the connection is fit
    /// for another exchange).
    async fn relay_body(&mut self, mut framing: Framing) -> Result<bool> {
        loop {
            let Buffers { resp, out, .. } = &mut *self.bufs;
            let (used, done) = framing
                .take(resp, out)
                .map_err(|e| Error::explain(ErrorType::InvalidHTTPHeader, e).into_up())?;
            resp.advance(used);
            if done {
                // anything after the end: the connection is not fit to reuse
                let clean = self.bufs.resp.is_empty();
                self.flush_out().await?;
                return Ok(clean);
            }
            // not done: all of the buffer was body
            self.flush_out().await?;
            if self.read_upstream().await? == 0 {
                return match framing {
                    Framing::Close => Ok(false),
                    _ => Err(Error::explain(
                        ErrorType::ConnectionClosed,
                        "upstream closed mid-body",
                    )
                    .into_up()),
                };
            }
        }
    }

    /// Writes what `out` holds to the client.
    async fn flush_out(&mut self) -> Result<()> {
        if !self.bufs.out.is_empty() {
            self.wrote = true;
            let r = write_out(self.client, &self.bufs.out).await;
            self.bufs.out.clear();
            r.map_err(|e| e.into_down())?;
        }
        Ok(())
    }
}

/// What the gateway adds to a final response head.
struct ResponseTail {
    /// `RateLimit-Policy` and `RateLimit`.
    limits: Option<(String, String)>,
    /// The client connection stays open.
    keep: bool,
}

/// Ends a response head [`Relay::parse_head`] began: for a final
/// response the rate-limit headers, `Date` when the upstream sent none,
/// and `Connection`; then the blank line.
fn end_head(out: &mut Vec<u8>, tail: Option<&ResponseTail>, dated: bool) {
    if let Some(tail) = tail {
        if let Some((policy, state)) = &tail.limits {
            line(out, b"RateLimit-Policy", policy.as_bytes());
            line(out, b"RateLimit", state.as_bytes());
        }
        if !dated {
            date_line(out);
        }
        connection_line(out, tail.keep);
    }
    out.extend_from_slice(b"\r\n");
}
