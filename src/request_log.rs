//! The per-request log line, written straight to the log writer.
//!
//! One JSON line per request is the busiest thing authgate logs, and through
//! `tracing`'s JSON formatter it cost about a fifth of a pass-through
//! request's instructions (callgrind: ~24k of ~131k; the field visitor, the
//! RFC 3339 timestamp, serde per field). This module writes the same line
//! (same keys, same order, same escaping) into a per-thread buffer and hands
//! it to the same non-blocking writer as every other event, so lines keep
//! their order and the log's format does not change. `RUST_LOG` still
//! decides: the line is written only when `INFO` is enabled for
//! `authgate::gateway`. Without an installed writer (library use, tests of
//! the crate) the line goes through `tracing` as before.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where request lines go: the process's log writer (`authgate serve`
/// installs its stdout writer here).
static SINK: OnceLock<tracing_appender::non_blocking::NonBlocking> = OnceLock::new();

/// Longest line kept in the per-thread buffer between requests; a longer
/// one (a long path) is written and the buffer shrunk back.
const KEEP_CAPACITY: usize = 4096;

/// Sends request lines to `writer` from now on (once per process).
pub fn install(writer: tracing_appender::non_blocking::NonBlocking) {
    let _ = SINK.set(writer);
}

/// What one request line says.
pub struct RequestLine<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub auth: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
    pub reason: &'a str,
    pub subject: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub duration: Duration,
}

/// Logs one request (at `INFO`, target `authgate::gateway`).
pub fn log(line: &RequestLine) {
    if !tracing::enabled!(target: "authgate::gateway", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else {
        tracing::info!(
            target: "authgate::gateway",
            route = line.route,
            method = line.method,
            auth = line.auth,
            path = line.path,
            status = line.status,
            outcome = line.outcome,
            reason = line.reason,
            subject = line.subject,
            client_ip = line.client_ip.map(tracing::field::display),
            duration_ms = line.duration.as_secs_f64() * 1000.0,
            "request"
        );
        return;
    };
    BUF.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return;
        };
        buf.clear();
        render(&mut buf, line, SystemTime::now());
        // The writer copies the line into its queue; it blocks (does not
        // drop) when the queue is full, like every other event.
        let _ = sink.clone().write_all(&buf);
        if buf.capacity() > KEEP_CAPACITY {
            buf.clear();
            buf.shrink_to(KEEP_CAPACITY);
        }
    });
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// The last second rendered, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// The line as `tracing_subscriber`'s JSON format (flattened) writes it.
fn render(buf: &mut Vec<u8>, l: &RequestLine, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, since);
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"route\":");
    string(buf, l.route);
    buf.extend_from_slice(b",\"method\":");
    string(buf, l.method);
    buf.extend_from_slice(b",\"auth\":");
    string(buf, l.auth);
    buf.extend_from_slice(b",\"path\":");
    string(buf, l.path);
    buf.extend_from_slice(b",\"status\":");
    number(buf, u64::from(l.status));
    buf.extend_from_slice(b",\"outcome\":");
    string(buf, l.outcome);
    buf.extend_from_slice(b",\"reason\":");
    string(buf, l.reason);
    if let Some(s) = l.subject {
        buf.extend_from_slice(b",\"subject\":");
        string(buf, s);
    }
    if let Some(ip) = l.client_ip {
        // An address's text needs no escaping.
        let _ = write!(buf, ",\"client_ip\":\"{ip}\"");
    }
    buf.extend_from_slice(b",\"duration_ms\":");
    let us = u64::try_from(l.duration.as_micros()).unwrap_or(u64::MAX);
    number(buf, us / 1000);
    let frac = us % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    buf.extend_from_slice(b",\"target\":\"authgate::gateway\"}\n");
}

/// A JSON string, escaped as serde_json escapes it.
fn string(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn number(buf: &mut Vec<u8>, n: u64) {
    let _ = serde_json::to_writer(&mut *buf, &n);
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-29T11:36:18.096350Z`.
fn timestamp(buf: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    SECOND.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != secs {
            *c = (secs, civil(secs));
        }
        buf.extend_from_slice(&c.1);
    });
    let us = since_epoch.subsec_micros();
    let mut digits = [b'0'; 7];
    digits[0] = b'.';
    let mut v = us;
    for d in digits[1..].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.extend_from_slice(&digits);
    buf.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a unix time (UTC), by Howard Hinnant's
/// days-to-civil algorithm.
fn civil(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    let mut out = *b"0000-00-00T00:00:00";
    let put = |out: &mut [u8; 19], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(&mut out, 0, 4, year.clamp(0, 9999) as u64);
    put(&mut out, 5, 2, month as u64);
    put(&mut out, 8, 2, day as u64);
    put(&mut out, 11, 2, h);
    put(&mut out, 14, 2, m);
    put(&mut out, 17, 2, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(path: &'a str, subject: Option<&'a str>) -> RequestLine<'a> {
        RequestLine {
            route: "api",
            method: "GET",
            auth: "jwt",
            path,
            status: 200,
            outcome: "allowed",
            reason: "ok",
            subject,
            client_ip: Some("127.0.0.1".parse().unwrap()),
            duration: Duration::from_micros(1_234_567),
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(&civil(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&civil(1_795_973_475), b"2026-11-29T17:31:15");
        assert_eq!(&civil(4_102_444_799), b"2099-12-31T23:59:59");
    }

    #[test]
    fn same_line_as_the_tracing_json_format() {
        let mut buf = Vec::new();
        let t = UNIX_EPOCH + Duration::from_micros(1_795_973_475_000_042);
        render(&mut buf, &line("/a/b", Some("user-1")), t);
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "{\"timestamp\":\"2026-11-29T17:31:15.000042Z\",\"level\":\"INFO\",\
             \"message\":\"request\",\"route\":\"api\",\"method\":\"GET\",\"auth\":\"jwt\",\
             \"path\":\"/a/b\",\"status\":200,\"outcome\":\"allowed\",\"reason\":\"ok\",\
             \"subject\":\"user-1\",\"client_ip\":\"127.0.0.1\",\"duration_ms\":1234.567,\
             \"target\":\"authgate::gateway\"}\n"
        );
    }

    #[test]
    fn hostile_strings_stay_one_json_line() {
        let mut buf = Vec::new();
        let path = "/x\"\n\u{1}\\y\u{2028}";
        let subject = "a\r\n{\"level\":\"ERROR\"}";
        render(&mut buf, &line(path, Some(subject)), SystemTime::now());
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["path"], path);
        assert_eq!(v["subject"], subject);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["duration_ms"].as_f64(), Some(1234.567));
    }

    #[test]
    fn absent_fields_are_left_out() {
        let mut buf = Vec::new();
        let mut l = line("/", None);
        l.client_ip = None;
        l.duration = Duration::from_micros(7);
        render(&mut buf, &l, SystemTime::now());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert!(v.get("subject").is_none() && v.get("client_ip").is_none());
        assert_eq!(v["duration_ms"].as_f64(), Some(0.007));
    }
}
