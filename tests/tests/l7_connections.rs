//! Fair use of connections through the real proxy (`run --no-kernel`, issue 12 point 5 and issue
//! 21 point 5):
//! - one address holding many idle half-sent heads does not keep another address from being
//!   served; the heads over the per-source cap are refused and counted, and a source at its cap of
//!   open connections gets 503 `source_connections` for one more;
//! - a client that stops reading a long stream is cut: its key's only concurrency permit and the
//!   only upstream slot are free again, and the audit record and a metric say `client_stalled`;
//!   a client that reads the same kind of stream slowly but steadily gets all of it;
//! - request heads hyper refuses itself (a raw space in the path, a head over the buffer) leave an
//!   audit record with the client's address, the status and the reason, and none of their bytes.
//!
//! Client source addresses other than 127.0.0.1 come from the rest of 127/8, which loopback
//! answers for on Linux.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use proxyguard_tests::{
    faulty_upstream::{FaultyUpstream, LONG_EVENT},
    l7::{metric, Guard},
    wire,
};
use serde_json::Value;
use socket2::{Domain, Socket, Type};

/// A hang guard for reads, not a timing.
const PATIENCE: Duration = Duration::from_secs(60);

fn listen_addr(guard: &Guard) -> SocketAddr {
    guard
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("listen address")
}

/// A connection to the guard from `source` (any port), with a small receive buffer if asked.
fn connect_from(guard: &Guard, source: Ipv4Addr, receive_buffer: Option<usize>) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    if let Some(bytes) = receive_buffer {
        // Before connect, so the window is small from the start and the guard's writes back up.
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    socket
        .bind(&SocketAddr::new(IpAddr::V4(source), 0).into())
        .unwrap_or_else(|err| panic!("bind a client socket to {source}: {err}"));
    socket
        .connect(&listen_addr(guard).into())
        .expect("connect to the guard");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

fn chat(key: &str, model: &str, close: bool) -> String {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\n{connection}content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response head off `stream` (byte by byte, so nothing after it is consumed).
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "the response head ended early ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// One response with a Content-Length body: its status and body.
fn read_response(stream: &mut TcpStream) -> (u16, Vec<u8>) {
    let head = read_head(stream);
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().expect("a length"))
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the response body");
    (status_of(&head), body)
}

/// A complete request on a fresh connection from `source`, answered and closed.
fn call_from(guard: &Guard, source: Ipv4Addr, key: &str, model: &str) -> u16 {
    let mut stream = connect_from(guard, source, None);
    stream
        .write_all(chat(key, model, true).as_bytes())
        .expect("send the request");
    read_response(&mut stream).0
}

/// The admin listener's metrics text.
#[test]
fn half_sent_heads_from_one_address_do_not_delay_another() {
    let upstream = FaultyUpstream::start();
    // A long header deadline, so the idle connections below are still open when counted.
    let guard = Guard::start(
        upstream.port,
        "sk-upstream",
        &["alice"],
        "[proxy.limits]\nmax_connections_per_source = 8\nmax_pending_heads_per_source = 4\n[proxy.timeouts]\nheader_read_secs = 120\n",
    );
    let key = guard.key("alice").to_owned();
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    const HEADS: u64 = 40;
    let mut held = Vec::new();
    for _ in 0..HEADS {
        let mut stream = connect_from(&guard, attacker, None);
        // A request head that never ends. Writes to a refused connection may fail; that is fine.
        let _ = stream.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n");
        held.push(stream);
    }
    // The other address is served while the heads are held.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(call_from(&guard, other, &key, "m"), 200);
    // Each worker (`worker_threads`, one `SO_REUSEPORT` socket each) accepts in arrival order,
    // but the workers run side by side: the count is awaited, and must land exactly on the cap.
    let deadline = Instant::now() + PATIENCE;
    let text = loop {
        let text = guard.metrics();
        let refused = metric(
            &text,
            r#"proxyguard_connections_refused_total{reason="source_pending_heads"}"#,
        );
        if refused >= HEADS - 4 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_connections_refused_total{reason="source_pending_heads"}"#
        ),
        HEADS - 4,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_connections_refused_total{reason="source_connections"}"#
        ),
        0,
        "{text}"
    );

    // A third address fills its cap of open connections with idle keep-alive ones (their heads
    // are complete, so only the open cap applies), and one more is refused with a 503 it can
    // read: it sends nothing, so the guard's close is a clean one.
    let third = Ipv4Addr::new(127, 0, 0, 3);
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut stream = connect_from(&guard, third, None);
        stream.write_all(chat(&key, "m", false).as_bytes()).unwrap();
        assert_eq!(read_response(&mut stream).0, 200);
        idle.push(stream);
    }
    let mut refused = connect_from(&guard, third, None);
    let mut answer = Vec::new();
    refused.read_to_end(&mut answer).expect("read the refusal");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "source_connections", "{body}");
    assert_eq!(body["error"]["type"], "api_error", "{body}");
    let text = guard.metrics();
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_connections_refused_total{reason="source_connections"}"#
        ),
        1,
        "{text}"
    );

    // Closing one idle connection gives the slot back (once the guard has seen the close).
    drop(idle.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = connect_from(&guard, third, None);
        stream.write_all(chat(&key, "m", true).as_bytes()).ok();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if answer.starts_with(b"HTTP/1.1 200 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's slot never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
}

#[test]
fn a_stalled_reader_is_cut_and_a_slow_reader_is_not() {
    let upstream = FaultyUpstream::start();
    // One permit per key and one upstream slot: the follow-up request is served only if the
    // stalled stream gave both back.
    let mut guard = Guard::start(
        upstream.port,
        "sk-upstream",
        &["alice"],
        "[proxy.limits]\nmax_concurrent_per_key = 1\nmax_upstream_connections = 1\n[proxy.timeouts]\nwrite_stall_secs = 2\n",
    );
    let key = guard.key("alice").to_owned();
    let me = Ipv4Addr::LOCALHOST;

    // Far more than every buffer on the way holds; the client reads the head and stops.
    let mut stalled = connect_from(&guard, me, Some(4096));
    stalled
        .write_all(chat(&key, "long-stream-100000", true).as_bytes())
        .unwrap();
    assert_eq!(status_of(&read_head(&mut stalled)), 200);
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["reason"] == "client_stalled")
        .expect("an audit record for the stalled stream");
    assert_eq!(record["key"], "alice", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["decision"], "error", "{record}");
    assert_eq!(call_from(&guard, me, &key, "m"), 200);
    let text = guard.metrics();
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_connections_closed_total{reason="client_stalled"}"#
        ),
        1,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_denials_total{reason="client_stalled"}"#
        ),
        1,
        "{text}"
    );
    drop(stalled);

    // 8 MiB through a small window, a little at a time: the guard's writes wait on this reader
    // over and over, but never for long, so the stream arrives whole.
    const EVENTS: usize = 512;
    let mut slow = connect_from(&guard, me, Some(4096));
    slow.write_all(chat(&key, &format!("long-stream-{EVENTS}"), true).as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => panic!("the slow reader's stream broke: {err}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        raw.ends_with(b"0\r\n\r\n"),
        "the stream has its chunked end"
    );
    // Counted in the body with the chunked framing removed: the guard passes the upstream's
    // bytes on as they arrive, so a chunk's size line can fall inside an event's `data: `.
    let (responses, left) = wire::split_responses(&raw);
    assert!(left.is_none() && responses.len() == 1, "{left:?}");
    let body = &responses[0].body;
    let events = body.windows(6).filter(|w| w == b"data: ").count();
    assert_eq!(events, EVENTS, "events received");
    assert_eq!(body.len(), EVENTS * LONG_EVENT, "the body arrived whole");
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["bytes_out"].as_u64() > Some(LONG_EVENT as u64))
        .expect("the slow stream's audit record");
    assert_eq!(record["reason"], "forwarded", "{record}");
    assert_eq!(
        record["bytes_out"].as_u64(),
        Some((EVENTS * LONG_EVENT) as u64),
        "{record}"
    );
    let text = guard.metrics();
    assert_eq!(
        metric(
            &text,
            r#"proxyguard_connections_closed_total{reason="client_stalled"}"#
        ),
        1,
        "{text}"
    );
}

