//! The one bounded queue between everything the daemon prints and its stdout and stderr: audit
//! lines (requests, kernel events, alerts, findings) and the diagnostic log. One writer thread
//! does every write, in the order the lines were queued.
//!
//! A write to stdout blocks for as long as its reader (journald, a pipe, a file on a busy disk)
//! does not read. Done on a request worker, that stalls every connection of that worker; so no
//! worker writes: it queues, and when the queue is full the line is dropped and counted in
//! `proxyguard_events_dropped_total{sink, kind}` (the events are still counted in the metrics and
//! kept for `proxyguard events`). The queue is bounded in lines by `[log] queue`.
//!
//! The writer takes everything queued at once and pauses briefly between writes, so a burst is
//! one write and a busy request path finds no sleeper to wake per line.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Condvar, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// Lines queued before new ones are dropped, unless `[log] queue` says otherwise.
pub const DEFAULT_DEPTH: usize = 65_536;
/// How long lines may gather after a write; it bounds how late a line appears.
const GATHER: Duration = Duration::from_millis(5);

/// Labels of the drop counters: where the line was going (`stdout`, `stderr`, `otlp`) and its
/// record kind (`request`, `bind_denied`, ..., `log` for the diagnostic log).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub sink: String,
    pub kind: String,
}

/// Events dropped because a sink's queue was full, shared by every sink (see `export`).
pub fn dropped() -> &'static Family<DropLabels, Counter> {
    static DROPPED: OnceLock<Family<DropLabels, Counter>> = OnceLock::new();
    DROPPED.get_or_init(Family::default)
}

/// Counts `n` events of `kind` that `sink` dropped.
pub fn count_dropped(sink: &str, kind: &str, n: u64) {
    if n > 0 {
        dropped()
            .get_or_create(&DropLabels {
                sink: sink.to_owned(),
                kind: kind.to_owned(),
            })
            .inc_by(n);
    }
}

enum Chunk {
    /// Audit lines, each ending in a newline.
    Stdout(Vec<String>),
    /// One formatted diagnostic log event.
    Stderr(Vec<u8>),
}

impl Chunk {
    fn lines(&self) -> usize {
        match self {
            Chunk::Stdout(lines) => lines.len(),
            Chunk::Stderr(_) => 1,
        }
    }
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Lines in `chunks`.
    lines: usize,
    /// Lines ever accepted, and ever written (or failed to write): what `flush` compares.
    accepted: u64,
    written: u64,
    /// The writer is waiting for work: only then does a sender wake it.
    idle: bool,
}

struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes `flush` callers after a write.
    done: Condvar,
}

static DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_DEPTH);

/// Sets the queue's bound in lines (`[log] queue`); lines already queued stay.
pub fn configure(depth: usize) {
    DEPTH.store(depth.max(1), Ordering::Relaxed);
}

static OUTBOX: OnceLock<Outbox> = OnceLock::new();

fn outbox() -> &'static Outbox {
    OUTBOX.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(write_all);
        if let Err(err) = spawned {
            // Without the writer nothing is printed (everything is counted as dropped once the
            // queue fills): say why, directly.
            let _ = writeln!(
                std::io::stderr(),
                "proxyguard: cannot start the output writer thread: {err}"
            );
        }
        Outbox {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        }
    })
}

fn lock(outbox: &Outbox) -> std::sync::MutexGuard<'_, Queue> {
    outbox.queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues audit lines of `kind` (each with its newline) for stdout. What does not fit is dropped
/// and counted. Never blocks on the write. Returns how many were queued.
pub fn stdout(kind: &str, mut lines: Vec<String>) -> usize {
    let wanted = lines.len();
    let fits = push_with(|room| {
        lines.truncate(room.min(wanted));
        (!lines.is_empty()).then_some(Chunk::Stdout(lines))
    });
    count_dropped("stdout", kind, (wanted - fits) as u64);
    fits
}

