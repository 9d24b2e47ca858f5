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

use super::{
    budget::{clock, Metered},
    layers::path::RolloutRef,
    upstream_slots::Slot,
    usage::{self, Meter},
    write_stall::StallFlag,
};

use super::metrics::{Charge, KeyLabels, Metrics, ReasonLabels, RequestLabels};

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
    /// What a metered request used and cost.
    pub charged: Option<Charged>,
}

/// A metered request's usage and cost, for the audit line and the metrics.
#[derive(Debug, Clone)]
pub struct Charged {
    pub model: Arc<str>,
    pub usage: usage::Usage,
    pub usd: f64,
    pub spike: bool,
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
            charged: None,
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
            charged: None,
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
            charged: self.charged.take(),
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
    charged: Option<Charged>,
}

impl Finished {
    /// Counts the request in the metrics and returns its audit line.
    pub fn settle(self) -> RequestLine {
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
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs());
            let charge = self.charged.as_ref().map(|charged| Charge {
                model: &charged.model,
                input: charged.usage.input,
                output: charged.usage.output,
                usd: charged.usd,
            });
            metrics.count_key(key, i64::try_from(now).unwrap_or(i64::MAX), charge);
            if self.charged.as_ref().is_some_and(|charged| charged.spike) {
                metrics
                    .usage_spikes
                    .get_or_create(&KeyLabels { key: key.into() })
                    .inc();
            }
        }
        metrics.latency.observe(self.total.as_secs_f64());
        if let Some(upstream) = self.upstream {
            metrics.upstream_latency.observe(upstream.as_secs_f64());
        }
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        RequestLine {
            client: self.client,
            key: self.key,
            method: self.method,
            route: self.route,
            status: self.status,
            decision: self.decision,
            reason: self.reason,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            upstream_ms: self.upstream.map(ms),
            total_ms: ms(self.total),
            charged: self.charged,
            rollout: self.rollout,
        }
    }
}

/// A settled request's audit line: typed fields, written straight into the line's buffer.
/// Names, addresses, figures and reasons only: never a key, a header value or a body.
pub struct RequestLine {
    client: IpAddr,
    /// The key's name.
    key: Option<Arc<str>>,
    method: String,
    route: String,
    status: u16,
    decision: &'static str,
    reason: &'static str,
    bytes_in: u64,
    bytes_out: u64,
    upstream_ms: Option<f64>,
    total_ms: f64,
    charged: Option<Charged>,
    /// Ids the route's typed segments checked ([A-Za-z0-9_-]{1,128}): safe to log as they are.
    rollout: Option<RolloutRef>,
}

impl crate::audit::Line for RequestLine {
    fn visit<S: crate::audit::Sink>(&self, ts: &str, kind: &str, sink: &mut S) {
        // In byte order of the keys, as the JSON form has always had them.
        if let Some(rollout) = &self.rollout {
            sink.str("attempt", &rollout.attempt);
        }
        sink.u64("bytes_in", self.bytes_in);
        sink.u64("bytes_out", self.bytes_out);
        sink.ip("client", self.client);
        if let Some(charged) = &self.charged {
            sink.f64("cost_usd", charged.usd);
        }
        sink.str("decision", self.decision);
        match &self.key {
            Some(key) => sink.str("key", key),
            None => sink.null("key"),
        }
        sink.str("kind", kind);
        sink.str("method", &self.method);
        if let Some(charged) = &self.charged {
            sink.str("model", &charged.model);
        }
        sink.str("reason", self.reason);
        if let Some(rollout) = &self.rollout {
            sink.str("rollout", &rollout.rollout);
        }
        sink.str("route", &self.route);
        sink.u64("status", u64::from(self.status));
        if let Some(charged) = &self.charged {
            sink.bool("tokens_estimated", charged.usage.estimated);
            sink.u64("tokens_in", charged.usage.input);
            sink.u64("tokens_out", charged.usage.output);
        }
        sink.f64("total_ms", self.total_ms);
        sink.str("ts", ts);
        match self.upstream_ms {
            Some(ms) => sink.f64("upstream_ms", ms),
            None => sink.null("upstream_ms"),
        }
    }

    fn priority(&self) -> u8 {
        if self.decision == "allow" {
            crate::telemetry::priority::INFO
        } else {
            crate::telemetry::priority::WARNING
        }
    }

    fn noteworthy(&self) -> bool {
        self.decision != "allow"
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
    /// A metered answer's reader and its reservation, settled when the body ends.
    meter: Option<(Meter, Metered)>,
    _held: Held,
}

impl Tracked {
    pub fn new(inner: BoxBody<Bytes, BoxError>, record: Record, held: Held) -> Tracked {
        Tracked {
            inner,
            record,
            bytes_out: 0,
            stall: None,
            meter: None,
            _held: held,
        }
    }

