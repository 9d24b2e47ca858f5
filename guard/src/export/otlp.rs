//! The OTLP logs messages proxyguard sends (opentelemetry-proto's `collector/logs/v1` and
//! `logs/v1`, only the fields used; the field numbers are the spec's), and how an audit record
//! becomes one log record.
//!
//! A record's body is its JSON line, as stdout and `proxyguard events` show it; its scalar
//! fields (kind, route, status, key, reason, ...) are attributes as well, so a backend can filter
//! on them. Records never hold key material (see `audit`), so neither does the export.

use prost::Message;
use serde_json::{Map, Value};

#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// `SeverityNumber`: 9 INFO, 10 INFO2, 13 WARN, 17 ERROR.
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    #[prost(string, tag = "3")]
    pub severity_text: String,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    #[prost(string, tag = "12")]
    pub event_name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
    pub value: Option<any_value::Value>,
}

pub mod any_value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
    }
}

pub fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::String(value.to_owned())),
        }),
    }
}

/// A scalar JSON value as an OTLP value; nested ones stay in the body only.
fn scalar(value: &Value) -> Option<any_value::Value> {
    Some(match value {
        Value::String(text) => any_value::Value::String(text.clone()),
        Value::Bool(b) => any_value::Value::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::Int(i),
            None => any_value::Value::Double(n.as_f64()?),
        },
        Value::Null | Value::Array(_) | Value::Object(_) => return None,
    })
}

/// One audit record (with `ts` and `kind`, as `audit` renders it) as a log record.
pub fn record(line: &Map<String, Value>, severity: u8, now_nanos: u64) -> LogRecord {
    let kind = line.get("kind").and_then(Value::as_str).unwrap_or_default();
    let time = line
        .get("ts")
        .and_then(Value::as_str)
        .and_then(|ts| humantime::parse_rfc3339(ts).ok())
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_nanos, |d| d.as_nanos() as u64);
    let (number, text) = match severity {
        s if s <= crate::telemetry::priority::ERR => (17, "ERROR"),
        crate::telemetry::priority::WARNING => (13, "WARN"),
        crate::telemetry::priority::NOTICE => (10, "INFO2"),
        _ => (9, "INFO"),
    };
    let attributes = line
        .iter()
        .filter(|(key, _)| key.as_str() != "ts")
        .filter_map(|(key, value)| {
            Some(KeyValue {
                key: key.clone(),
                value: Some(AnyValue {
                    value: Some(scalar(value)?),
                }),
            })
        })
        .collect();
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: now_nanos,
        severity_number: number,
        severity_text: text.to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::String(
                Value::Object(line.clone()).to_string(),
            )),
        }),
        attributes,
        event_name: kind.to_owned(),
    }
}

/// The request body for a batch of records from one resource.
pub fn encode(resource: &[KeyValue], records: Vec<LogRecord>) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource.to_vec(),
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "proxyguard".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                log_records: records,
            }],
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_record_keeps_its_scalars_as_attributes_and_itself_as_body() {
        let line = crate::audit::fields(json!({
            "ts": "2026-12-01T08:00:00.000Z", "kind": "request", "route": "/v1/models",
            "status": 200, "key": "alice", "ok": true, "share": 0.5, "nested": { "a": 1 },
        }));
        let record = record(&line, crate::telemetry::priority::INFO, 7);
        assert_eq!(record.event_name, "request");
        assert_eq!(record.time_unix_nano, 1_796_112_000_000_000_000);
        assert_eq!(record.observed_time_unix_nano, 7);
        assert_eq!(record.severity_number, 9);
        let get = |key: &str| {
            record
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        assert_eq!(get("status"), Some(any_value::Value::Int(200)));
        assert_eq!(get("key"), Some(any_value::Value::String("alice".into())));
        assert_eq!(get("ok"), Some(any_value::Value::Bool(true)));
        assert_eq!(get("share"), Some(any_value::Value::Double(0.5)));
        assert_eq!(get("nested"), None);
        assert_eq!(get("ts"), None);
        let Some(any_value::Value::String(body)) = record.body.and_then(|b| b.value) else {
            panic!("a string body");
        };
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["nested"]["a"],
            1
        );
    }
}
