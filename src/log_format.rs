//! The JSON line format of every log event, as a `tracing-subscriber`
//! event formatter.
//!
//! The lines are those of `tracing-subscriber`'s flattened JSON format
//! (`timestamp`, `level`, the event's fields in order, `target`), rendered
//! into a reused per-thread `String` and handed to the writer whole. The
//! stock JSON format goes through serde's map serializer and a timestamp
//! `String` per event; for the per-request line that was about a fifth of
//! a pass-through request's instructions. This one renders each piece
//! directly into the reused buffer and escapes in runs, not byte by byte
//! (docs/performance.md, "a cheaper request log line", has the
//! instruction counts).
//! Escaping and numbers are serde_json's, so client-controlled text (paths,
//! token subjects) stays one JSON string.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per event, one per line (see the module doc).
pub struct JsonLines;

thread_local! {
    /// The line being rendered: pushes into it are inlined, where each
    /// write into the subscriber's `Writer` is a dynamic call; it is handed
    /// over whole and its capacity kept for the next event.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                render(&mut line, meta, event)?;
                w.write_str(&line)
            }
            // an event logged while rendering one (from a field's Debug)
            Err(_) => {
                let mut line = String::new();
                render(&mut line, meta, event)?;
                w.write_str(&line)
            }
        })
    }
}

