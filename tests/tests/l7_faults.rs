//! Upstream faults through the real proxy (`run --no-kernel`): an upstream that is down gives a
//! clean 502, one that never answers a 504 at the configured timeout, a reset before the response
//! head a 502, all in OpenAI's error shape; a reset mid-stream cuts the client's stream (no clean
//! chunked end) and the audit line says so. Afterwards the guard holds no more descriptors than
//! before and no socket to the upstream, and it still serves a good request.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use proxyguard_tests::{
    faulty_upstream::{self, FaultyUpstream, CHUNKS},
    l7::Guard,
    open_files::{fd_count, fd_targets, settle, steady_fd_count, tcp_to_port},
};
use serde_json::Value;

/// Parallel requests per fault, so a leak per connection shows as several descriptors.
const PARALLEL: usize = 6;

/// A bound on how long the guard may take to close what it opened; a hang guard, not a timing.
const SETTLE: Duration = Duration::from_secs(30);

struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn connect(listen: &str) -> TcpStream {
    let stream = TcpStream::connect(listen).expect("connect to the guard");
    // Against hangs only.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

fn send(stream: &mut TcpStream, key: &str, model: &str) {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
}

/// One request on its own connection (`connection: close`), read to the end.
fn call(listen: &str, key: &str, model: &str) -> Reply {
    let mut stream = connect(listen);
    send(&mut stream, key, model);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the reply");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Reply {
        status,
        head: head.to_owned(),
        body: body.as_bytes().to_vec(),
    }
}

fn assert_openai_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.head);
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        reply.head
    );
    let value = reply.json();
    let error = &value["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{value}"
    );
    assert_eq!(error["type"], "api_error", "{value}");
    assert_eq!(error["code"], code, "{value}");
}

/// Every fault in parallel: `PARALLEL` clients each get the same error.
fn parallel(listen: &str, key: &str, model: &str) -> Vec<Reply> {
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..PARALLEL)
            .map(|_| scope.spawn(|| call(listen, key, model)))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

/// A `reset-mid-stream` request: the head and both chunks arrive, then (once the upstream is let
/// go) the stream ends without the chunked terminator. Returns everything read.
fn cut_stream(listen: &str, key: &str, upstream: &FaultyUpstream) -> String {
    let mut stream = connect(listen);
    send(&mut stream, key, "reset-mid-stream");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains(CHUNKS[1]) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "the stream ended before its first chunks: {}",
                String::from_utf8_lossy(&raw)
            ),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    upstream.release(1);
    // EOF or a reset: both are a cut stream, as long as no terminating chunk came first.
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn upstream_down_is_a_clean_502_and_leaks_nothing() {
    let port = faulty_upstream::down_port();
    let mut guard = Guard::start(port, "sk-upstream", &["alice"], "");
    let pid = guard.daemon.pid();
    let baseline = steady_fd_count(pid);
    let before = fd_targets(pid);
    let listen = guard.base.trim_start_matches("http://").to_owned();

    for reply in parallel(&listen, guard.key("alice"), "any") {
        assert_openai_error(&reply, 502, "upstream_unreachable");
    }
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["status"] == 502)
        .expect("an audit line for the 502");
    assert_eq!(record["decision"], "error", "{record}");
    assert_eq!(record["reason"], "upstream_unreachable", "{record}");

    assert_eq!(
        settle(baseline, SETTLE, || fd_count(pid)),
        baseline,
        "descriptors leaked: before {before:?}, after {:?}",
        fd_targets(pid)
    );
    assert_eq!(tcp_to_port(pid, port), 0);
}

#[test]
fn slow_and_resetting_upstreams_fail_cleanly_and_leak_nothing() {
    let upstream = FaultyUpstream::start();
    let mut guard = Guard::start(
        upstream.port,
        "sk-upstream",
        &["alice"],
        "[proxy.timeouts]\nupstream_response_secs = 1\n",
    );
    let pid = guard.daemon.pid();
    let baseline = steady_fd_count(pid);
    let before = fd_targets(pid);
    let listen = guard.base.trim_start_matches("http://").to_owned();
    let key = guard.key("alice").to_owned();

    // Slow: no response head within the timeout.
    for reply in parallel(&listen, &key, "slow") {
        assert_openai_error(&reply, 504, "upstream_timeout");
    }
    for _ in 0..PARALLEL {
        let record = guard
            .daemon
            .wait_for(|e| e["kind"] == "request" && e["status"] == 504)
            .expect("an audit line per 504");
        assert_eq!(record["reason"], "upstream_timeout", "{record}");
    }

    // Reset before the head.
    for reply in parallel(&listen, &key, "reset-before-head") {
        assert_openai_error(&reply, 502, "upstream_unreachable");
    }

    // Reset mid-stream: the 200 is out already, so the client sees its stream cut.
    for _ in 0..3 {
        let raw = cut_stream(&listen, &key, &upstream);
        assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
        assert!(
            raw.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{raw}"
        );
        assert!(CHUNKS.iter().all(|chunk| raw.contains(chunk)), "{raw}");
        assert!(
            !raw.ends_with("0\r\n\r\n"),
            "the cut stream ended cleanly: {raw:?}"
        );
        let record = guard
            .daemon
            .wait_for(|e| e["kind"] == "request" && e["reason"] == "upstream_stream_broken")
            .expect("an audit line for the broken stream");
        assert_eq!(record["status"], 200, "{record}");
        assert_eq!(record["decision"], "error", "{record}");
        let sent: usize = CHUNKS.iter().map(|c| c.len()).sum();
        assert_eq!(record["bytes_out"], sent, "{record}");
    }

    // No leaked connections: the client sockets are closed by now; the guard's settle.
    assert_eq!(
        settle(0, SETTLE, || tcp_to_port(pid, upstream.port)),
        0,
        "sockets to the upstream left open"
    );
    assert_eq!(
        settle(baseline, SETTLE, || fd_count(pid)),
        baseline,
        "descriptors leaked: before {before:?}, after {:?}",
        fd_targets(pid)
    );

    // And the guard still serves.
    let reply = call(&listen, &key, "ok");
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.json()["object"], "chat.completion");
}
