//! The per-request audit line and metrics, written once when the response body ends (or the
//! client goes away), so bytes out and total latency are real even for streams.
//!
//! `Tracked` wraps every response body. It passes frames through untouched and unbuffered, counts
//! them, holds the key's concurrency permit and the upstream slot until the stream ends (or the
//! connection is cut because the client stopped reading: `client_stalled`), and finishes the
//! record on drop.

use std::{
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::{layers::path::RolloutRef, upstream_slots::Slot, write_stall::StallFlag};

use super::metrics::{KeyLabels, Metrics, ReasonLabels, RequestLabels};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Record {
    started: Instant,
    metrics: Arc<Metrics>,
    pub client: IpAddr,
    pub method: String,
    /// The route template, or `-` when the path was refused before it was recognised.
    pub route: String,
    /// The rollout and attempt an attributed route names.
    pub rollout: Option<RolloutRef>,
    pub key: Option<Arc<str>>,
    pub status: u16,
    pub decision: &'static str,
    pub reason: &'static str,
    pub bytes_in: u64,
    pub upstream: Option<Duration>,
}

impl Record {
    pub fn start(metrics: Arc<Metrics>, client: IpAddr, method: &http::Method) -> Record {
        metrics.in_flight.inc();
        Record {
            started: Instant::now(),
            metrics,
            client,
            method: method.as_str().to_owned(),
            route: "-".into(),
            rollout: None,
            key: None,
            status: 0,
            decision: "allow",
            reason: "forwarded",
            bytes_in: 0,
            upstream: None,
        }
    }

    /// The record of a request hyper refused before the pipeline saw it (a malformed or
    /// over-long head): hyper has answered `status` itself. Nothing of the request is kept, not
    /// even its method, since the head did not parse.
    pub fn unparsed(
        metrics: Arc<Metrics>,
        client: IpAddr,
        status: u16,
        reason: &'static str,
    ) -> Record {
        metrics.in_flight.inc();
        Record {
            started: Instant::now(),
            metrics,
            client,
            method: "-".into(),
            route: "-".into(),
            rollout: None,
            key: None,
            status,
            decision: "deny",
            reason,
            bytes_in: 0,
            upstream: None,
        }
    }

    /// The request path only stops the clock; labels, counters and the audit line are settled by
    /// the audit writer thread, off the connection's worker.
    pub(super) fn finish(&mut self, bytes_out: u64) {
        self.metrics.in_flight.dec();
        super::audit_queue::request(Finished {
            total: self.started.elapsed(),
            bytes_out,
            metrics: self.metrics.clone(),
            client: self.client,
            method: std::mem::take(&mut self.method),
            route: std::mem::take(&mut self.route),
            rollout: self.rollout.take(),
            key: self.key.take(),
            status: self.status,
            decision: self.decision,
            reason: self.reason,
            bytes_in: self.bytes_in,
            upstream: self.upstream,
        });
    }
}

/// A finished request, on its way to the metrics and the audit line.
pub struct Finished {
    total: Duration,
    bytes_out: u64,
    metrics: Arc<Metrics>,
    client: IpAddr,
    method: String,
    route: String,
    rollout: Option<RolloutRef>,
    key: Option<Arc<str>>,
    status: u16,
    decision: &'static str,
    reason: &'static str,
    bytes_in: u64,
    upstream: Option<Duration>,
}

impl Finished {
    /// Counts the request in the metrics and returns its audit fields.
    pub fn settle(self) -> serde_json::Map<String, serde_json::Value> {
        let metrics = &self.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: self.route.clone(),
                status: self.status,
                decision: self.decision.into(),
            })
            .inc();
        if self.decision != "allow" {
            metrics
                .denials
                .get_or_create(&ReasonLabels {
                    reason: self.reason.into(),
                })
                .inc();
        }
        if let Some(key) = &self.key {
            // Every rollout token counts under one label (the audit line names its rollout):
            // a training run's rollout ids would make the label set unbounded.
            let key = if key.starts_with("rollout:") {
                crate::proxy::layers::auth::ROLLOUT_KEY_NAME
            } else {
                &**key
            };
            let labels = KeyLabels {
                key: key.to_string(),
            };
            metrics.key_requests.get_or_create(&labels).inc();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            metrics
                .key_last_used
                .get_or_create(&labels)
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
        metrics.latency.observe(self.total.as_secs_f64());
        if let Some(upstream) = self.upstream {
            metrics.upstream_latency.observe(upstream.as_secs_f64());
        }
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        let mut fields = crate::audit::fields(json!({
                "client": self.client,
                "key": self.key.as_deref(),
                "method": self.method,
                "route": self.route,
                "status": self.status,
                "decision": self.decision,
                "reason": self.reason,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "upstream_ms": self.upstream.map(ms),
                "total_ms": ms(self.total),
        }));
        // Ids the route's typed segments checked ([A-Za-z0-9_-]{1,128}): safe to log as they are.
        if let Some(rollout) = self.rollout {
            fields.insert("rollout".into(), rollout.rollout.into());
            fields.insert("attempt".into(), rollout.attempt.into());
        }
        fields
    }
}

