//! Every response the gateway writes itself, on every transport: the
//! pipeline's answers (denials, redirects, the assertion JWKS), the 502
//! and pingora's error statuses when proxying fails, and the listener's
//! 408/431. The status, fields and body come from `denial::Answer`; this
//! module only turns them into bytes (HTTP/1) or into a pingora response.

use crate::denial::{Answer, Reason};
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, OrErr, Result};
use std::borrow::Cow;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait to deliver a 408/431 to a client that does not read, and
/// to drain what it is still sending.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes drained after a refusal before closing anyway.
const LINGER_BYTES: usize = 4 * 1024 * 1024;

/// How long a refused HTTP/2 request's body is read after the answer
/// (the answer never waits for it).
const H2_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// After an answer to an HTTP/2 request whose body may still be coming
/// (`may_have_body`): reads what arrives within [`H2_DRAIN`], so the stream
/// ends cleanly on both sides. A stream reset while the client is still
/// sending its body makes some clients (curl) drop the answer they were
/// sent.
async fn drain_h2(session: &mut Session, may_have_body: bool) {
    if !may_have_body {
        return;
    }
    if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
        let _ = tokio::time::timeout(H2_DRAIN, h2.drain_request_body()).await;
    }
}

/// Writes an [`Answer`] on the general path.
pub async fn send(session: &mut Session, answer: Answer) -> Result<bool> {
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
    if end {
        if let pingora::protocols::http::ServerSession::H2(h2) = session.as_downstream_mut() {
            // pingora's session writes an HTTP/2 head without END_STREAM
            // and ends the stream later; a bodyless answer must end with
            // its head: a gRPC refusal is "trailers-only" (one HEADERS
            // frame with END_STREAM), and gRPC clients read a head that
            // does not end the stream as the start of a response.
            h2.write_response_header(Box::new(resp), true)?;
            drain_h2(session, answer.close).await;
            return Ok(true);
        }
    }
    session.write_response_header(Box::new(resp), end).await?;
    if !end {
        session.write_response_body(Some(answer.body), true).await?;
    }
    drain_h2(session, answer.close).await;
    Ok(true)
}

/// pingora's own answer for an error status without a contract reason
/// (a client fault, an internal error) on the general path; the direct
/// transport writes the same fields from `Ctx::error`.
pub async fn send_error(session: &mut Session, status: u16) {
    let _ = session.respond_error(status).await;
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

/// Answers a refused head and closes: the client learns why (408, 431)
/// instead of seeing a reset.
pub async fn refuse(mut stream: Stream, reason: Reason) {
    // the same status, body and headers as every other denial
    let mut answer = Vec::with_capacity(256);
    answer_bytes(
        &mut answer,
        &Answer::deny(reason, Vec::new(), true),
        false,
        false,
    );
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
        // Lingering close (as nginx's): read what the client is still
        // sending, so closing with unread bytes doesn't reset the connection
        // and destroy the answer before the client reads it.
        let mut sink = [0u8; 8192];
        let mut drained = 0usize;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    })
    .await;
}

/// Writes all of `bytes` to the client.
pub async fn write_out(client: &mut Stream, bytes: &[u8]) -> Result<()> {
    client
        .write_all(bytes)
        .await
        .or_err(ErrorType::WriteError, "writing to the client")?;
    client
        .flush()
        .await
        .or_err(ErrorType::WriteError, "flushing to the client")
}

/// An [`Answer`] as bytes in `out`, with `Date` and `Connection` as every
/// response gets them. A value with a line break (none the gateway makes)
/// is left out rather than let split the head.
pub fn answer_bytes(out: &mut Vec<u8>, answer: &Answer, head_only: bool, keep: bool) {
    out.clear();
    status_line(out, answer.status, None);
    for (name, value) in &answer.headers {
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            continue;
        }
        line(out, name.as_bytes(), value.as_bytes());
    }
    date_line(out);
    connection_line(out, keep);
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&answer.body);
    }
}

pub fn status_line(out: &mut Vec<u8>, status: u16, reason: Option<&[u8]>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut code = itoa::Buffer::new();
    out.extend_from_slice(code.format(status).as_bytes());
    out.push(b' ');
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.unwrap_or(canonical.as_bytes()));
    out.extend_from_slice(b"\r\n");
}

pub fn date_line(out: &mut Vec<u8>) {
    line(
        out,
        b"Date",
        pingora::protocols::http::date::get_cached_date().as_bytes(),
    );
}

pub fn connection_line(out: &mut Vec<u8>, keep: bool) {
    out.extend_from_slice(if keep {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
}

/// One header line.
pub fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
