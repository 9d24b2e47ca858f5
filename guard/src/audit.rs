//! The audit stream: one JSON object per line on stdout, for every security event and state change.
//!
//! Records carry names, addresses, ids and reasons. They never carry keys, header values or bodies.

use std::{
    collections::VecDeque,
    io::Write,
    sync::{Mutex, OnceLock},
};

use serde_json::{Map, Value};
use tokio::sync::broadcast;

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

/// The most recent records, oldest first, and a receiver for every later one.
pub fn subscribe() -> (Vec<String>, broadcast::Receiver<String>) {
    let feed = feed();
    let recent = feed.recent.lock().unwrap_or_else(|e| e.into_inner());
    // Subscribing under the lock: nothing falls between the snapshot and the stream.
    (recent.iter().cloned().collect(), feed.live.subscribe())
}

/// Writes `record` as one line, with `ts` (RFC 3339, UTC) and `kind` first.
pub fn emit(kind: &str, record: Map<String, Value>) {
    emit_all(kind, std::iter::once(record));
}

/// Writes several records of one kind with a single write: the request audit path under load.
pub fn emit_all(kind: &str, records: impl IntoIterator<Item = Map<String, Value>>) {
    let lines: Vec<String> = records
        .into_iter()
        .map(|record| render(kind, record))
        .collect();
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
    let mut block = String::with_capacity(lines.iter().map(|line| line.len() + 1).sum());
    for line in &lines {
        block.push_str(line);
        block.push('\n');
    }
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the daemon down; the event is still counted in the maps.
    let _ = out.write_all(block.as_bytes());
    let _ = out.flush();
}

fn render(kind: &str, mut record: Map<String, Value>) -> String {
    let mut line = Map::new();
    line.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    line.insert("kind".into(), kind.into());
    line.append(&mut record);
    Value::Object(line).to_string()
}

/// The fields of a `json!({...})` literal, ready for [`emit`].
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_owned(), other)]),
    }
}
