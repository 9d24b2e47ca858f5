//! The audit stream: one line on stdout for every security event and state change. It is a JSON
//! object with `[log] format = "json"`, and `kind key=value ...` otherwise; under journald the line
//! starts with its syslog priority instead of a timestamp, so `journalctl -p warning` finds the
//! denials. `proxyguard events` always gets the JSON objects.
//!
//! Records carry names, addresses, ids and reasons. They never carry keys, header values or bodies.

use std::{
    collections::VecDeque,
    sync::{Mutex, OnceLock},
};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::{
    config::LogFormat,
    telemetry::{priority, Stream},
};

/// How many recent records `proxyguard events` shows without `--follow`.
const RECENT: usize = 1000;

struct Feed {
    recent: Mutex<VecDeque<String>>,
    live: broadcast::Sender<String>,
}

fn feed() -> &'static Feed {
    static FEED: OnceLock<Feed> = OnceLock::new();
    FEED.get_or_init(|| Feed {
        recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        live: broadcast::channel(4096).0,
    })
}

/// How records are written to stdout, fixed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    json: bool,
    journal: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Chooses the stdout form from `[log] format` and what stdout is. Before this (and in unit
/// tests) records are JSON lines.
pub fn configure(format: LogFormat, stdout: Stream) {
    let _ = STYLE.set(Style {
        json: format == LogFormat::Json,
        journal: stdout == Stream::Journal,
    });
}

fn style() -> Style {
    STYLE.get().copied().unwrap_or(Style {
        json: true,
        journal: false,
    })
}

/// The most recent records, oldest first, and a receiver for every later one.
pub fn subscribe() -> (Vec<String>, broadcast::Receiver<String>) {
    let feed = feed();
    let recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
    // Subscribing under the lock: nothing falls between the snapshot and the stream.
    (recent.iter().cloned().collect(), feed.live.subscribe())
}

/// Queues `record` as one line, with `ts` (RFC 3339, UTC) and `kind` added.
pub fn emit(kind: &str, record: Map<String, Value>) {
    emit_all(kind, std::iter::once(record));
}

/// Queues several records of one kind as one chunk.
pub fn emit_all(kind: &str, records: impl IntoIterator<Item = Map<String, Value>>) {
    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let style = style();
    let mut block = Vec::new();
    let mut lines = Vec::new();
    for record in records {
        let line = render(&ts, kind, record);
        if crate::export::enabled() {
            crate::export::offer(kind, &line, record_priority(&line));
        }
        crate::control::glance::observe(&line);
        let (out, json) = write_map(line, style);
        block.push(out);
        lines.push(json);
    }
    publish(kind, block, lines);
}

/// A rendered record's stdout line and its JSON for the feed.
fn write_map(line: Map<String, Value>, style: Style) -> (String, String) {
    let mut out = String::new();
    if style.journal {
        out.push_str(&format!("<{}>", record_priority(&line)));
    }
    if !style.json {
        write_text(&mut out, &line, !style.journal);
    }
    let json = Value::Object(line).to_string();
    if style.json {
        out.push_str(&json);
    }
    out.push('\n');
    (out, json)
}

/// A record that writes its own fields, with no map built for it: the request line, one per
/// request. The JSON and text forms (and the map the export and `glance` take) are exactly what
/// [`emit_all`] makes of the same fields.
pub trait Line {
    /// Gives every field, `ts` and `kind` included, in byte order of their keys (the order
    /// serde_json's map writes). A line has no `severity` (the text form puts it first).
    fn visit<S: Sink>(&self, ts: &str, kind: &str, sink: &mut S);
    /// Its syslog priority, as [`record_priority`] would say of its map.
    fn priority(&self) -> u8;
    /// Whether `glance` keeps it (a refusal): only then is its map built for it.
    fn noteworthy(&self) -> bool;
}

/// Where a [`Line`] writes its fields.
pub trait Sink {
    fn str(&mut self, key: &'static str, value: &str);
    fn u64(&mut self, key: &'static str, value: u64);
    /// A non-finite number is `null`, as in serde_json.
    fn f64(&mut self, key: &'static str, value: f64);
    fn bool(&mut self, key: &'static str, value: bool);
    fn null(&mut self, key: &'static str);
    /// An address, written as its text.
    fn ip(&mut self, key: &'static str, value: std::net::IpAddr);
}

/// Queues typed records of one kind as one chunk: the request audit path under load. Each line
/// is written straight into its buffer; the map is built only for the export and for `glance`.
pub fn emit_lines<L: Line>(kind: &str, records: impl IntoIterator<Item = L>) {
    let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let style = style();
    let export = crate::export::enabled();
    let mut block = Vec::new();
    let mut lines = Vec::new();
    for record in records {
        if export || record.noteworthy() {
            let mut map = MapSink(Map::new());
            record.visit(&ts, kind, &mut map);
            if export {
                crate::export::offer(kind, &map.0, record.priority());
            }
            crate::control::glance::observe(&map.0);
        }
        let (out, json) = write_line(&record, &ts, kind, style);
        block.push(out);
        lines.push(json);
    }
    publish(kind, block, lines);
}

/// A typed record's stdout line and its JSON for the feed, as [`write_map`] writes its map.
fn write_line<L: Line>(record: &L, ts: &str, kind: &str, style: Style) -> (String, String) {
    let mut json = JsonSink::with_capacity(384);
    record.visit(ts, kind, &mut json);
    let json = json.finish();
    let mut out = String::with_capacity(json.len() + 8);
    if style.journal {
        out.push('<');
        out.push_str(itoa::Buffer::new().format(record.priority()));
        out.push('>');
    }
    if style.json {
        out.push_str(&json);
    } else {
        let mut text = TextSink::new(&mut out, ts, kind, !style.journal);
        record.visit(ts, kind, &mut text);
    }
    out.push('\n');
    (out, json)
}

/// Every form of a typed record next to the same forms of the map it stands for: what
/// [`emit_lines`] writes against what [`emit_all`] writes.
#[cfg(test)]
pub(crate) fn both_forms<L: Line>(
    record: &L,
    fields: Map<String, Value>,
) -> (Vec<String>, Vec<String>) {
    let (ts, kind) = ("2026-12-01T08:00:00.000Z", "request");
    let mut typed = Vec::new();
    let mut mapped = Vec::new();
    let line = render(ts, kind, fields);
    let mut map = MapSink(Map::new());
    record.visit(ts, kind, &mut map);
    typed.push(Value::Object(map.0).to_string());
    mapped.push(Value::Object(line.clone()).to_string());
    typed.push(record.priority().to_string());
    mapped.push(record_priority(&line).to_string());
    typed.push(record.noteworthy().to_string());
    mapped.push((line.get("decision").and_then(Value::as_str) != Some("allow")).to_string());
    for json in [true, false] {
        for journal in [true, false] {
            let style = Style { json, journal };
            let (out, feed) = write_line(record, ts, kind, style);
            typed.extend([out, feed]);
            let (out, feed) = write_map(line.clone(), style);
            mapped.extend([out, feed]);
        }
    }
    (typed, mapped)
}

/// Keeps the JSON lines for `proxyguard events` and queues the stdout lines.
fn publish(kind: &str, block: Vec<String>, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    {
        let feed = feed();
        let mut recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock, as `subscribe` counts itself in: no copy for a feed nobody follows.
        let live = feed.live.receiver_count() > 0;
        for text in lines {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            if live {
                // No subscriber left is not an error.
                let _ = feed.live.send(text.clone());
            }
            recent.push_back(text);
        }
    }
    // Queued, never written here: this runs on request workers and kernel event readers, and a
    // stdout nobody reads must not stall them (see `outbox`).
    crate::outbox::stdout(kind, block);
}

/// Builds the map [`emit_all`] would have rendered.
struct MapSink(Map<String, Value>);

impl Sink for MapSink {
    fn str(&mut self, key: &'static str, value: &str) {
        self.0.insert(key.into(), value.into());
    }
    fn u64(&mut self, key: &'static str, value: u64) {
        self.0.insert(key.into(), value.into());
    }
    fn f64(&mut self, key: &'static str, value: f64) {
        self.0.insert(key.into(), value.into());
    }
    fn bool(&mut self, key: &'static str, value: bool) {
        self.0.insert(key.into(), value.into());
    }
    fn null(&mut self, key: &'static str) {
        self.0.insert(key.into(), Value::Null);
    }
    fn ip(&mut self, key: &'static str, value: std::net::IpAddr) {
        self.0.insert(key.into(), value.to_string().into());
    }
}

/// Compact JSON, as `Value::to_string` writes it.
struct JsonSink {
    out: String,
}

impl JsonSink {
    fn with_capacity(capacity: usize) -> JsonSink {
        let mut out = String::with_capacity(capacity);
        out.push('{');
        JsonSink { out }
    }

    fn key(&mut self, key: &'static str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        // Keys are the record's own identifiers: nothing in them needs escaping.
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

impl Sink for JsonSink {
    fn str(&mut self, key: &'static str, value: &str) {
        self.key(key);
        push_json_str(&mut self.out, value);
    }
    fn u64(&mut self, key: &'static str, value: u64) {
        self.key(key);
        self.out.push_str(itoa::Buffer::new().format(value));
    }
    fn f64(&mut self, key: &'static str, value: f64) {
        self.key(key);
        push_f64(&mut self.out, value);
    }
    fn bool(&mut self, key: &'static str, value: bool) {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
    }
    fn null(&mut self, key: &'static str) {
        self.key(key);
        self.out.push_str("null");
    }
    fn ip(&mut self, key: &'static str, value: std::net::IpAddr) {
        use std::fmt::Write;
        self.key(key);
        // An address's text is digits, dots, colons and hex: nothing to escape.
        let _ = write!(self.out, "\"{value}\"");
    }
}

/// A JSON number as serde_json writes an `f64` (zmij's shortest form), `null` when not finite.
fn push_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        out.push_str(zmij::Buffer::new().format_finite(value));
    } else {
        out.push_str("null");
    }
}

/// A JSON string as serde_json escapes it: `"`, `\\` and the C0 controls (the short forms where
/// JSON has them, `\u00xx` otherwise); everything else as it is.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    let bytes = value.as_bytes();
    let mut start = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x09 => "\\t",
            0x0a => "\\n",
            0x0c => "\\f",
            0x0d => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so these slices fall on character boundaries.
        out.push_str(&value[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = at + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

/// The text form, as [`write_text`] writes the same fields: `ts` (unless journald stamps the
/// line) and `kind` first, then the rest in order.
struct TextSink<'a> {
    out: &'a mut String,
}

impl<'a> TextSink<'a> {
    fn new(out: &'a mut String, ts: &str, kind: &str, with_ts: bool) -> TextSink<'a> {
        if with_ts {
            push_text(out, ts);
            out.push(' ');
        }
        push_text(out, kind);
        TextSink { out }
    }

    /// Whether the field is written (`ts` and `kind` are, up front).
    fn key(&mut self, key: &'static str) -> bool {
        debug_assert!(key != "severity", "a typed line has no severity");
        if matches!(key, "ts" | "kind") {
            return false;
        }
        self.out.push(' ');
        self.out.push_str(key);
        self.out.push('=');
        true
    }
}

impl Sink for TextSink<'_> {
    fn str(&mut self, key: &'static str, value: &str) {
        if self.key(key) {
            push_text(self.out, value);
        }
    }
    fn u64(&mut self, key: &'static str, value: u64) {
        if self.key(key) {
            self.out.push_str(itoa::Buffer::new().format(value));
        }
    }
    fn f64(&mut self, key: &'static str, value: f64) {
        if self.key(key) {
            push_f64(self.out, value);
        }
    }
    fn bool(&mut self, key: &'static str, value: bool) {
        if self.key(key) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }
    fn null(&mut self, key: &'static str) {
        if self.key(key) {
            self.out.push_str("null");
        }
    }
    fn ip(&mut self, key: &'static str, value: std::net::IpAddr) {
        use std::fmt::Write;
        if self.key(key) {
            // Digits, dots, colons and hex: always bare.
            let _ = write!(self.out, "{value}");
        }
    }
}

/// The record with `ts` and `kind` added.
fn render(ts: &str, kind: &str, mut record: Map<String, Value>) -> Map<String, Value> {
    let mut line = Map::new();
    line.insert("ts".into(), ts.into());
    line.insert("kind".into(), kind.into());
    line.append(&mut record);
    line
}

/// `TS KIND severity=S key=value ...` (without `TS` when journald stamps the line). Strings are
/// bare when they can be, quoted otherwise; nested values are compact JSON. Control characters (a
/// process name can hold any) are always escaped, so a record cannot drive the terminal it is
/// shown on.
fn write_text(out: &mut String, record: &Map<String, Value>, with_ts: bool) {
    let start = out.len();
    if with_ts {
        if let Some(Value::String(ts)) = record.get("ts") {
            push_text(out, ts);
        }
    }
    if let Some(Value::String(kind)) = record.get("kind") {
        if out.len() > start {
            out.push(' ');
        }
        push_text(out, kind);
    }
    let first = record.get_key_value("severity");
    let rest = record
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "ts" | "kind" | "severity"));
    for (key, value) in first.into_iter().chain(rest) {
        if out.len() > start {
            out.push(' ');
        }
        push_text(out, key);
        out.push('=');
        match value {
            Value::String(text) => push_text(out, text),
            other => push_escaped(out, &other.to_string()),
        }
    }
}

fn push_text(out: &mut String, text: &str) {
    let bare = !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '"' | '=' | '\\'));
    if bare {
        out.push_str(text);
    } else {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                _ => push_char(out, c),
            }
        }
        out.push('"');
    }
}

/// JSON text, with the control characters JSON leaves raw (DEL, C1) escaped as well.
fn push_escaped(out: &mut String, json: &str) {
    json.chars().for_each(|c| push_char(out, c));
}

fn push_char(out: &mut String, c: char) {
    if c.is_control() {
        out.push_str(&format!("\\u{:04x}", u32::from(c)));
    } else {
        out.push(c);
    }
}

/// The syslog priority of a record: from its `severity`, else from what its kind says.
fn record_priority(record: &Map<String, Value>) -> u8 {
    match record.get("severity").and_then(Value::as_str) {
        Some("high" | "medium") => return priority::WARNING,
        Some("low") => return priority::NOTICE,
        Some(_) => return priority::INFO,
        None => {}
    }
    match record.get("kind").and_then(Value::as_str) {
        Some("reload_failed") => priority::ERR,
        Some("rate_spike") => priority::WARNING,
        Some("request") if record.get("decision").and_then(Value::as_str) != Some("allow") => {
            priority::WARNING
        }
        _ => priority::INFO,
    }
}

/// The fields of a `json!({...})` literal, ready for [`emit`].
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_owned(), other)]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value) -> Map<String, Value> {
        render("2026-12-01T08:00:00.000Z", "bind_denied", fields(value))
    }

    fn text(value: Value, with_ts: bool) -> String {
        let mut out = String::new();
        write_text(&mut out, &record(value), with_ts);
        out
    }

    #[test]
    fn a_text_record_is_one_readable_line() {
        let line = text(
            json!({ "severity": "high", "pid": 42, "comm": "python3", "addr": "0.0.0.0", "port": 4000 }),
            true,
        );
        assert_eq!(
            line,
            "2026-12-01T08:00:00.000Z bind_denied severity=high addr=0.0.0.0 comm=python3 pid=42 port=4000"
        );
    }

    #[test]
    fn typed_strings_and_numbers_are_written_as_serde_json_writes_them() {
        let mut text: String = (0u8..=0x7f).map(char::from).collect();
        text.push_str("é\u{9b}\u{2028}😀\"\\");
        let mut out = String::new();
        push_json_str(&mut out, &text);
        assert_eq!(out, Value::from(text.as_str()).to_string());
        for x in [
            0.0,
            14.0,
            0.03,
            1e-7,
            123456.789,
            1e21,
            f64::NAN,
            f64::INFINITY,
            -2.5,
        ] {
            let mut out = String::new();
            push_f64(&mut out, x);
            assert_eq!(out, Value::from(x).to_string(), "{x}");
        }
    }

    #[test]
    fn journald_lines_carry_no_timestamp() {
        let line = text(json!({ "port": 4000 }), false);
        assert_eq!(line, "bind_denied port=4000");
    }

    #[test]
    fn text_quotes_what_is_not_a_word_and_escapes_control_characters() {
        let line = text(
            json!({ "comm": "evil\u{1b}[31m \"x\"", "empty": "", "nested": { "a": ["\u{9b}"] } }),
            true,
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{9b}'),
            "{line}"
        );
        assert!(line.contains(r#"comm="evil\u001b[31m \"x\"""#), "{line}");
        assert!(line.contains(r#"empty="""#), "{line}");
        assert!(line.contains(r#"nested={"a":["\u009b"]}"#), "{line}");
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn denials_are_warnings_for_journald() {
        assert_eq!(
            record_priority(&record(json!({ "severity": "high" }))),
            priority::WARNING
        );
        assert_eq!(
            record_priority(&record(json!({ "severity": "low" }))),
            priority::NOTICE
        );
        assert_eq!(
            record_priority(&record(json!({ "severity": "info" }))),
            priority::INFO
        );
        let request = |decision: &str| {
            render(
                "t",
                "request",
                fields(json!({ "decision": decision, "status": 401 })),
            )
        };
        assert_eq!(record_priority(&request("deny")), priority::WARNING);
        assert_eq!(record_priority(&request("allow")), priority::INFO);
        assert_eq!(
            record_priority(&render("t", "reload_failed", Map::new())),
            priority::ERR
        );
        assert_eq!(
            record_priority(&render("t", "ready", Map::new())),
            priority::INFO
        );
    }
}
