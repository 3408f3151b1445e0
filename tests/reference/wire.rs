//! The HTTP/1 wire helpers of the differential harness: reading heads and
//! bodies off raw bytes (the scripted upstream and the clients), and the
//! normalisation ([`NormReq`]) and backend readings ([`backend_path`],
//! [`backend_host`]) its checks rest on. One copy, shared by the
//! differential test (`tests/differential.rs`) and the `differential` fuzz
//! target (`fuzz/fuzz_targets/differential.rs`), each including it with
//! `#[path]`: the two must frame and normalise requests identically, or the
//! fuzzer and the test disagree on what counts as a difference between the
//! direct and the general path (a fuzz finding the test could not
//! reproduce, or the reverse).
//!
//! Only `std` and `percent-encoding` (a dependency of both crates): nothing
//! here may use what only one includer has.

/// Where the head at the start of `buf` ends (after its blank line; bare
/// LF line ends allowed).
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match buf.get(i + 1) {
            Some(b'\n') => Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
            _ => None,
        }
    })
}

/// A head: its first line and its fields (names as sent, values trimmed).
pub(crate) struct Head {
    pub(crate) first: String,
    pub(crate) fields: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn parse(head: &[u8]) -> Head {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().unwrap_or_default().to_string();
        let fields = lines
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(':') {
                Some((k, v)) => (k.to_string(), v.trim().to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect();
        Head { first, fields }
    }

    /// Every value of a field (name compared ignoring ASCII case).
    pub(crate) fn all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_string();
        self.fields
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.all(name).next()
    }

    pub(crate) fn chunked(&self) -> bool {
        self.all("transfer-encoding")
            .any(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    pub(crate) fn length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }
}

/// Scans a chunked body at the start of `b` (bare LF line ends
/// tolerated), appending its data to `data`: `Ok(Some(end))`, `Ok(None)`
/// when incomplete, `Err` (why, for the test's report) when malformed.
pub(crate) fn chunked_scan(b: &[u8], data: &mut Vec<u8>) -> Result<Option<usize>, String> {
    let line_at = |pos: usize| b[pos..].iter().position(|&c| c == b'\n');
    let mut pos = 0;
    loop {
        let Some(nl) = line_at(pos) else {
            return Ok(None);
        };
        let line = &b[pos..pos + nl];
        let hex: String = line
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .map(|&c| c as char)
            .collect();
        let size = usize::from_str_radix(&hex, 16)
            .map_err(|_| format!("bad chunk size line {:?}", show_bytes(line, 40)))?;
        pos += nl + 1;
        if size == 0 {
            loop {
                let Some(nl) = line_at(pos) else {
                    return Ok(None);
                };
                let line = &b[pos..pos + nl];
                pos += nl + 1;
                if line.is_empty() || line == b"\r" {
                    return Ok(Some(pos));
                }
            }
        }
        // saturating (the fuzz target's copy did, the test's did not): a
        // chunk size near `usize::MAX` ("ffffffffffffffff" fits in 16 hex
        // digits) must read as "incomplete", not overflow
        if b.len() < pos.saturating_add(size) {
            return Ok(None);
        }
        data.extend_from_slice(&b[pos..pos + size]);
        pos += size;
        match (b.get(pos), b.get(pos + 1)) {
            (Some(b'\r'), Some(b'\n')) => pos += 2,
            (Some(b'\n'), _) => pos += 1,
            (Some(b'\r'), None) | (None, _) => return Ok(None),
            _ => return Err("chunk data longer than its size".into()),
        }
    }
}

/// Where the request at the start of `buf` ends (head and body), if it is
/// all there. A malformed chunked body takes the rest of `buf`.
pub(crate) fn request_end(buf: &[u8]) -> Option<usize> {
    let h = head_end(buf)?;
    let head = Head::parse(&buf[..h]);
    if head.chunked() {
        match chunked_scan(&buf[h..], &mut Vec::new()) {
            Ok(end) => end.map(|e| h + e),
            Err(_) => Some(buf.len()),
        }
    } else {
        // checked: a `Content-Length` near `usize::MAX` must read as
        // "incomplete", not overflow (the test's copy added unchecked; the
        // fuzz target's saturated the comparison but still added unchecked
        // in `then_some`, whose argument is always evaluated)
        let n = head.length().unwrap_or(0);
        h.checked_add(n).filter(|&end| buf.len() >= end)
    }
}

/// At most `max` bytes as text, line ends escaped.
pub(crate) fn show_bytes(b: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&b[..b.len().min(max)])
        .replace('\r', "\\r")
        .replace('\n', "\\n");
    if b.len() > max {
        format!("{text}…({} bytes)", b.len())
    } else {
        text
    }
}

/// A request as the upstream received it, normalised for comparing the
/// two paths. Everything not listed here is compared byte for byte (the
/// request line, every header value, the body as framed):
///
/// - header names are lowercased (HTTP field names are case-insensitive;
///   the direct path forwards the client's spelling, pingora may not);
/// - headers are sorted by name, stably, so the order of one name's
///   values is kept (order across names carries no meaning; the direct
///   path appends the gateway's fields after the client's, pingora
///   inserts them among them);
/// - a `Connection` field that only says `keep-alive` and/or `close` is
///   dropped: hop-by-hop, about one connection, which each path manages
///   its own way (the direct path removes the client's, pingora may
///   write its own; neither forwards one today). A `Connection` that
///   nominates other fields is compared;
/// - an absolute-form request-target (`http://host/path`) is compared as
///   its origin-form path, with a `Host` field from its authority when the
///   request has none: how the target and Host are forwarded is each
///   path's own business, what the upstream is asked for is not.
///
/// `X-Forwarded-For` and `X-Forwarded-Proto` are compared as they are
/// (and checked by the test: exactly one each, `127.0.0.1` and `http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormReq {
    pub(crate) line: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl NormReq {
    pub(crate) fn new(raw: &[u8]) -> NormReq {
        let end = head_end(raw).unwrap_or(raw.len());
        let head = Head::parse(&raw[..end]);
        let mut headers: Vec<(String, String)> = head
            .fields
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .filter(|(k, v)| !(k == "connection" && hop_only(v)))
            .collect();
        let mut words: Vec<&str> = head.first.split(' ').collect();
        let origin;
        if let Some((authority, path)) = words.get(1).and_then(|t| absolute(t)) {
            if !headers.iter().any(|(k, _)| k == "host") {
                headers.push(("host".into(), authority.to_string()));
            }
            origin = path.to_string();
            words[1] = &origin;
        }
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        NormReq {
            line: words.join(" "),
            headers,
            body: raw[end..].to_vec(),
        }
    }

    /// The headers as `name: value` lines, for the test's mismatch report
    /// (the fuzz target prints whole requests instead, hence the allow).
    #[allow(dead_code)]
    pub(crate) fn headers_text(&self) -> Vec<String> {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }
}

/// A `Connection` value with only the connection's own options
/// (`keep-alive`, `close`), nominating no other field.
pub(crate) fn hop_only(value: &str) -> bool {
    value.split(',').all(|t| {
        let t = t.trim();
        t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close")
    })
}

/// An absolute-form target's (authority, path).
pub(crate) fn absolute(target: &str) -> Option<(&str, &str)> {
    let rest = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))?;
    Some(match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// The path a backend would serve for `target`: origin-form, query and
/// fragment cut, percent-decoded, each segment's `;params` cut, dot
/// segments resolved, empty segments merged.
pub(crate) fn backend_path(target: &str) -> String {
    let path = absolute(target).map_or(target, |(_, p)| p);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg.split(';').next().unwrap_or_default() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if decoded.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

/// The host a backend would serve for a `Host` value or an authority:
/// userinfo, port and a trailing dot cut, lowercased.
pub(crate) fn backend_host(v: &str) -> String {
    let v = v.rsplit('@').next().unwrap_or_default();
    let v = match v.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    };
    v.trim_end_matches('.').to_ascii_lowercase()
}