/// Queues one formatted log event for stderr; dropped and counted when the queue is full.
pub fn stderr(event: Vec<u8>) {
    if push_with(|room| (room > 0).then_some(Chunk::Stderr(event))) == 0 {
        count_dropped("stderr", "log", 1);
    }
}

/// Builds a chunk for the room left (in lines) and queues it; returns the lines queued.
fn push_with(chunk: impl FnOnce(usize) -> Option<Chunk>) -> usize {
    let outbox = outbox();
    let mut queue = lock(outbox);
    let room = DEPTH.load(Ordering::Relaxed).saturating_sub(queue.lines);
    let Some(chunk) = chunk(room) else { return 0 };
    let n = chunk.lines();
    queue.lines += n;
    queue.accepted += n as u64;
    queue.chunks.push_back(chunk);
    let wake = std::mem::take(&mut queue.idle);
    drop(queue);
    if wake {
        outbox.work.notify_one();
    }
    n
}

fn write_all() {
    let outbox = outbox();
    loop {
        let chunks = {
            let mut queue = lock(outbox);
            while queue.chunks.is_empty() {
                queue.idle = true;
                queue = outbox.work.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            queue.idle = false;
            queue.lines = 0;
            std::mem::take(&mut queue.chunks)
        };
        let mut n = 0;
        let (mut out, mut err) = (String::new(), Vec::new());
        // Consecutive chunks of one stream are one write; the order across streams is kept.
        for chunk in chunks {
            n += chunk.lines() as u64;
            match chunk {
                Chunk::Stdout(lines) => {
                    write_err(&mut err);
                    lines.iter().for_each(|line| out.push_str(line));
                }
                Chunk::Stderr(event) => {
                    write_out(&mut out);
                    err.extend_from_slice(&event);
                }
            }
        }
        write_out(&mut out);
        write_err(&mut err);
        lock(outbox).written += n;
        outbox.done.notify_all();
        std::thread::sleep(GATHER);
    }
}

/// A closed stdout or stderr must not take the daemon down; the events are still counted.
fn write_out(block: &mut String) {
    if !block.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(block.as_bytes());
        let _ = out.flush();
        block.clear();
    }
}

fn write_err(block: &mut Vec<u8>) {
    if !block.is_empty() {
        let _ = std::io::stderr().lock().write_all(block);
        block.clear();
    }
}

/// Waits (up to `limit`) until every line queued before this call is written. For shutdown and
/// the end of a command; never on a request worker.
pub fn flush(limit: Duration) {
    // Nothing was ever queued (most commands): no writer to start.
    let Some(outbox) = OUTBOX.get() else { return };
    let deadline = Instant::now() + limit;
    let mut queue = lock(outbox);
    let target = queue.accepted;
    while queue.written < target {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        queue = outbox
            .done
            .wait_timeout(queue, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// The diagnostic log's writer: each event is formatted into a buffer, then queued whole.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

pub struct LogEvent(Vec<u8>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogEvent;

    fn make_writer(&'a self) -> LogEvent {
        LogEvent(Vec::new())
    }
}

impl Write for LogEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogEvent {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            stderr(std::mem::take(&mut self.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(kind: &str) -> u64 {
        dropped()
            .get_or_create(&DropLabels {
                sink: "stdout".into(),
                kind: kind.into(),
            })
            .get()
    }

    #[test]
    fn what_does_not_fit_is_counted_and_what_fits_is_written() {
        // The unit test's stdout is a pipe libtest drains, so the writer keeps up; a full queue
        // is made by a bound below the burst.
        // Other tests may have lines queued too, so at most 3 of these fit.
        configure(3);
        let queued = stdout(
            "outbox_test",
            (0..5).map(|i| format!("{{\"n\":{i}}}\n")).collect(),
        );
        let dropped_now = drops("outbox_test");
        configure(DEFAULT_DEPTH);
        assert!(queued <= 3, "{queued} queued past a bound of 3");
        assert_eq!(
            queued as u64 + dropped_now,
            5,
            "every line queued or counted"
        );
        flush(Duration::from_secs(30));
        let queue = lock(outbox());
        assert_eq!(queue.written, queue.accepted);
    }
}
