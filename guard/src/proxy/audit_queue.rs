//! Request audit lines leave the async workers through a queue to one writer thread.
//!
//! Writing stdout from a request task blocks the runtime whenever the reader (journald, a file on
//! a busy disk) is slow, which stalls every connection; the benchmark showed it as a long latency
//! tail. The queue absorbs such stalls. It is bounded: when it is full the request path waits,
//! because an audit line is never dropped. `flush` lets shutdown wait until every line is out.

use std::{
    sync::{
        mpsc::{self, Receiver, SyncSender},
        OnceLock,
    },
    time::Duration,
};

use serde_json::{Map, Value};

/// Lines in flight before the request path waits for the writer.
const DEPTH: usize = 65_536;

enum Item {
    Line(Map<String, Value>),
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
    for item in rx {
        match item {
            Item::Line(fields) => crate::audit::emit("request", fields),
            Item::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Queues one `request` audit record.
pub fn request(fields: Map<String, Value>) {
    let _ = queue().send(Item::Line(fields));
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
    use super::*;

    #[test]
    fn flush_returns_once_the_queue_is_written() {
        for i in 0..2 {
            request(crate::audit::fields(serde_json::json!({ "n": i })));
        }
        let started = std::time::Instant::now();
        flush(Duration::from_secs(5));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the writer answered the flush"
        );
    }
}
