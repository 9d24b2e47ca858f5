//! The audit stream: one JSON object per line on stdout, for every security event and state change.
//!
//! Records carry names, addresses, ids and reasons. They never carry keys, header values or bodies.

use std::io::Write;

use serde_json::{Map, Value};

/// Writes `record` as one line, with `ts` (RFC 3339, UTC) and `kind` first.
pub fn emit(kind: &str, mut record: Map<String, Value>) {
    let mut line = Map::new();
    line.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    line.insert("kind".into(), kind.into());
    line.append(&mut record);
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the daemon down; the event is still counted in the maps.
    let _ = serde_json::to_writer(&mut out, &line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The fields of a `json!({...})` literal, ready for [`emit`].
pub fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_owned(), other)]),
    }
}
