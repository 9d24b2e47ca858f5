//! `[export]`: every audit record (requests, kernel events, alerts, findings) also goes to an
//! OpenTelemetry receiver as OTLP logs over HTTP/protobuf, in batches, from a thread of its own.
//!
//! The request path only offers a record to a bounded queue (`try_send`): when the queue is full,
//! or a batch is refused, fails or is not answered within `timeout_ms`, its records are dropped
//! and counted in `proxyguard_events_dropped_total{sink="otlp",kind}`. A stalled receiver thus
//! costs drops, never request time. A batch that failed in a way the OTLP spec calls retryable
//! (no connection, no answer in time, 429, 502, 503, 504) is sent again up to `RETRIES` times,
//! after `BACKOFF` doubling each time (or the receiver's `Retry-After`, up to `BACKOFF_MAX`),
//! while the queue keeps taking records: a collector's short restart or back-pressure loses
//! nothing, a long outage turns into counted drops at the queue. Any other answer (400, 413,
//! ...) would be the same again: dropped and counted at once.
//!
//! Written on hyper's client connection (one kept-alive connection, re-opened after a failure)
//! and prost, with the few OTLP messages declared in `otlp`. Not the opentelemetry-otlp crate:
//! its SDK batch processor keeps a queue of its own whose drops cannot be counted per kind in
//! these metrics, and it brings the SDK, an HTTP client and the bridge from these records to its
//! log API, for what is one protobuf POST.

mod otlp;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::export::{read_headers, Endpoint, ExportSection};

/// How long records may gather before a batch smaller than `batch_size` is sent.
const GATHER: Duration = Duration::from_millis(200);

