//! What `top` shows, computed from the daemon's snapshots: the metrics read by name from their
//! text exposition (so metrics others add need no change here), rates from two snapshots, and
//! latency quantiles from the histogram buckets. The result is a list of titled tables that the
//! terminal view and the plain-text frame both render.

use std::{collections::BTreeMap, time::Instant};

use serde_json::Value;

/// One metric sample: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus / OpenMetrics text format: `name{k="v",...} value [timestamp]`.
/// Lines it cannot read are skipped: a view must not die on a metric it does not know.
pub fn parse_metrics(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number.parse().ok()?,
    };
    Some(Series {
        name,
        labels,
        value,
    })
}

/// One poll of the daemon.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub pid: u64,
    pub uptime_secs: u64,
    pub kernel_on: bool,
    pub proxy_on: bool,
    pub series: Vec<Series>,
    /// (program, counter) → value.
    pub kernel: BTreeMap<(String, String), f64>,
    pub refused: Vec<Value>,
    pub events: Vec<Value>,
}

impl Sample {
    pub fn from_snapshot(snapshot: &Value, at: Instant) -> Sample {
        let kernel = snapshot["kernel_counters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some((
                    (
                        c["program"].as_str()?.to_owned(),
                        c["counter"].as_str()?.to_owned(),
                    ),
                    c["value"].as_f64()?,
                ))
            })
            .collect();
        let list = |field: &str| snapshot[field].as_array().cloned().unwrap_or_default();
        Sample {
            at,
            pid: snapshot["pid"].as_u64().unwrap_or(0),
            uptime_secs: snapshot["uptime_secs"].as_u64().unwrap_or(0),
            kernel_on: snapshot["kernel"] == true,
            proxy_on: snapshot["proxy"] == true,
            series: snapshot["metrics"]
                .as_str()
                .map(parse_metrics)
                .unwrap_or_default(),
            kernel,
            refused: list("refused"),
            events: list("events"),
        }
    }

    /// `name`'s samples summed per value of `label` (every sample under "" without it).
    fn sum_by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.series.iter().filter(|s| s.name == name) {
            *out.entry(s.label(label).unwrap_or("").to_owned())
                .or_insert(0.0) += s.value;
        }
        out
    }

    fn has(&self, name: &str) -> bool {
        self.series.iter().any(|s| s.name == name)
    }

    /// A histogram's cumulative buckets (upper bound, count), sorted.
    fn buckets(&self, name: &str) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .series
            .iter()
            .filter(|s| s.name == bucket)
            .filter_map(|s| Some((parse_le(s.label("le")?)?, s.value)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        n => n.parse().ok(),
    }
}

/// The quantile `q` of cumulative `buckets`, interpolated linearly inside its bucket (as
/// Prometheus's `histogram_quantile` does). None without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Past the last finite bound: say the bound, the most that is known.
                return Some(lower.0);
            }
            let width = count - lower.1;
            let share = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * share);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// A titled table: what both renderers draw.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Section {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// What to show when there are no rows.
    pub empty: String,
}

/// The frame: a one-line header and the sections, in the order [`Frame::sections`] names.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Frame {
    pub header: String,
    pub requests: Section,
    pub keys: Section,
    pub refused: Section,
    pub latency: Section,
    pub kernel: Section,
    pub events: Section,
}

impl Frame {
    /// The sections in reading order (the plain-text frame's, and the narrow view's).
    pub fn sections(&self) -> [&Section; 6] {
        [
            &self.requests,
            &self.latency,
            &self.keys,
            &self.refused,
            &self.kernel,
            &self.events,
        ]
    }
}

/// How a per-key column's numbers read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Count,
    /// US dollars: the rate per hour (a key's spend per second is too small to read).
    Usd,
}

/// A per-key column pair (rate, total) of a counter labelled `key`, summed over its other labels
/// (model, direction).
struct KeyColumn {
    rate: &'static str,
    total: &'static str,
    metric: &'static str,
    unit: Unit,
}

/// Per-key columns; a column is shown only when its metric exists (tokens and spend once a
/// metered request was answered, `proxy.usage.enabled`). Keys rank by the last shown column's
/// increase first: spend, then tokens, then requests.
const KEY_COLUMNS: &[KeyColumn] = &[
    KeyColumn {
        rate: "req/s",
        total: "requests",
        metric: "proxyguard_key_requests_total",
        unit: Unit::Count,
    },
    KeyColumn {
        rate: "tok/s",
        total: "tokens",
        metric: "proxyguard_tokens_total",
        unit: Unit::Count,
    },
    KeyColumn {
        rate: "$/h",
        total: "spend $",
        metric: "proxyguard_spend_usd_total",
        unit: Unit::Usd,
    },
];