    /// Reads the answer for its usage (a 2xx one: an error answer is charged nothing, and its
    /// reservation goes back). A stream that loses its usage-only chunk loses its length too.
    pub fn meter(&mut self, metered: Metered, parts: &mut http::response::Parts) {
        if !parts.status.is_success() {
            return;
        }
        let content_type = parts.headers.get(http::header::CONTENT_TYPE);
        let meter = Meter::for_content_type(content_type.map(|v| v.as_bytes()), metered.strip);
        if metered.strip && matches!(meter, Meter::Sse(_)) {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        self.meter = Some((meter, metered));
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
        loop {
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let data = match &mut self.meter {
                        Some((meter, _)) => {
                            let data = meter.observe(&data).unwrap_or(data);
                            // The last frame (hyper may not poll again to see the end).
                            if self.inner.is_end_stream() {
                                if let Some((meter, _)) = &mut self.meter {
                                    meter.end();
                                }
                            }
                            data
                        }
                        None => data,
                    };
                    // All of it was the stripped usage chunk (or held back until its event ends).
                    if data.is_empty() && self.meter.is_some() {
                        continue;
                    }
                    self.bytes_out += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(None) => {
                    if let Some((meter, _)) = &mut self.meter {
                        meter.end();
                    }
                    let held = self.meter.as_mut().and_then(|(meter, _)| meter.take_held());
                    if let Some(held) = held {
                        self.bytes_out += held.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(held))));
                    }
                    return Poll::Ready(None);
                }
                // The status has gone out already, so only the audit line can tell that the
                // upstream broke the stream (and the client got a cut response).
                Poll::Ready(Some(Err(err))) => {
                    self.record.decision = "error";
                    self.record.reason = "upstream_stream_broken";
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A metered stream may still hold bytes when the upstream's body ends; a JSON answer's
        // reader holds none, so its last frame may end the body (no poll just to see the end).
        self.meter
            .as_ref()
            .is_none_or(|(meter, _)| meter.holds_nothing())
            && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.meter {
            Some((_, metered)) if metered.strip => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let bytes_out = self.bytes_out;
        if self.stall.as_ref().is_some_and(|flag| flag.stalled()) {
            self.record.decision = "error";
            self.record.reason = "client_stalled";
        }
        if let Some((mut meter, metered)) = self.meter.take() {
            self.record.charged = Some(settle(&mut meter, metered, self.record.client));
        }
        self.record.finish(bytes_out);
    }
}

/// Charges what the answer reported (or the estimate) in place of the reservation, and raises
/// `usage_spike` when the charge trips the rule.
fn settle(meter: &mut Meter, metered: Metered, client: IpAddr) -> Charged {
    let (reported, chars) = meter.finish();
    let used = usage::settle(reported, metered.input_estimate, chars);
    let model = metered.ticket.model.clone();
    let key = metered.ticket.key();
    let (input, output) = (used.input, used.output);
    let charge = metered.ticket.settle(used, clock::now());
    if let Some(shared) = metered.fleet {
        shared.settle(input, output, charge.usd);
    }
    if let Some(spike) = &charge.spike {
        if let (true, Some(fleet)) = (spike.suspended, crate::fleet::published()) {
            fleet.publish(crate::fleet::keystate::Change::Suspend(
                key.to_string(),
                format!(
                    "usage_spike on {}: {} tokens in 5 minutes",
                    fleet.settings.instance, spike.tokens
                ),
            ));
        }
        crate::audit::emit(
            "usage_spike",
            crate::audit::fields(json!({
                "key": &*key,
                "client": client,
                "tokens_5m": spike.tokens,
                "trailing_average": spike.average,
                "action": if spike.suspended { "suspend" } else { "alert" },
            })),
        );
    }
    Charged {
        model,
        usage: used,
        usd: charge.usd,
        spike: charge.spike.is_some(),
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
    async fn a_metered_stream_loses_its_usage_chunk_and_is_charged() {
        let stream: &[&[u8]] = &[
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\nda",
            b"ta: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":8,",
            b"\"completion_tokens\":6}}\n\n",
            b"data: [DONE]\n\n",
        ];
        let metrics = Arc::new(Metrics::new());
        let ledger = Arc::new(crate::proxy::budget::Ledger::default());
        let key: Arc<str> = "k".into();
        let ticket = ledger
            .admit(
                &key,
                &Default::default(),
                (
                    "m".into(),
                    crate::config::proxy::Price {
                        input: 1e6,
                        output: 1e6,
                    },
                ),
                (1, 100),
                clock::now(),
            )
            .unwrap();
        let mut record = Record::start(metrics.clone(), [127, 0, 0, 1].into(), &http::Method::POST);
        record.key = Some(key.clone());
        record.status = 200;
        let frames = stream
            .iter()
            .map(|piece| Ok(Frame::data(Bytes::from_static(piece))))
            .collect::<VecDeque<_>>();
        let mut tracked = Tracked::new(Scripted(frames).boxed(), record, Held::default());
        let (mut parts, ()) = http::Response::builder()
            .header("content-type", "text/event-stream")
            .body(())
            .unwrap()
            .into_parts();
        tracked.meter(
            Metered {
                ticket,
                input_estimate: 1,
                strip: true,
                fleet: None,
            },
            &mut parts,
        );
        let body = tracked.collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n"
        );
        crate::proxy::audit_queue::flush(Duration::from_secs(30));
        let text = metrics.encode();
        assert!(
            text.contains(r#"proxyguard_tokens_total{key="k",model="m",direction="in"} 8"#),
            "{text}"
        );
        assert!(
            text.contains(r#"proxyguard_spend_usd_total{key="k",model="m"} 14"#),
            "{text}"
        );
        assert_eq!(ledger.snapshot().keys["k"].day_tokens, 14);
    }

    /// The audit fields as they were built before the typed line: a map from `json!`.
    fn reference(f: &Finished) -> serde_json::Map<String, serde_json::Value> {
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        let mut fields = crate::audit::fields(json!({
                "client": f.client,
                "key": f.key.as_deref(),
                "method": f.method,
                "route": f.route,
                "status": f.status,
                "decision": f.decision,
                "reason": f.reason,
                "bytes_in": f.bytes_in,
                "bytes_out": f.bytes_out,
                "upstream_ms": f.upstream.map(ms),
                "total_ms": ms(f.total),
        }));
        if let Some(charged) = &f.charged {
            fields.insert("model".into(), (*charged.model).into());
            fields.insert("tokens_in".into(), charged.usage.input.into());
            fields.insert("tokens_out".into(), charged.usage.output.into());
            fields.insert("tokens_estimated".into(), charged.usage.estimated.into());
            fields.insert("cost_usd".into(), charged.usd.into());
        }
        if let Some(rollout) = &f.rollout {
            fields.insert("rollout".into(), rollout.rollout.clone().into());
            fields.insert("attempt".into(), rollout.attempt.clone().into());
        }
        fields
    }

    #[test]
    fn the_typed_line_is_exactly_the_map_it_replaced() {
        let charged = |usd: f64, estimated: bool| Charged {
            model: "gpt-4o \"mini\"\u{1b}".into(),
            usage: usage::Usage {
                input: 8,
                output: u64::MAX,
                estimated,
            },
            usd,
            spike: false,
        };
        let cases = [
            (
                IpAddr::from([127, 0, 0, 1]),
                None,
                "GET",
                "-",
                0,
                "deny",
                "malformed",
                None,
                None,
                None,
            ),
            (
                "::ffff:10.0.0.1".parse().unwrap(),
                Some("team a"),
                "POST",
                "/v1/chat/completions",
                200,
                "allow",
                "forwarded",
                Some(Duration::from_nanos(1_234_567)),
                Some(charged(0.03, false)),
                None,
            ),
            (
                "2001:db8::1".parse().unwrap(),
                Some("rollout:r1"),
                "PATCH",
                "/rollouts/{rollout}/attempts/{attempt}/v1/responses",
                429,
                "error",
                "client_stalled",
                Some(Duration::ZERO),
                Some(charged(f64::NAN, true)),
                Some(RolloutRef {
                    rollout: "r-1_x".into(),
                    attempt: "7".into(),
                }),
            ),
            (
                IpAddr::from([10, 1, 2, 3]),
                Some("k=\\v"),
                "M\tX",
                "/v1/é",
                502,
                "allow",
                "forwarded",
                None,
                Some(charged(14.0, false)),
                None,
            ),
        ];
        for (client, key, method, route, status, decision, reason, upstream, charged, rollout) in
            cases
        {
            let finished = Finished {
                total: Duration::from_micros(98_765_432),
                bytes_out: 1 << 40,
                metrics: Arc::new(Metrics::new()),
                client,
                method: method.into(),
                route: route.into(),
                rollout,
                key: key.map(Arc::from),
                status,
                decision,
                reason,
                bytes_in: 17,
                upstream,
                charged,
            };
            let fields = reference(&finished);
            let (typed, mapped) = crate::audit::both_forms(&finished.settle(), fields);
            assert_eq!(typed, mapped);
        }
    }

    #[tokio::test]
    async fn a_stream_that_ends_is_allowed() {
        let text = finish_with(vec![Ok(Frame::data(Bytes::from_static(b"{}")))]).await;
        assert!(text.contains(r#"status="200",decision="allow""#), "{text}");
        assert!(!text.contains("upstream_stream_broken"), "{text}");
    }
}