fn render(line: &mut String, meta: &Metadata<'_>, event: &Event<'_>) -> fmt::Result {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    line.push_str("{\"timestamp\":\"");
    timestamp(line, since)?;
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    let mut fields = Fields {
        line: &mut *line,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    line.push_str(",\"target\":");
    string(line, meta.target());
    line.push_str("}\n");
    Ok(())
}

/// Writes each field as `,"name":value`.
struct Fields<'a> {
    line: &'a mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut String) -> fmt::Result) {
        if self.result.is_ok() {
            self.line.push(',');
            string(self.line, field.name());
            self.line.push(':');
            self.result = value(self.line);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| {
            string(w, value);
            Ok(())
        });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.push('"');
            write!(Escaped(w), "{value:?}")?;
            w.push('"');
            Ok(())
        });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| {
            w.push_str(itoa::Buffer::new().format(value));
            Ok(())
        });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // The shortest round-trip decimal, as serde_json writes it (the
        // same crate). JSON has no NaN or infinity (serde_json: null).
        self.entry(field, |w| {
            if value.is_finite() {
                w.push_str(zmij::Buffer::new().format_finite(value));
            } else {
                w.push_str("null");
            }
            Ok(())
        });
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(line: &mut String, s: &str) {
    line.push('"');
    escape_into(line, s);
    line.push('"');
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// Appends `s` escaped for the inside of a JSON string: plain runs whole,
/// only `"`, `\` and controls escaped.
fn escape_into(line: &mut String, mut s: &str) {
    while let Some(i) = first_to_escape(s.as_bytes()) {
        line.push_str(&s[..i]);
        match s.as_bytes()[i] {
            b'"' => line.push_str("\\\""),
            b'\\' => line.push_str("\\\\"),
            b'\n' => line.push_str("\\n"),
            b'\r' => line.push_str("\\r"),
            b'\t' => line.push_str("\\t"),
            0x08 => line.push_str("\\b"),
            0x0c => line.push_str("\\f"),
            b => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                line.push_str("\\u00");
                line.push(char::from(HEX[usize::from(b >> 4)]));
                line.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        // the byte escaped is ASCII: `i + 1` is a char boundary
        s = &s[i + 1..];
    }
    line.push_str(s);
}

/// The first byte of `b` that JSON needs escaped, eight bytes per step
/// (a word test says whether any of its bytes is `"`, `\` or below 0x20;
/// only a word that has one is searched byte by byte).
fn first_to_escape(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let escapes = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
    let mut words = b.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        // any byte zero in v: (v - ONES) & !v & HIGH; any byte below n
        // (n <= 128): (x - n*ONES) & !x & HIGH — both exact as a yes/no
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let hit = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if hit != 0 {
            return word.iter().position(|&c| escapes(c)).map(|i| at + i);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| escapes(c))
        .map(|i| at + i)
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-29T11:36:18.096350Z`
/// (humantime's format). `since_epoch` is never before 1970 (a clock set
/// earlier logs the epoch), which humantime requires.
fn timestamp(line: &mut String, since_epoch: Duration) -> fmt::Result {
    write!(
        line,
        "{}",
        humantime::format_rfc3339_micros(UNIX_EPOCH + since_epoch)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    /// The lines `emit` logs through a subscriber with this format.
    fn capture(emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn timestamps() {
        let at = |secs: u64, micros: u32| {
            let mut out = String::new();
            timestamp(&mut out, Duration::new(secs, micros * 1_000)).unwrap();
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_795_973_475, 96_350), "2026-11-29T17:31:15.096350Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }

    /// The request line: the keys and order of the flattened JSON format.
    #[test]
    fn request_line_keys_values_and_order() {
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let text = capture(|| {
            tracing::info!(
                target: "authgate::gateway",
                route = "api",
                method = "GET",
                status = 200u16,
                subject = Some("user-1"),
                client_ip = Some(tracing::field::display(ip)),
                duration_ms = 1.25f64,
                "request"
            )
        });
        let (stamp, rest) = text
            .strip_prefix("{\"timestamp\":\"")
            .and_then(|t| t.split_once('"'))
            .unwrap();
        assert_eq!(stamp.len(), "2026-11-29T17:31:15.000042Z".len(), "{stamp}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T');
        assert_eq!(
            rest,
            ",\"level\":\"INFO\",\"message\":\"request\",\"route\":\"api\",\
             \"method\":\"GET\",\"status\":200,\"subject\":\"user-1\",\
             \"client_ip\":\"127.0.0.1\",\"duration_ms\":1.25,\
             \"target\":\"authgate::gateway\"}\n"
        );
    }

    #[test]
    fn hostile_strings_stay_one_json_line() {
        let path = "/x\"\n\u{1}\\y\u{2028}\t";
        let subject = "a\r\n{\"level\":\"ERROR\"}";
        let err = std::io::Error::other("bad\nthing");
        let text = capture(
            || tracing::warn!(path, subject, error = %err, nan = f64::NAN, "msg \"quoted\""),
        );
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["path"], path);
        assert_eq!(v["subject"], subject);
        assert_eq!(v["error"], "bad\nthing");
        assert_eq!(v["message"], "msg \"quoted\"");
        assert_eq!(v["level"], "WARN");
        assert!(v["nan"].is_null());
    }

    /// The word-at-a-time search escapes exactly what serde_json does: every
    /// ASCII byte at every offset of a word and of the tail, beside
    /// multi-byte characters.
    #[test]
    fn escaping_matches_serde_json() {
        let mut cases = vec![String::new(), "plain/path?q=1".to_string()];
        for b in 0u8..0x80 {
            for at in 0..19 {
                let mut t: Vec<char> = "abcdéfgh€ijklmnopq".chars().collect();
                t.insert(at.min(t.len()), char::from(b));
                cases.push(t.into_iter().collect());
            }
        }
        cases.push("\u{2028}\u{7f}\u{80}\u{10ffff}\"\"\\\\".to_string());
        for case in cases {
            let mut line = String::new();
            string(&mut line, &case);
            assert_eq!(line, serde_json::to_string(&case).unwrap(), "{case:?}");
        }
    }

    /// Numbers are written as serde_json writes them.
    #[test]
    fn numbers_match_serde_json() {
        for f in [
            0.0,
            1.25,
            0.000_012_3,
            1e-9,
            123_456.789,
            1e21,
            -2.5,
            f64::MAX,
        ] {
            let text = capture(|| tracing::info!(f, "x"));
            let want = format!("\"f\":{}", serde_json::to_string(&f).unwrap());
            assert!(text.contains(&want), "{text} lacks {want}");
        }
        for n in [0u64, 7, 200, u64::MAX] {
            let text = capture(|| tracing::info!(n, "x"));
            assert!(text.contains(&format!("\"n\":{n},")), "{text}");
        }
        let text = capture(|| tracing::info!(n = i64::MIN, "x"));
        assert!(text.contains(&format!("\"n\":{},", i64::MIN)), "{text}");
    }

    #[test]
    fn absent_fields_are_left_out() {
        let text = capture(|| tracing::info!(subject = None::<&str>, n = -3i64, "x"));
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(v.get("subject").is_none(), "{text}");
        assert_eq!(v["n"], -3);
    }
}
