//! The cap on upstream connections holds across reloads. With `max_upstream_connections = 2`,
//! two long streams hold both slots; a reload follows; two more requests then wait for a slot
//! (and time out with 504) instead of reaching the upstream on a fresh set of slots, so the
//! upstream never sees more than two at once. Once the streams end, the slots serve again, and
//! a reload that raises the cap lets one more stream through.
//! Plain Rust peers (no Python), so this also runs in the VM.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use proxyguard_tests::{
    faulty_upstream::{FaultyUpstream, CHUNKS},
    guarded::eventually,
    l7::Guard,
};

fn limits(cap: u32) -> String {
    format!(
        "\n[proxy.limits]\nmax_upstream_connections = {cap}\n\n[proxy.timeouts]\nupstream_response_secs = 2\n"
    )
}

fn send(listen: &str, key: &str, model: &str) -> TcpStream {
    let mut stream = TcpStream::connect(listen).expect("connect to the guard");
    // Against hangs only.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    stream
}

/// A held stream: its head and both chunks have arrived; it stays open until released.
fn open_stream(listen: &str, key: &str) -> TcpStream {
    let mut stream = send(listen, key, "reset-mid-stream");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&raw).contains(CHUNKS[1]) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "the stream ended before its chunks: {}",
                String::from_utf8_lossy(&raw)
            ),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    stream
}

/// The status of a request read to its end.
fn status(listen: &str, key: &str, model: &str) -> u16 {
    let mut stream = send(listen, key, model);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"))
}

#[test]
fn a_reload_during_long_streams_keeps_the_upstream_cap() {
    let upstream = FaultyUpstream::start();
    let mut guard = Guard::start(upstream.port, "sk-upstream", &["a"], &limits(2));
    let listen = guard.base.trim_start_matches("http://").to_owned();
    let key = guard.key("a").to_owned();
    let config = |cap| Guard::config(upstream.port, &guard.key_file, &guard.keys, &limits(cap));
    let (same, raised) = (config(2), config(3));

    let held = [open_stream(&listen, &key), open_stream(&listen, &key)];
    assert_eq!(upstream.open_streams(), 2);
    let reloaded = guard.daemon.reload_with(&same);
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");

    // Both slots are still taken: the next two wait for one and time out, never reaching the
    // upstream.
    let waiting: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| status(&listen, &key, "reset-mid-stream")))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(waiting, [504, 504]);
    assert_eq!(upstream.most_open_streams(), 2);

    // The streams end and give their slots back to the same set.
    upstream.release(2);
    drop(held);
    assert!(
        eventually(Duration::from_secs(30), || upstream.open_streams() == 0),
        "the held streams did not end"
    );
    assert_eq!(status(&listen, &key, "ok"), 200);

    // A raised cap applies to the slots in use: with two streams open, a third gets through.
    let held = [open_stream(&listen, &key), open_stream(&listen, &key)];
    let reloaded = guard.daemon.reload_with(&raised);
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let third = open_stream(&listen, &key);
    assert_eq!(upstream.most_open_streams(), 3);
    assert_eq!(status(&listen, &key, "reset-mid-stream"), 504);
    assert_eq!(upstream.most_open_streams(), 3);
    upstream.release(3);
    drop((held, third));
}
