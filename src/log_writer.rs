//! The request log's way to stdout: request threads append whole lines to
//! one shared buffer, and a writer thread takes the buffer at most every
//! [`BATCH`] and writes it with one `write`.
//!
//! Why not `tracing-appender`'s non-blocking writer, which this replaced:
//! it sends every line as its own allocation over a channel and wakes its
//! thread for it, so at moderate load (the thread catches up between
//! lines) nearly every request cost a futex wake-up, two context switches
//! and a `write` on the request's core: measured at 15,700 req/s on one
//! core, 5,000 wake-ups a second and 7 % of the core, which is what turned
//! pass-through's p99 from 1.6 ms (log off) into 3.3-4.5 ms
//! (docs/performance.md). Here a line costs a lock (never held across an
//! await or a syscall) and a copy; the thread wakes once per batch.
//!
//! Nothing is dropped: when stdout stalls and the buffer reaches [`CAP`],
//! request threads wait until the writer has taken it. A line is on stdout
//! at most [`BATCH`] after it was logged, and everything logged is written
//! when the [`LogGuard`] drops (at exit).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the writer gathers lines before writing them.
pub const BATCH: Duration = Duration::from_millis(10);
/// A batch this big is written at once (about 3,000 request lines).
const HIGH: usize = 1 << 20;
/// Request threads wait while this much is queued (stdout is stalled).
const CAP: usize = 64 << 20;

struct Queue {
    buf: Vec<u8>,
    closing: bool,
    /// Request threads waiting for room.
    blocked: usize,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: the first line of a batch, a full batch, closing.
    ready: Condvar,
    /// Wakes request threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // a panic elsewhere while holding it leaves plain bytes: keep going
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle request threads write lines through (`tracing_subscriber`'s
/// `MakeWriter`).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes whatever is still queued, and stops the writer thread, on drop.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`.
pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            buf: Vec::with_capacity(64 * 1024),
            closing: false,
            blocked: 0,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
    });
    let s = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log writer".into())
        .spawn(move || run(&s, out))?;
    Ok((
        LogWriter {
            shared: shared.clone(),
        },
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut reported = false;
    loop {
        let mut q = shared.lock();
        while q.buf.is_empty() && !q.closing {
            q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        // gather more lines for one write
        let deadline = Instant::now() + BATCH;
        while !q.closing && q.buf.len() < HIGH {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = shared
                .ready
                .wait_timeout(q, deadline - now)
                .map(|(q, _)| q)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::swap(&mut q.buf, &mut batch);
        let done = q.closing && batch.is_empty();
        let blocked = q.blocked > 0;
        drop(q);
        if blocked {
            shared.room.notify_all();
        }
        if done {
            return;
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            // stdout is gone: the lines cannot go anywhere, requests go on
            if !reported {
                eprintln!("authgate: writing the log to stdout failed: {e}");
                reported = true;
            }
        }
        batch.clear();
        // a stall's backlog is not kept for the rest of the process
        if batch.capacity() > 4 * HIGH {
            batch.shrink_to(64 * 1024);
        }
    }
}

impl Write for LogWriter {
    /// Takes the whole of `line` (the subscriber hands over one formatted
    /// event per call), so lines from different threads never interleave.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let shared = &*self.shared;
        let mut q = shared.lock();
        while q.buf.len() >= CAP && !q.closing {
            q.blocked += 1;
            q = shared.room.wait(q).unwrap_or_else(|e| e.into_inner());
            q.blocked -= 1;
        }
        let first = q.buf.is_empty();
        let before = q.buf.len();
        q.buf.extend_from_slice(line);
        let full = before < HIGH && q.buf.len() >= HIGH;
        drop(q);
        if first || full {
            shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.ready.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that can be made to stall, shared with the test.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        stalled: Arc<AtomicBool>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while self.stalled.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.bytes.lock().unwrap().extend_from_slice(b);
            *self.writes.lock().unwrap() += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_whole_and_in_order_per_thread() {
        let sink = Sink::default();
        let (w, guard) = start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        w.write_all(format!("{{\"t\":{t},\"i\":{i}}}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let t = v["t"].as_u64().unwrap() as usize;
            assert_eq!(v["i"].as_u64().unwrap() as usize, next[t], "{line}");
            next[t] += 1;
            n += 1;
        }
        assert_eq!(n, 20_000);
        // batched: far fewer writes than lines
        assert!(*sink.writes.lock().unwrap() < 20_000 / 10);
    }

    #[test]
    fn a_line_goes_out_without_waiting_for_exit() {
        let sink = Sink::default();
        let (mut w, _guard) = start(sink.clone()).unwrap();
        w.write_all(b"one\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.bytes.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(&*sink.bytes.lock().unwrap(), b"one\n");
    }

    #[test]
    fn a_stalled_output_holds_writers_back_and_loses_nothing() {
        let sink = Sink::default();
        sink.stalled.store(true, Ordering::Release);
        let (w, guard) = start(sink.clone()).unwrap();
        let line = vec![b'x'; 1 << 20];
        let wrote = Arc::new(Mutex::new(0usize));
        let writer = {
            let (mut w, wrote) = (w.clone(), wrote.clone());
            let line = line.clone();
            std::thread::spawn(move || {
                for _ in 0..(CAP / line.len()) * 3 {
                    w.write_all(&line).unwrap();
                    *wrote.lock().unwrap() += 1;
                }
            })
        };
        // the writer thread holds one batch, the queue at most CAP more:
        // the request thread cannot get far past that while stdout stalls
        std::thread::sleep(Duration::from_millis(300));
        let ahead = *wrote.lock().unwrap();
        assert!(ahead <= 2 * (CAP / line.len()) + 2, "{ahead} MiB queued");
        sink.stalled.store(false, Ordering::Release);
        writer.join().unwrap();
        drop(guard);
        assert_eq!(
            sink.bytes.lock().unwrap().len(),
            (CAP / line.len()) * 3 * line.len()
        );
    }
}