/// 1 for a key a usage spike suspended: such a key is listed first, marked, requests or not.
const SUSPENDED: &str = "proxyguard_key_suspended";

/// Kernel counters shown even while zero: the ones an operator looks for.
const KERNEL_ALWAYS: &[(&str, &str)] = &[
    ("xdp", "dropped_rate"),
    ("xdp", "dropped_deny"),
    ("bind", "denied"),
    ("egress", "denied"),
    ("environ", "other_reads"),
];

/// Rows per table; the view shows fewer when the terminal is small.
const TOP: usize = 10;

/// The newest sample and the ones rates and quantiles are computed against.
struct Window<'a> {
    newest: &'a Sample,
    previous: Option<&'a Sample>,
    oldest: Option<&'a Sample>,
}

impl Window<'_> {
    /// The per-second rate of a counter that reads `now` and read `before` in the previous
    /// sample (absent there: zero then); `-` without a previous sample.
    fn rate(&self, now: f64, before: Option<f64>) -> String {
        self.per_sec(now, before)
            .map_or_else(|| "-".to_owned(), format_rate)
    }

    /// The per-second rate [`Window::rate`] formats; None without a previous sample.
    fn per_sec(&self, now: f64, before: Option<f64>) -> Option<f64> {
        let previous = self.previous?;
        let secs = self.newest.at.duration_since(previous.at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        // A restarted daemon starts its counters again: no negative rates.
        Some(((now - before.unwrap_or(0.0)) / secs).max(0.0))
    }

    /// `name` summed by `label` in the newest and the previous sample.
    fn sums(&self, name: &str, label: &str) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
        (
            self.newest.sum_by(name, label),
            self.previous
                .map(|p| p.sum_by(name, label))
                .unwrap_or_default(),
        )
    }
}

