//! The client side of the admin API, for `authgate revoke`: a plain
//! HTTP/1.1 request over loopback or an internal network (the admin
//! listener speaks plain HTTP; put it on a private interface).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why the admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("admin URL must look like http://HOST:PORT, got `{0}`")]
    BadUrl(String),
    #[error("cannot reach the admin API: {0}")]
    Io(#[from] std::io::Error),
    #[error("unreadable response from the admin API")]
    BadResponse,
}

/// POSTs `body` (JSON) to `path` with the bearer token; returns the status
/// and the response body.
pub fn post_json(
    base: &str,
    token: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), AdminClientError> {
    let hostport = base
        .strip_prefix("http://")
        .map(|r| r.trim_end_matches('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'))
        .ok_or_else(|| AdminClientError::BadUrl(base.to_string()))?;
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| AdminClientError::BadUrl(base.to_string()))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or(AdminClientError::BadResponse)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(AdminClientError::BadResponse)?;
    Ok((status, rest.to_string()))
}