/// What a response holds until its body ends: the key's concurrency permit and the upstream slot.
/// Nothing is read from them: dropping them is what returns the permits.
#[derive(Default)]
pub struct Held {
    _key: Option<OwnedSemaphorePermit>,
    _upstream: Option<Slot>,
}

impl Held {
    pub fn new(key: Option<OwnedSemaphorePermit>, upstream: Slot) -> Held {
        Held {
            _key: key,
            _upstream: Some(upstream),
        }
    }
}

pub struct Tracked {
    inner: BoxBody<Bytes, BoxError>,
    record: Record,
    bytes_out: u64,
    /// The connection's write-stall flag: raised when the client stopped reading and the
    /// connection was cut, which is then what the record says.
    stall: Option<Arc<StallFlag>>,
    _held: Held,
}

impl Tracked {
    pub fn new(inner: BoxBody<Bytes, BoxError>, record: Record, held: Held) -> Tracked {
        Tracked {
            inner,
            record,
            bytes_out: 0,
            stall: None,
            _held: held,
        }
    }

    /// Records `client_stalled` if `flag` is raised when the body is dropped.
    pub fn watch_stall(&mut self, flag: Arc<StallFlag>) {
        self.stall = Some(flag);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            // The status has gone out already, so only the audit line can tell that the upstream
            // broke the stream (and the client got a cut response).
            Poll::Ready(Some(Err(_))) => {
                self.record.decision = "error";
                self.record.reason = "upstream_stream_broken";
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let bytes_out = self.bytes_out;
        if self.stall.as_ref().is_some_and(|flag| flag.stalled()) {
            self.record.decision = "error";
            self.record.reason = "client_stalled";
        }
        self.record.finish(bytes_out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A body that yields its frames in turn, errors included.
    struct Scripted(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    async fn finish_with(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> String {
        let metrics = Arc::new(Metrics::new());
        let mut record = Record::start(metrics.clone(), [127, 0, 0, 1].into(), &http::Method::POST);
        record.route = "/v1/chat/completions".into();
        record.status = 200;
        let mut tracked = Tracked::new(Scripted(frames.into()).boxed(), record, Held::default());
        while let Some(Ok(_)) = tracked.frame().await {}
        drop(tracked);
        // Metrics are settled by the audit writer thread.
        crate::proxy::audit_queue::flush(Duration::from_secs(30));
        metrics.encode()
    }

    #[tokio::test]
    async fn a_stream_the_upstream_breaks_is_recorded_as_an_error() {
        let text = finish_with(vec![
            Ok(Frame::data(Bytes::from_static(b"data: 1\n\n"))),
            Err("connection reset".into()),
        ])
        .await;
        assert!(text.contains(r#"status="200",decision="error""#), "{text}");
        assert!(
            text.contains(r#"proxyguard_denials_total{reason="upstream_stream_broken"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_allowed() {
        let text = finish_with(vec![Ok(Frame::data(Bytes::from_static(b"{}")))]).await;
        assert!(text.contains(r#"status="200",decision="allow""#), "{text}");
        assert!(!text.contains("upstream_stream_broken"), "{text}");
    }
}
