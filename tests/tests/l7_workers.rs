//! The thread-per-core front (issue 16 point 2) through the real proxy (`run --no-kernel`):
//! - with `worker_threads = 2` the two workers' `SO_REUSEPORT` sockets share the one port, and
//!   connections land on both (`proxyguard_worker_connections_total` per worker);
//! - `max_connections` is one cap across the workers: with the cap held, a worker serves
//!   requests on the connections it has and accepts no new one; each connection closed lets
//!   exactly one waiting connection in, and every waiting one is served in the end.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use proxyguard_tests::{faulty_upstream::FaultyUpstream, l7::Guard};

/// A hang guard for reads, not a timing.
const PATIENCE: Duration = Duration::from_secs(60);

fn connect(guard: &Guard) -> TcpStream {
    let stream =
        TcpStream::connect(guard.base.trim_start_matches("http://")).expect("connect to the guard");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

fn chat(key: &str) -> String {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One keep-alive response off `stream`: its status (the body is read and dropped).
fn read_response(stream: &mut TcpStream) -> u16 {
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
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().expect("a length"))
        })
        .expect("a content-length response");
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("the response body");
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

fn request(stream: &mut TcpStream, key: &str) -> u16 {
    stream.write_all(chat(key).as_bytes()).expect("send");
    read_response(stream)
}

/// Connections accepted per worker, in worker order.
fn per_worker(guard: &Guard, workers: usize) -> Vec<u64> {
    let text = guard.metrics();
    (0..workers)
        .map(|worker| {
            let prefix = format!("proxyguard_worker_connections_total{{worker=\"{worker}\"}} ");
            text.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .map_or(0, |v| v.parse().expect("a counter value"))
        })
        .collect()
}

fn start(upstream: &FaultyUpstream, max_connections: usize) -> Guard {
    Guard::start(
        upstream.port,
        "sk-upstream",
        &["alice"],
        &format!(
            "worker_threads = 2\n[proxy.limits]\nmax_connections = {max_connections}\nmax_connections_per_source = 1000\nmax_pending_heads_per_source = 1000\nmax_concurrent_per_key = 1000\n"
        ),
    )
}

#[test]
fn connections_land_on_both_workers_of_one_port() {
    let upstream = FaultyUpstream::start();
    let guard = start(&upstream, 1000);
    let key = guard.key("alice").to_owned();
    const CONNECTIONS: u64 = 32;
    // Fresh connections (fresh source ports): the kernel hashes each to one socket of the group;
    // all 32 on one worker would be a 1-in-2^31 chance.
    let mut open = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = connect(&guard);
        assert_eq!(request(&mut stream, &key), 200);
        open.push(stream);
    }
    let counts = per_worker(&guard, 2);
    assert_eq!(counts.iter().sum::<u64>(), CONNECTIONS, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
}

#[test]
fn the_connection_cap_holds_across_workers() {
    let upstream = FaultyUpstream::start();
    const CAP: usize = 16;
    const WAITING: usize = 8;
    let guard = start(&upstream, CAP);
    let key = guard.key("alice").to_owned();
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|_| {
            let mut stream = connect(&guard);
            assert_eq!(request(&mut stream, &key), 200);
            stream
        })
        .collect();
    let counts = per_worker(&guard, 2);
    assert_eq!(counts.iter().sum::<u64>(), CAP as u64, "{counts:?}");
    // Both workers hold part of the cap (all 16 on one: a 1-in-2^15 chance), so a per-worker
    // cap would leave room on each.
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");

    // These complete their handshake in the kernel and wait in the listeners' accept queues.
    let mut waiting: Vec<TcpStream> = (0..WAITING)
        .map(|_| {
            let mut stream = connect(&guard);
            stream.write_all(chat(&key).as_bytes()).expect("send");
            stream
        })
        .collect();
    // A request on every held connection, after the waiting ones arrived: each worker has been
    // through its loop with its listener readable, and a worker with a free slot counts an
    // accept before serving anything it polled later. Still exactly the cap.
    for stream in &mut held {
        assert_eq!(request(stream, &key), 200);
    }
    assert_eq!(per_worker(&guard, 2).iter().sum::<u64>(), CAP as u64);

    // One held connection closed: one waiting connection gets in.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    while per_worker(&guard, 2).iter().sum::<u64>() < CAP as u64 + 1 {
        assert!(
            Instant::now() < deadline,
            "no waiting connection got the freed slot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for stream in &mut held {
        assert_eq!(request(stream, &key), 200);
    }
    assert_eq!(per_worker(&guard, 2).iter().sum::<u64>(), CAP as u64 + 1);

    // The rest closed: every waiting connection is served.
    drop(held);
    for stream in &mut waiting {
        assert_eq!(read_response(stream), 200);
    }
    assert_eq!(
        per_worker(&guard, 2).iter().sum::<u64>(),
        (CAP + WAITING) as u64
    );
}