#[test]
fn heads_hyper_refuses_leave_an_audit_record() {
    let upstream = FaultyUpstream::start();
    let mut guard = Guard::start(upstream.port, "sk-upstream", &["alice"], "");
    let source = Ipv4Addr::new(127, 0, 0, 4);

    // A raw space in the path: hyper answers 400 itself and the pipeline never runs.
    let mut stream = connect_from(&guard, source, None);
    stream
        .write_all(b"GET /v1/chat completions-probe HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["reason"] == "malformed_request")
        .expect("an audit record for the malformed head");
    assert_eq!(record["client"], "127.0.0.4", "{record}");
    assert_eq!(record["status"], 400, "{record}");
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["method"], "-", "{record}");
    assert_eq!(record["route"], "-", "{record}");
    assert!(
        !record.to_string().contains("probe"),
        "no byte of the request is logged: {record}"
    );

    // A head over hyper's buffer (twice max_header_bytes): 431. The client may still be writing
    // when the guard closes, so only the guard's side is asserted.
    let mut stream = connect_from(&guard, source, None);
    let mut head = b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nx-pad: ".to_vec();
    head.resize(head.len() + 200 * 1024, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let _ = stream.write_all(&head);
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["reason"] == "head_too_large")
        .expect("an audit record for the over-long head");
    assert_eq!(record["client"], "127.0.0.4", "{record}");
    assert_eq!(record["status"], 431, "{record}");
    drop(stream);

    let text = guard.metrics();
    for (reason, count) in [("malformed_request", 1), ("head_too_large", 1)] {
        assert_eq!(
            metric(
                &text,
                &format!(r#"proxyguard_connections_closed_total{{reason="{reason}"}}"#)
            ),
            count,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                &format!(r#"proxyguard_denials_total{{reason="{reason}"}}"#)
            ),
            count,
            "{text}"
        );
    }
}