/// Builds the frame from the newest sample, the one before it (rates), and the oldest kept
/// (latency over a window).
pub fn frame(newest: &Sample, previous: Option<&Sample>, oldest: Option<&Sample>) -> Frame {
    let window = Window {
        newest,
        previous,
        oldest,
    };
    let header = format!(
        "proxyguard pid {}  up {}  kernel half {}  L7 proxy {}",
        newest.pid,
        format_uptime(newest.uptime_secs),
        if newest.kernel_on { "on" } else { "off" },
        if newest.proxy_on { "on" } else { "off" },
    );
    Frame {
        header,
        requests: requests(&window),
        keys: keys(&window),
        refused: refused(newest),
        latency: latency(&window),
        kernel: kernel(&window),
        events: events(newest),
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Allowed, then every denial reason (most first).
fn requests(window: &Window<'_>) -> Section {
    let mut rows = Vec::new();
    let (decisions, before) = window.sums("proxyguard_requests_total", "decision");
    if window.newest.proxy_on {
        let allowed = decisions.get("allow").copied().unwrap_or(0.0);
        rows.push(vec![
            "allowed".to_owned(),
            window.rate(allowed, before.get("allow").copied()),
            format_count(allowed),
        ]);
    }
    let (denials, before) = window.sums("proxyguard_denials_total", "reason");
    let mut reasons: Vec<(&String, &f64)> = denials.iter().collect();
    reasons.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (reason, total) in reasons {
        rows.push(vec![
            format!("refused {}", clean(reason)),
            window.rate(*total, before.get(reason).copied()),
            format_count(*total),
        ]);
    }
    Section {
        title: "Requests".into(),
        header: strings(&["decision", "/s", "total"]),
        rows,
        empty: "the L7 proxy is off".into(),
    }
}

/// Keys with a column pair (rate, total) per [`KEY_COLUMNS`] metric the daemon serves, and a
/// `state` column when it serves [`SUSPENDED`]. Suspended keys first, then by the increase of the
/// last column shown (spend, tokens, requests), then by its total.
fn keys(window: &Window<'_>) -> Section {
    let columns: Vec<(&KeyColumn, _)> = KEY_COLUMNS
        .iter()
        .filter(|column| window.newest.has(column.metric))
        .map(|column| (column, window.sums(column.metric, "key")))
        .collect();
    let suspended = window.newest.sum_by(SUSPENDED, "key");
    let with_state = window.newest.has(SUSPENDED);
    let mut header = vec!["key".to_owned()];
    for (column, _) in &columns {
        header.push(column.rate.to_owned());
        header.push(column.total.to_owned());
    }
    if with_state {
        header.push("state".to_owned());
    }
    let mut names: Vec<&String> = columns
        .iter()
        .flat_map(|(_, (now, _))| now.keys())
        .chain(suspended.iter().filter(|(_, v)| **v > 0.0).map(|(k, _)| k))
        .collect();
    names.sort();
    names.dedup();
    let mut keys: Vec<KeyRow> = Vec::new();
    for key in names {
        let mut row = vec![clean(key)];
        let (mut increases, mut totals) = (Vec::new(), Vec::new());
        for (column, (now, before)) in &columns {
            let value = now.get(key).copied().unwrap_or(0.0);
            let earlier = before.get(key).copied();
            let rate = window.per_sec(value, earlier);
            row.push(match (column.unit, rate) {
                (_, None) => "-".to_owned(),
                (Unit::Count, Some(rate)) => format_rate(rate),
                (Unit::Usd, Some(rate)) => format_usd(rate * 3600.0),
            });
            row.push(match column.unit {
                Unit::Count => format_count(value),
                Unit::Usd => format_usd(value),
            });
            increases.insert(0, value - earlier.unwrap_or(0.0));
            totals.insert(0, value);
        }
        let is_suspended = suspended.get(key).is_some_and(|v| *v > 0.0);
        if with_state {
            row.push(if is_suspended { "suspended" } else { "" }.to_owned());
        }
        increases.extend(totals);
        keys.push(KeyRow {
            suspended: is_suspended,
            rank: increases,
            row,
        });
    }
    keys.sort_by(|a, b| {
        b.suspended.cmp(&a.suspended).then_with(|| {
            b.rank
                .iter()
                .zip(&a.rank)
                .map(|(b, a)| b.total_cmp(a))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    Section {
        title: "Top keys".into(),
        header,
        rows: keys.into_iter().take(TOP).map(|k| k.row).collect(),
        empty: "no key has made a request".into(),
    }
}

/// A row of the keys table with what it is ranked by: suspended first, then `rank` descending
/// (the columns' increases, the last column first, then their totals in the same order).
struct KeyRow {
    suspended: bool,
    rank: Vec<f64>,
    row: Vec<String>,
}

fn refused(newest: &Sample) -> Section {
    let rows = newest
        .refused
        .iter()
        .take(TOP)
        .map(|r| {
            vec![
                clean(r["client"].as_str().unwrap_or("?")),
                clean(r["via"].as_str().unwrap_or("?")),
                r["count"].as_u64().unwrap_or(0).to_string(),
                clean(time_of(r["last"].as_str().unwrap_or(""))),
            ]
        })
        .collect();
    Section {
        title: "Refused clients".into(),
        header: strings(&["client", "via", "refused", "last"]),
        rows,
        empty: "none refused".into(),
    }
}

/// p50 and p99 over the kept window when it saw requests, else since start.
fn latency(window: &Window<'_>) -> Section {
    let name = "proxyguard_upstream_duration_seconds";
    let now = window.newest.buckets(name);
    let recent = window.oldest.map(|oldest| {
        let then = oldest.buckets(name);
        let buckets: Vec<(f64, f64)> = now
            .iter()
            .map(|(bound, count)| {
                let earlier = then
                    .iter()
                    .find(|(b, _)| b == bound)
                    .map_or(0.0, |(_, c)| *c);
                (*bound, (count - earlier).max(0.0))
            })
            .collect();
        let secs = window.newest.at.duration_since(oldest.at).as_secs().max(1);
        (format!("last {secs}s"), buckets)
    });
    let (span, buckets) = match recent {
        Some((span, buckets)) if buckets.last().is_some_and(|(_, c)| *c > 0.0) => (span, buckets),
        _ => ("since start".to_owned(), now),
    };
    let mut rows = Vec::new();
    if let Some(count) = buckets.last().map(|(_, c)| *c).filter(|c| *c > 0.0) {
        rows.push(vec![
            span,
            format_seconds(quantile(&buckets, 0.5)),
            format_seconds(quantile(&buckets, 0.99)),
            format_count(count),
        ]);
    }
    Section {
        title: "Upstream latency".into(),
        header: strings(&["over", "p50", "p99", "requests"]),
        rows,
        empty: "no upstream answer yet".into(),
    }
}

/// The counters that moved, and the ones an operator looks for.
fn kernel(window: &Window<'_>) -> Section {
    let mut rows = Vec::new();
    for ((program, counter), value) in &window.newest.kernel {
        let always = KERNEL_ALWAYS
            .iter()
            .any(|(p, c)| p == program && c == counter);
        if *value == 0.0 && !always {
            continue;
        }
        let before = window
            .previous
            .and_then(|p| p.kernel.get(&(program.clone(), counter.clone())))
            .copied();
        rows.push(vec![
            clean(program),
            clean(counter),
            window.rate(*value, before),
            format_count(*value),
        ]);
    }
    Section {
        title: "Kernel".into(),
        header: strings(&["program", "counter", "/s", "total"]),
        rows,
        empty: if window.newest.kernel_on {
            "no counters read yet".into()
        } else {
            "the kernel half is off (--no-kernel)".into()
        },
    }
}

/// Newest first.
fn events(newest: &Sample) -> Section {
    let rows = newest
        .events
        .iter()
        .rev()
        .map(|e| {
            vec![
                clean(time_of(e["ts"].as_str().unwrap_or(""))),
                clean(e["kind"].as_str().unwrap_or("?")),
                clean(&event_detail(e)),
            ]
        })
        .collect();
    Section {
        title: "Security events".into(),
        header: strings(&["time", "kind", "detail"]),
        rows,
        empty: "none".into(),
    }
}

/// Fields an event line leaves out: shown in their own columns, or sizes and timings that crowd
/// out what matters about a refusal.
const SKIPPED: &[&str] = &[
    "ts",
    "kind",
    "bytes_in",
    "bytes_out",
    "upstream_ms",
    "total_ms",
];

/// The fields of an event after its time and kind, `key=value`, the reason and severity first.
fn event_detail(event: &Value) -> String {
    let Some(fields) = event.as_object() else {
        return String::new();
    };
    let first = [
        "severity", "reason", "decision", "status", "client", "source",
    ];
    let mut parts: Vec<String> = first
        .iter()
        .filter_map(|k| fields.get(*k).map(|v| (*k, v)))
        .chain(
            fields
                .iter()
                .filter(|(k, _)| !first.contains(&k.as_str()) && !SKIPPED.contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), v)),
        )
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    parts.truncate(12);
    parts.join(" ")
}

/// `HH:MM:SS` of an RFC 3339 time (the whole text when it is not one).
fn time_of(ts: &str) -> &str {
    ts.get(11..19).unwrap_or(ts)
}

/// What the daemon sent, safe to put on a terminal: control characters (a process name can hold
/// any) shown as `?`.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn format_rate(per_sec: f64) -> String {
    if per_sec == 0.0 {
        "0".to_owned()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}")
    } else {
        format!("{per_sec:.0}")
    }
}

/// Dollars: cents once there are some, else four places (a test key's fractions of a cent).
fn format_usd(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value < 1.0 {
        format!("{value:.4}")
    } else {
        format!("{value:.2}")
    }
}

fn format_count(value: f64) -> String {
    format!("{value:.0}")
}

fn format_seconds(value: Option<f64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

fn format_uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    const TEXT: &str = r#"# HELP proxyguard_requests Requests by route, status and decision.
# TYPE proxyguard_requests counter
proxyguard_requests_total{route="/v1/models",status="200",decision="allow"} 7
proxyguard_requests_total{route="-",status="401",decision="deny"} 3
proxyguard_denials_total{reason="bad_key"} 3
proxyguard_key_requests_total{key="al\"ice"} 7
proxyguard_upstream_duration_seconds_bucket{le="0.001"} 0
proxyguard_upstream_duration_seconds_bucket{le="0.002"} 4
proxyguard_upstream_duration_seconds_bucket{le="0.004"} 8
proxyguard_upstream_duration_seconds_bucket{le="+Inf"} 8
# EOF
"#;

    #[test]
    fn metrics_are_read_by_name_and_labels() {
        let series = parse_metrics(TEXT);
        assert_eq!(series.len(), 8);
        assert_eq!(series[3].labels, vec![("key".into(), "al\"ice".into())]);
        assert_eq!(series[7].value, 8.0);
        assert_eq!(
            parse_line("proxyguard_active_connections 2").unwrap().value,
            2.0
        );
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets = [
            (0.001, 0.0),
            (0.002, 4.0),
            (0.004, 8.0),
            (f64::INFINITY, 8.0),
        ];
        assert_eq!(quantile(&buckets, 0.5), Some(0.002));
        assert!((quantile(&buckets, 0.75).unwrap() - 0.003).abs() < 1e-9);
        assert_eq!(quantile(&[(f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn a_frame_counts_allowed_and_refused_with_rates() {
        let t0 = Instant::now();
        let snapshot = |text: &str| {
            json!({
                "pid": 1, "uptime_secs": 5, "kernel": true, "proxy": true, "metrics": text,
                "kernel_counters": [{"program": "xdp", "counter": "dropped_rate", "value": 4}],
                "refused": [{"client": "192.0.2.1", "via": "l7", "count": 3, "last": "2026-12-01T10:00:01.000Z"}],
                "events": [{"ts": "2026-12-01T10:00:01.000Z", "kind": "bind_denied", "severity": "high", "comm": "evil\u{1b}[2J"}],
            })
        };
        let before = Sample::from_snapshot(&snapshot(""), t0);
        let now = Sample::from_snapshot(&snapshot(TEXT), t0 + Duration::from_secs(2));
        let frame = frame(&now, Some(&before), Some(&before));
        assert_eq!(frame.requests.rows[0], ["allowed", "3.5", "7"]);
        assert_eq!(frame.requests.rows[1], ["refused bad_key", "1.5", "3"]);
        assert_eq!(frame.keys.rows[0], ["al\"ice", "3.5", "7"]);
        assert_eq!(frame.refused.rows[0], ["192.0.2.1", "l7", "3", "10:00:01"]);
        assert_eq!(frame.latency.rows[0][1], "2.0ms");
        assert!(frame.kernel.rows.contains(&vec![
            "xdp".into(),
            "dropped_rate".into(),
            "0".into(),
            "4".into()
        ]));
        assert!(!frame.events.rows[0][2].contains('\u{1b}'));
    }

    #[test]
    fn keys_rank_by_spend_then_tokens_and_suspended_keys_show_first() {
        let t0 = Instant::now();
        let snapshot = |text: &str| json!({"pid": 1, "proxy": true, "metrics": text});
        let before = "proxyguard_key_requests_total{key=\"a\"} 1\n";
        let now = r#"proxyguard_key_requests_total{key="a"} 9
proxyguard_key_requests_total{key="b"} 2
proxyguard_key_requests_total{key="c"} 1
proxyguard_tokens_total{key="a",model="m",direction="in"} 30
proxyguard_tokens_total{key="a",model="m",direction="out"} 10
proxyguard_tokens_total{key="b",model="m",direction="in"} 500
proxyguard_tokens_total{key="b",model="m",direction="out"} 100
proxyguard_tokens_total{key="c",model="other",direction="in"} 9000
proxyguard_spend_usd_total{key="a",model="m"} 0.0
proxyguard_spend_usd_total{key="b",model="m"} 0.5
proxyguard_spend_usd_total{key="c",model="other"} 0.0
proxyguard_key_suspended{key="a"} 0
proxyguard_key_suspended{key="b"} 0
proxyguard_key_suspended{key="c"} 0
proxyguard_key_suspended{key="idle"} 1
"#;
        let before = Sample::from_snapshot(&snapshot(before), t0);
        let now = Sample::from_snapshot(&snapshot(now), t0 + Duration::from_secs(10));
        let keys = frame(&now, Some(&before), None).keys;
        assert_eq!(
            keys.header,
            ["key", "req/s", "requests", "tok/s", "tokens", "$/h", "spend $", "state"]
        );
        assert_eq!(
            keys.rows,
            [
                ["idle", "0", "0", "0", "0", "0", "0", "suspended"],
                ["b", "0.2", "2", "60", "600", "180.00", "0.5000", ""],
                ["c", "0.1", "1", "900", "9000", "0", "0", ""],
                ["a", "0.8", "9", "4.0", "40", "0", "0", ""],
            ]
        );
        // Without budget metrics: the requests columns alone, as before issue 14.
        let plain = Sample::from_snapshot(&snapshot(TEXT), t0);
        assert_eq!(
            frame(&plain, None, None).keys.header,
            ["key", "req/s", "requests"]
        );
    }
}
