//! Finished requests leave the async workers through a queue to one settling thread, which
//! counts them in the metrics and renders their audit lines into the output queue (`outbox`).
//!
//! This thread never writes: a stdout nobody reads stalls only the outbox's writer, and lines the
//! outbox cannot hold are dropped and counted there, so the request counters stay exact. The
//! queue is bounded; when it is full (the settler starved of CPU), the request's own worker
//! settles it, which costs CPU but never waits. `flush` lets a scrape or shutdown wait until
//! every request finished before it is counted and queued for output.
//!
//! The settler takes what is queued in batches and pauses briefly between them. Waking it for
//! every line cost a futex wake-up and a context switch per request (the largest item in the
//! proxy's profile); while it pauses, senders find no sleeper to wake.

use std::{
    sync::{
        mpsc::{self, Receiver, SyncSender},
        OnceLock,
    },
    time::Duration,
};

use super::record::Finished;

/// Requests in flight before the request path settles its own.
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
            .name("audit-settler".into())
            .spawn(move || write_all(rx));
        if let Err(err) = spawned {
            // Without the thread the queue fills and every request is settled on its worker.
            tracing::error!(error = %err, "cannot start the audit settler thread");
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
                // Answered once the lines before it are queued for output, below.
                Item::Flush(done) => flushes.push(done),
            }
        }
        crate::audit::emit_lines("request", lines.drain(..));
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
        std::thread::sleep(GATHER);
    }
}

/// Queues one finished request; never waits.
pub fn request(finished: Finished) {
    match queue().try_send(Item::Line(Box::new(finished))) {
        Ok(()) => {}
        Err(mpsc::TrySendError::Full(Item::Line(finished)))
        | Err(mpsc::TrySendError::Disconnected(Item::Line(finished))) => {
            crate::audit::emit_lines("request", std::iter::once(finished.settle()));
        }
        Err(_) => {}
    }
}

/// Waits (up to `limit`) until every request queued before this call is counted and its line
/// queued for output (`outbox::flush` waits for the write). Blocking: off the workers only.
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