/// A batch's sends after its first, when each failure is retryable.
const RETRIES: u32 = 3;
/// The wait before the first retry; it doubles for each one after.
const BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait a receiver's `Retry-After` gets.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a batch was not accepted.
#[derive(Debug)]
struct Failed {
    why: String,
    /// The same batch may succeed later (the OTLP spec's retryable failures).
    retryable: bool,
    /// The receiver's `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

impl Failed {
    fn retryable(why: String) -> Failed {
        Failed {
            why,
            retryable: true,
            retry_after: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export.otlp_endpoint: {0}")]
    Endpoint(String),
    #[error("export.headers_file: {0}")]
    Headers(String),
    #[error("cannot start the OTLP export thread: {0}")]
    Thread(std::io::Error),
}

struct Item {
    kind: String,
    line: Map<String, Value>,
    severity: u8,
}

struct Exporter {
    queue: mpsc::Sender<Item>,
    /// Records offered, and (under the lock, for `flush`) those since sent or dropped.
    offered: AtomicU64,
    progress: Mutex<u64>,
    settled: std::sync::Condvar,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Records the receiver accepted.
pub fn exported() -> &'static Counter {
    static EXPORTED: OnceLock<Counter> = OnceLock::new();
    EXPORTED.get_or_init(Counter::default)
}

/// Whether records are exported at all (so callers skip the work of offering them).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Queues a copy of `line` (an audit record of `kind` with syslog `severity`); never waits.
pub fn offer(kind: &str, line: &Map<String, Value>, severity: u8) {
    let Some(exporter) = EXPORTER.get() else {
        return;
    };
    let item = Item {
        kind: kind.to_owned(),
        line: line.clone(),
        severity,
    };
    // Counted first, so `flush` never sees the settlement before the offer.
    exporter.offered.fetch_add(1, Ordering::Relaxed);
    if exporter.queue.try_send(item).is_err() {
        crate::outbox::count_dropped("otlp", kind, 1);
        exporter.settle(1);
    }
}

impl Exporter {
    fn progress(&self) -> std::sync::MutexGuard<'_, u64> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn settle(&self, n: u64) {
        *self.progress() += n;
        self.settled.notify_all();
    }
}

/// Waits (up to `limit`) until every record offered before this call is sent or dropped.
pub fn flush(limit: Duration) {
    let Some(exporter) = EXPORTER.get() else {
        return;
    };
    let deadline = Instant::now() + limit;
    let target = exporter.offered.load(Ordering::Relaxed);
    let mut progress = exporter.progress();
    while *progress < target {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        progress = exporter
            .settled
            .wait_timeout(progress, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

struct Settings {
    endpoint: Endpoint,
    timeout: Duration,
    batch_size: usize,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    resource: Vec<otlp::KeyValue>,
}

/// `[export]` as the daemon started with it.
static STARTED: OnceLock<ExportSection> = OnceLock::new();

/// After a reload: `[export]` applies at the next restart, which the operator is told.
pub fn reloaded(config: &ExportSection) {
    if STARTED.get().is_some_and(|started| started != config) {
        tracing::warn!("[export] changed; it applies at the next restart");
    }
}

/// Starts the export when `otlp_endpoint` is set (once; `[export]` is read at start).
pub fn start(config: &ExportSection) -> Result<(), ExportError> {
    if STARTED.set(config.clone()).is_err() || config.otlp_endpoint.is_empty() {
        return Ok(());
    }
    let endpoint = Endpoint::parse(&config.otlp_endpoint).map_err(ExportError::Endpoint)?;
    let headers = if config.headers_file.as_os_str().is_empty() {
        Vec::new()
    } else {
        read_headers(&config.headers_file).map_err(ExportError::Headers)?
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    let instance = if config.instance.is_empty() {
        host.clone()
    } else {
        config.instance.clone()
    };
    let settings = Settings {
        endpoint,
        timeout: Duration::from_millis(config.timeout_ms),
        batch_size: config.batch_size,
        headers,
        resource: vec![
            otlp::string("service.name", "proxyguard"),
            otlp::string("service.version", env!("CARGO_PKG_VERSION")),
            otlp::string("service.instance.id", &instance),
            otlp::string("host.name", &host),
        ],
    };
    let (queue, rx) = mpsc::channel(config.queue);
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(export_all(rx, settings)),
                Err(err) => tracing::error!("cannot start the OTLP export: {err}"),
            }
        })
        .map_err(ExportError::Thread)?;
    let _ = EXPORTER.set(Exporter {
        queue,
        offered: AtomicU64::new(0),
        progress: Mutex::new(0),
        settled: std::sync::Condvar::new(),
    });
    tracing::info!(endpoint = %settings_authority(config), "exporting events as OTLP logs");
    Ok(())
}

/// Host and port only: a path or query could carry a token.
fn settings_authority(config: &ExportSection) -> String {
    Endpoint::parse(&config.otlp_endpoint)
        .map(|e| e.authority())
        .unwrap_or_default()
}

async fn export_all(mut rx: mpsc::Receiver<Item>, settings: Settings) {
    let mut connection = None;
    let mut failing = false;
    let mut batch = Vec::with_capacity(settings.batch_size);
    while rx.recv_many(&mut batch, settings.batch_size).await > 0 {
        if batch.len() < settings.batch_size {
            tokio::time::sleep(GATHER).await;
            while batch.len() < settings.batch_size {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
        }
        let n = batch.len() as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let records = batch
            .iter()
            .map(|item| otlp::record(&item.line, item.severity, now))
            .collect();
        let body = Bytes::from(otlp::encode(&settings.resource, records));
        match send(&mut connection, &settings, body).await {
            Ok(()) => {
                exported().inc_by(n);
                if std::mem::take(&mut failing) {
                    tracing::info!("OTLP export works again");
                }
            }
            Err(why) => {
                for item in &batch {
                    crate::outbox::count_dropped("otlp", &item.kind, 1);
                }
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        "OTLP export failing ({why}); records are dropped and counted in \
                         proxyguard_events_dropped_total{{sink=\"otlp\"}}"
                    );
                }
            }
        }
        batch.clear();
        if let Some(exporter) = EXPORTER.get() {
            exporter.settle(n);
        }
    }
}

/// Sends one batch, again after a retryable failure (up to `RETRIES` times, backing off).
async fn send(
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    settings: &Settings,
    body: Bytes,
) -> Result<(), String> {
    let mut backoff = BACKOFF;
    for retry in 0..=RETRIES {
        let sent = tokio::time::timeout(settings.timeout, post(connection, settings, body.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(Failed::retryable(format!(
                    "no answer within {:?}",
                    settings.timeout
                )))
            });
        let failed = match sent {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        // A connection that failed or stalled is not used again.
        *connection = None;
        if !failed.retryable || retry == RETRIES {
            return Err(failed.why);
        }
        let wait = failed
            .retry_after
            .map_or(backoff, |s| Duration::from_secs(s).min(BACKOFF_MAX));
        tracing::debug!(why = %failed.why, ?wait, "OTLP export: a batch is sent again");
        tokio::time::sleep(wait).await;
        backoff *= 2;
    }
    unreachable!("the last retry returns")
}

/// One export request; a kept-alive connection that turns out closed is re-opened once.
async fn post(
    connection: &mut Option<SendRequest<Full<Bytes>>>,
    settings: &Settings,
    body: Bytes,
) -> Result<(), Failed> {
    for attempt in 0..2 {
        let reused = connection.is_some();
        let sender = match connection {
            Some(sender) if !sender.is_closed() => sender,
            _ => connection.insert(
                connect(&settings.endpoint)
                    .await
                    .map_err(Failed::retryable)?,
            ),
        };
        let mut request = http::Request::post(&settings.endpoint.path)
            .header(http::header::HOST, settings.endpoint.authority())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (name, value) in &settings.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|err| Failed {
                why: format!("cannot build the request: {err}"),
                retryable: false,
                retry_after: None,
            })?;
        match sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.trim().parse().ok());
                // Read to the end, so the connection can carry the next batch.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    return Ok(());
                }
                return Err(Failed {
                    why: format!("the receiver answered {status}"),
                    retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                    retry_after,
                });
            }
            Err(err) if reused && attempt == 0 && err.is_canceled() => *connection = None,
            Err(err) => return Err(Failed::retryable(format!("the request failed: {err}"))),
        }
    }
    Err(Failed::retryable("the connection closed twice".into()))
}

async fn connect(endpoint: &Endpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(endpoint.authority())
        .await
        .map_err(|err| format!("cannot connect to {}: {err}", endpoint.authority()))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("HTTP handshake failed: {err}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
