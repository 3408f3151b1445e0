//! The JSON line format of every log event, as a `tracing-subscriber`
//! event formatter.
//!
//! The lines are those of `tracing-subscriber`'s flattened JSON format
//! (`timestamp`, `level`, the event's fields in order, `target`), written
//! straight into the formatter's buffer. The stock JSON format goes through
//! serde's map serializer and a timestamp `String` per event; for the
//! per-request line that was about a fifth of a pass-through request's
//! instructions (callgrind: ~24k of ~131k). Escaping is serde_json's, so
//! client-controlled text (paths, token subjects) stays one JSON string.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// One JSON object per event, one per line (see the module doc).
pub struct JsonLines;

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
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        w.write_str("{\"timestamp\":\"")?;
        timestamp(&mut w, since)?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut fields = Fields {
            w: &mut w,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.w.write_char(',')?;
                string(self.w, field.name())?;
                self.w.write_char(':')?;
                value(self.w)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // Rust prints the shortest round-trip decimal without an exponent:
        // a JSON number. JSON has no NaN or infinity (serde_json: null).
        self.entry(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }
}

/// A JSON string, escaped as serde_json escapes it.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escaped<'_, '_> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        // Plain runs are written whole; only `"`, `\` and controls escape.
        while let Some(i) = s.bytes().position(|b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.write_str(&s[..i])?;
            match s.as_bytes()[i] {
                b'"' => self.0.write_str("\\\"")?,
                b'\\' => self.0.write_str("\\\\")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\r' => self.0.write_str("\\r")?,
                b'\t' => self.0.write_str("\\t")?,
                0x08 => self.0.write_str("\\b")?,
                0x0c => self.0.write_str("\\f")?,
                b => write!(self.0, "\\u{b:04x}")?,
            }
            s = &s[i + 1..];
        }
        self.0.write_str(s)
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-29T11:36:18.096350Z`
/// (humantime's format). `since_epoch` is never before 1970 (a clock set
/// earlier logs the epoch), which humantime requires.
fn timestamp(w: &mut Writer<'_>, since_epoch: Duration) -> fmt::Result {
    write!(
        w,
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
            timestamp(
                &mut Writer::new(&mut out),
                Duration::new(secs, micros * 1_000),
            )
            .unwrap();
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

    #[test]
    fn absent_fields_are_left_out() {
        let text = capture(|| tracing::info!(subject = None::<&str>, n = -3i64, "x"));
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(v.get("subject").is_none(), "{text}");
        assert_eq!(v["n"], -3);
    }
}
