//! An OTLP/HTTP logs receiver of the tests' own, decoding what it is sent with
//! opentelemetry-proto's generated types (so the guard's hand-written messages are checked against
//! the spec's), and one that accepts connections and never answers.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value as Any, KeyValue},
    logs::v1::LogRecord,
};
use prost::Message;

/// What the receiver accepted: each request's path, content type and decoded body.
pub type Received = Arc<Mutex<Vec<(String, String, ExportLogsServiceRequest)>>>;

/// Every export the receiver was sent, accepted or not: the status it answered, and the body.
pub type Posted = Arc<Mutex<Vec<(u16, ExportLogsServiceRequest)>>>;

/// An OTLP/HTTP logs receiver that answers 200 to every export; returns its port.
pub fn receiver(received: Received) -> u16 {
    receiver_answering(received, Posted::default(), &[])
}

/// A receiver that answers its first exports with `statuses` (a 503 with `Retry-After: 0`, any
/// other status bare) and 200 from then on, keeping in `received` what it accepted and in `posted`
/// everything it was sent; returns its port.
pub fn receiver_answering(received: Received, posted: Posted, statuses: &[u16]) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let statuses = Arc::new(Mutex::new(statuses.iter().copied().collect()));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (received, posted, statuses) = (received.clone(), posted.clone(), statuses.clone());
            std::thread::spawn(move || serve(stream, received, posted, statuses));
        }
    });
    port
}

fn serve(
    stream: TcpStream,
    received: Received,
    posted: Posted,
    statuses: Arc<Mutex<std::collections::VecDeque<u16>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = lower.strip_prefix("content-type:") {
                content_type = v.trim().to_owned();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = ExportLogsServiceRequest::decode(&body[..]).expect("an OTLP logs request");
        let status = statuses.lock().unwrap().pop_front().unwrap_or(200);
        posted.lock().unwrap().push((status, decoded.clone()));
        if status == 200 {
            received.lock().unwrap().push((path, content_type, decoded));
        }
        let retry_after = if status == 503 {
            "retry-after: 0\r\n"
        } else {
            ""
        };
        let answer = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/x-protobuf\r\n{retry_after}content-length: 0\r\n\r\n"
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A receiver that accepts connections and never reads or answers; returns its port.
pub fn stalled_receiver() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// Every log record received so far.
pub fn records(received: &Received) -> Vec<LogRecord> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, _, r)| &r.resource_logs)
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
        .cloned()
        .collect()
}

/// The records received once `enough` holds of them, or when the patience bound runs out (the
/// caller's assertions then say what is missing). Polls the receiver's own record; nothing is
/// timed.
pub fn records_once(received: &Received, enough: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
    let deadline = Instant::now() + Duration::from_secs(if crate::in_vm() { 120 } else { 30 });
    loop {
        let got = records(received);
        if enough(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub fn text(value: Option<&Any>) -> Option<&str> {
    match value {
        Some(Any::StringValue(text)) => Some(text),
        _ => None,
    }
}
