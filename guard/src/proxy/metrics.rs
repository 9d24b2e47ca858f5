//! Prometheus metrics (threat 15), served on the loopback admin listener. Labels are route
//! templates, statuses, reasons and key names: bounded sets, and never a secret.

use std::{collections::HashMap, sync::Arc};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
    pub decision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key: String,
}

/// Tokens by key, model (the pricing table's name or `other`) and direction (`in`, `out`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub key: String,
    pub model: String,
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpendLabels {
    pub key: String,
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KernelLabels {
    pub program: String,
    pub counter: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub denials: Family<ReasonLabels, Counter>,
    pub key_requests: Family<KeyLabels, Counter>,
    /// Unix time of each key's latest request: a key that should be idle and is not stands out.
    pub key_last_used: Family<KeyLabels, Gauge>,
    pub latency: Histogram,
    pub upstream_latency: Histogram,
    pub in_flight: Gauge,
    pub connections: Gauge,
    /// Connections refused when accepted, by reason (`source_connections`, `source_pending_heads`).
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Connections proxyguard cut because of what the client did, by reason (`client_stalled`,
    /// `malformed_request`, `head_too_large`).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// Client connections accepted, by the worker thread that serves them (`crate::workers`).
    pub worker_connections: Family<WorkerLabels, Counter>,
    /// Tokens in and out (issue 14), as reported or estimated.
    pub tokens: Family<TokenLabels, Counter>,
    /// US dollars at `proxy.pricing`'s prices.
    pub spend: Family<SpendLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// `usage_spike` alerts, per key.
    pub usage_spikes: Family<KeyLabels, Counter>,
    /// 1 for a key a usage spike suspended, 0 for the others (every configured key): read from
    /// the ledger at each scrape, so a suspension, a resume and the state loaded at start all show.
    key_suspended: Family<KeyLabels, Gauge>,
    /// The guarded-process audits (threats 6, 7, 12), refreshed from their summary at each scrape.
    findings: Family<CheckLabels, Gauge>,
    files_fixed: Gauge,
    audits: Gauge,
    /// The kernel programs' counters (bind, xdp, egress, environ), as the daemon last read them.
    kernel: Family<KernelLabels, Gauge>,
    /// Each key's series, looked up once (`count_key`).
    per_key: std::sync::Mutex<HashMap<Arc<str>, KeySeries>>,
    /// `[fleet]`: the mode and its changes, refreshed at each scrape.
    fleet: crate::fleet::metrics::FleetGauges,
}

type Spend = Counter<f64, std::sync::atomic::AtomicU64>;

/// One key's series in the families above. A handle shares its family's value, so counting
/// through it is counting in the family; holding them saves building label strings and a lookup
/// per series on every request (issue 14's cost of accounting).
struct KeySeries {
    requests: Counter,
    last_used: Gauge,
    /// By model: tokens in, tokens out, spend. A key uses a few models (the pricing table's and
    /// `other`): a short list.
    models: Vec<(Arc<str>, Counter, Counter, Spend)>,
}

/// What one metered request used, for `count_key`.
pub struct Charge<'a> {
    pub model: &'a Arc<str>,
    pub input: u64,
    pub output: u64,
    pub usd: f64,
}

/// Seconds, from 1 ms to about 5 minutes: completions are slow, rejections are fast.
fn buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 19)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("proxyguard");
        let requests = Family::<RequestLabels, Counter>::default();
        let denials = Family::<ReasonLabels, Counter>::default();
        let key_requests = Family::<KeyLabels, Counter>::default();
        let key_last_used = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "key_last_used_timestamp_seconds",
            "Unix time of the latest request per key name",
            key_last_used.clone(),
        );
        let latency = Histogram::new(buckets());
        let upstream_latency = Histogram::new(buckets());
        let in_flight = Gauge::default();
        let connections = Gauge::default();
        registry.register(
            "requests",
            "Requests by route, status and decision",
            requests.clone(),
        );
        registry.register(
            "denials",
            "Requests refused by proxyguard, by reason",
            denials.clone(),
        );
        registry.register(
            "key_requests",
            "Authenticated requests per key name",
            key_requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Total time per request, to the end of the response",
            latency.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until the upstream's response head",
            upstream_latency.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "active_connections",
            "Open client connections",
            connections.clone(),
        );
        let connections_refused = Family::<ReasonLabels, Counter>::default();
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections refused on accept (per-source caps), by reason",
            connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections cut for the client's behaviour (stalled reader, malformed head), by reason",
            connections_closed.clone(),
        );
        let worker_connections = Family::<WorkerLabels, Counter>::default();
        registry.register(
            "worker_connections",
            "Client connections accepted, by the worker thread that serves them",
            worker_connections.clone(),
        );
        let findings = Family::<CheckLabels, Gauge>::default();
        let files_fixed = Gauge::default();
        let audits = Gauge::default();
        registry.register(
            "audit_findings",
            "Findings open at the last audit of the guarded service, by check",
            findings.clone(),
        );
        registry.register(
            "audit_files_fixed",
            "Temp and open files of the guarded service set to 0600 since start",
            files_fixed.clone(),
        );
        registry.register(
            "audit_runs",
            "Full audits of the guarded service since start",
            audits.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        let spend = Family::<SpendLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let usage_spikes = Family::<KeyLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens by key, model (priced models, else other) and direction (in, out)",
            tokens.clone(),
        );
        registry.register(
            "spend_usd",
            "Spend in US dollars at proxy.pricing's prices, by key and model",
            spend.clone(),
        );
        registry.register(
            "usage_spikes",
            "usage_spike alerts raised, per key",
            usage_spikes.clone(),
        );
        let key_suspended = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "key_suspended",
            "1 while a usage spike keeps the key suspended (proxyguard keys resume NAME lifts it), else 0",
            key_suspended.clone(),
        );
        registry.register(
            "events_dropped",
            "Events not delivered because a sink's queue was full, by sink (stdout, stderr, otlp) and record kind (log for the diagnostic log)",
            crate::outbox::dropped().clone(),
        );
        registry.register(
            "otlp_exported",
            "Audit records the OTLP receiver ([export] otlp_endpoint) accepted",
            crate::export::exported().clone(),
        );
        registry.register(
            "inotify_overflow",
            "Temp-file change notices dropped because the audit fell behind (each one triggers a full audit)",
            crate::checks::continuous::overflows().clone(),
        );
        let kernel = Family::<KernelLabels, Gauge>::default();
        registry.register(
            "kernel_events",
            "Counters of the kernel programs (summed over CPUs), by program family and counter",
            kernel.clone(),
        );
        let fleet = crate::fleet::metrics::FleetGauges::register(&mut registry);
        Metrics {
            registry,
            fleet,
            findings,
            files_fixed,
            audits,
            kernel,
            tokens,
            spend,
            usage_spikes,
            key_suspended,
            requests,
            denials,
            key_requests,
            key_last_used,
            latency,
            upstream_latency,
            in_flight,
            connections,
            connections_refused,
            connections_closed,
            per_key: Default::default(),
            worker_connections,
        }
    }

    /// Counts a request of `key` (its metrics label) at Unix time `now`, and what it used. The
    /// key's series are created on its first request, as `get_or_create` would.
    pub fn count_key(&self, key: &str, now: i64, charged: Option<Charge<'_>>) {
        let mut per_key = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
        if !per_key.contains_key(key) {
            let labels = KeyLabels { key: key.into() };
            let series = KeySeries {
                requests: self.key_requests.get_or_create(&labels).clone(),
                last_used: self.key_last_used.get_or_create(&labels).clone(),
                models: Vec::new(),
            };
            per_key.insert(key.into(), series);
        }
        let Some(series) = per_key.get_mut(key) else {
            return;
        };
        series.requests.inc();
        series.last_used.set(now);
        let Some(charge) = charged else {
            return;
        };
        let at = match series
            .models
            .iter()
            .position(|(model, ..)| **model == **charge.model)
        {
            Some(at) => at,
            None => {
                let tokens = |direction: &str| {
                    self.tokens
                        .get_or_create(&TokenLabels {
                            key: key.into(),
                            model: charge.model.to_string(),
                            direction: direction.into(),
                        })
                        .clone()
                };
                let spend = self
                    .spend
                    .get_or_create(&SpendLabels {
                        key: key.into(),
                        model: charge.model.to_string(),
                    })
                    .clone();
                series
                    .models
                    .push((charge.model.clone(), tokens("in"), tokens("out"), spend));
                series.models.len() - 1
            }
        };
        let (_, tokens_in, tokens_out, spend) = &series.models[at];
        tokens_in.inc_by(charge.input);
        tokens_out.inc_by(charge.output);
        spend.inc_by(charge.usd);
    }

    /// Counts one connection under `family` with `reason`.
    pub fn count(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let summary = crate::checks::continuous::summary();
        self.findings.clear();
        for (check, open) in &summary.open {
            self.findings
                .get_or_create(&CheckLabels {
                    check: (*check).to_owned(),
                })
                .set(*open as i64);
        }
        self.files_fixed.set(summary.fixed as i64);
        self.audits.set(summary.audits as i64);
        if let Some(ledger) = crate::proxy::budget::published() {
            self.key_suspended.clear();
            for (key, suspended) in ledger.suspensions() {
                self.key_suspended
                    .get_or_create(&KeyLabels { key })
                    .set(i64::from(suspended));
            }
        }
        for (program, counter, value) in crate::kernel::last_counters() {
            self.kernel
                .get_or_create(&KernelLabels { program, counter })
                .set(value as i64);
        }
        self.fleet.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_labels() {
        let metrics = Metrics::new();
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: "/v1/models".into(),
                status: 200,
                decision: "allow".into(),
            })
            .inc();
        metrics
            .denials
            .get_or_create(&ReasonLabels {
                reason: "bad_key".into(),
            })
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"proxyguard_requests_total{route="/v1/models",status="200",decision="allow"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"proxyguard_denials_total{reason="bad_key"} 1"#),
            "{text}"
        );
        assert!(text.contains("proxyguard_active_connections"), "{text}");
    }
}
