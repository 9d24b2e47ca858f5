//! Finished requests leave the async workers through a queue to one writer thread, which counts
//! them in the metrics and writes their audit lines.
//!
//! Writing stdout from a request task blocks the runtime whenever the reader (journald, a file on
//! a busy disk) is slow, which stalls every connection; the benchmark showed it as a long latency
//! tail. The queue absorbs such stalls. It is bounded: when it is full the request path waits,
//! because an audit line is never dropped. `flush` lets shutdown wait until every line is out.
//!
//! The writer takes what is queued in batches and pauses briefly between them. Waking it for
//! every line cost a futex wake-up and a context switch per request (the largest item in the
//! proxy's profile); while it pauses, senders find no sleeper to wake, and a batch is one write.

use std::{
    sync::{
        mpsc::{self, Receiver, SyncSender},
        OnceLock,
    },
    time::Duration,
};

use super::record::Finished;

/// Lines in flight before the request path waits for the writer.
const DEPTH: usize = 65_536;
/// How long lines may gather after a batch; it bounds how late an audit line appears.
const GATHER: Duration = Duration::from_millis(5);
/// Lines per write, so one burst does not become one huge allocation.
const BATCH: usize = 4096;

enum Item {
    /// Boxed: the channel allocates and touches every one of its `DEPTH` slots up front, so a
    /// slot the size of a whole record would cost megabytes of resident memory when idle.
    Line(Box<Finished>),
    Flush(mpsc::Sender<()>),
}

static QUEUE: OnceLock<SyncSender<Item>> = OnceLock::new();

fn queue() -> &'static SyncSender<Item> {
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_all(rx));
        if let Err(err) = spawned {
            // Without the thread the queue would fill and stall; say why loudly.
            tracing::error!(error = %err, "cannot start the audit writer thread");
        }
        tx
    })
}

fn write_all(rx: Receiver<Item>) {
    let mut lines = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    // Blocks only when the queue is empty; the first line after a quiet spell is written at once.
    while let Ok(first) = rx.recv() {
        for item in std::iter::once(first).chain(rx.try_iter().take(BATCH - 1)) {
            match item {
                Item::Line(finished) => lines.push(finished.settle()),
                // Answered after the write below, which covers every line queued before it.
                Item::Flush(done) => flushes.push(done),
            }
        }
        crate::audit::emit_all("request", lines.drain(..));
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        std::thread::sleep(GATHER);
    }
}

/// Queues one finished request.
pub fn request(finished: Finished) {
    let _ = queue().send(Item::Line(Box::new(finished)));
}

/// Waits (up to `limit`) until every line queued before this call is written.
pub fn flush(limit: Duration) {
    let (done, wait) = mpsc::channel();
    if queue().send(Item::Flush(done)).is_ok() {
        let _ = wait.recv_timeout(limit);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use super::*;
    use crate::proxy::{metrics::Metrics, record::Record};

    #[test]
    fn a_flush_sees_every_request_finished_before_it_counted() {
        let metrics = Arc::new(Metrics::new());
        for _ in 0..3 {
            let mut record = Record::start(
                metrics.clone(),
                Ipv4Addr::LOCALHOST.into(),
                &http::Method::GET,
            );
            record.route = "/v1/models".into();
            record.status = 200;
            record.finish(5);
        }
        flush(Duration::from_secs(30));
        let text = metrics.encode();
        let counted = text
            .lines()
            .find(|line| {
                line.starts_with("proxyguard_requests_total{") && line.contains("/v1/models")
            })
            .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
        assert!(counted.ends_with(" 3"), "{counted}");
    }
}
