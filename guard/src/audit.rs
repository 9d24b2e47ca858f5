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

/// Queues several records of one kind as one chunk: the request audit path under load.
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
        block.push(out);
        lines.push(json);
    }
    if lines.is_empty() {
        return;
    }
    {
        let feed = feed();
        let mut recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
        for text in &lines {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(text.clone());
            // No subscriber is not an error.
            let _ = feed.live.send(text.clone());
        }
    }
    // Queued, never written here: this runs on request workers and kernel event readers, and a
    // stdout nobody reads must not stall them (see `outbox`).
    crate::outbox::stdout(kind, block);
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
