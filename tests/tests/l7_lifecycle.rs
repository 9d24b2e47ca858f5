//! The proxy's life cycle: slow and idle connections closed, keys and the upstream key file
//! reloaded on SIGHUP (an invalid config refused), and in-flight streams drained on SIGTERM.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    time::Duration,
};

use nix::sys::signal::Signal;
use proxyguard_tests::l7::{
    client, client_with_env, free_port, http, new_key, Guard, LiteLlm, Provider,
};
use serde_json::json;

const MASTER: &str = "sk-litellm-master-life";

/// Connections waiting to be accepted on the listening sockets of `port`: the `rx_queue` of a
/// TCP socket in LISTEN (state 0A) in /proc/net/tcp{,6} is its accept backlog.
fn accept_queue(port: u16) -> u64 {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|row| {
                    let fields: Vec<&str> = row.split_whitespace().collect();
                    let (local, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
                    if !local.ends_with(&suffix) || *state != "0A" {
                        return None;
                    }
                    u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Reads one response with a `content-length` body off a keep-alive connection; its status.
fn read_response(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

/// Reads until the peer closes; true if it closed (rather than the read timing out).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sink = Vec::new();
    stream.read_to_end(&mut sink).is_ok()
}

#[test]
fn slow_and_idle_connections_are_closed() {
    // No upstream is needed: nothing here gets past the head.
    let guard = Guard::start(
        free_port(),
        MASTER,
        &["alice"],
        "[proxy.timeouts]\nheader_read_secs = 1\nbody_secs = 1\n",
    );
    let addr = guard.base.trim_start_matches("http://").to_owned();

    let mut slowloris = TcpStream::connect(&addr).unwrap();
    slowloris
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        .unwrap();
    assert!(
        closed_by_peer(&mut slowloris),
        "an unfinished head is cut off"
    );

    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 404");
    assert!(
        closed_by_peer(&mut idle),
        "an idle keep-alive connection is closed"
    );

    // A body that stops arriving is answered 408 once body_secs have passed.
    let mut slow_body = TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"model\":",
        guard.key("alice")
    );
    slow_body.write_all(head.as_bytes()).unwrap();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut status = [0u8; 12];
    slow_body.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 408");

    // Past every check, an upstream that is down is a 502 in OpenAI's error shape.
    let down = http(
        &guard.base,
        json!({"method": "GET", "path": "/v1/models", "headers": {"x-api-key": guard.key("alice")}}),
    );
    assert_eq!(down["status"], 502, "{down}");
    let body: serde_json::Value = serde_json::from_str(down["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable", "{body}");
}

#[test]
fn the_upstream_sees_our_forwarding_headers_and_its_own_key_only() {
    let provider = Provider::start();
    let guard = Guard::start(provider.port, MASTER, &["alice"], "");
    fs::write(&provider.gate, "").unwrap();
    let spec = json!({
        "path": "/v1/chat/completions",
        "headers": {
            "x-api-key": guard.key("alice"),
            "content-type": "application/json",
            "x-forwarded-for": "6.6.6.6",
            "x-forwarded-proto": "https",
            "forwarded": "for=6.6.6.6",
            "connection": "keep-alive, x-hop",
            "x-hop": "1",
            "x-kept": "1"
        },
        "body": r#"{"model":"slow","stream":true,"messages":[]}"#
    });
    let got = http(&guard.base, spec);
    assert_eq!(got["status"], 200, "{got}");
    let seen = provider.last_headers();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["authorization"], format!("Bearer {MASTER}"), "{seen}");
    assert_eq!(seen["x-kept"], "1", "{seen}");
    for gone in ["x-api-key", "api-key", "forwarded", "x-hop"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
}

/// LiteLLM answers a key that is not its master key with 401, or, having no database to look
/// other keys up in, with 400 "No connected db.".
fn upstream_auth_error(result: &serde_json::Value) -> bool {
    let status = result["status"].as_u64().unwrap_or(0);
    let body = result["body"].as_str().unwrap_or("").to_lowercase();
    (status == 400 || status == 401) && (body.contains("auth") || body.contains("no connected db"))
}

#[test]
fn keys_and_upstream_key_file_reload_on_sighup() {
    let litellm = LiteLlm::start(MASTER, None, &[]);
    let mut guard = Guard::start(litellm.port, MASTER, &["alice"], "");
    let alice = guard.key("alice").to_owned();
    assert_eq!(client("chat", &guard.base, &alice, None)["ok"], true);

    // Add bob, revoke alice.
    let (bob, bob_hash) = new_key();
    let keys = vec![("bob".to_owned(), bob.clone(), bob_hash)];
    let config = Guard::config(litellm.port, &guard.key_file, &keys, "");
    assert_eq!(guard.daemon.reload_with(&config)["kind"], "reloaded");
    assert_eq!(
        client("chat", &guard.base, &bob, None)["ok"],
        true,
        "a new key works at once"
    );
    assert_eq!(
        client("chat", &guard.base, &alice, None)["status"],
        401,
        "a removed key is refused"
    );

    // The upstream key file is re-read: a wrong upstream key makes LiteLLM refuse.
    fs::write(&guard.key_file, "sk-not-the-master\n").unwrap();
    assert_eq!(guard.daemon.reload_with(&config)["kind"], "reloaded");
    let wrong = client("chat", &guard.base, &bob, None);
    assert!(
        upstream_auth_error(&wrong),
        "LiteLLM refuses the wrong master key: {wrong}"
    );
    fs::write(&guard.key_file, format!("{MASTER}\n")).unwrap();

    // An invalid config (and a key file others can read) is refused; the old settings stay.
    let broken = config.replace("[proxy]", "[proxy]\nlisten_backlog = 5");
    let refused = guard.daemon.reload_with(&broken);
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    fs::set_permissions(&guard.key_file, fs::Permissions::from_mode(0o644)).unwrap();
    let refused = guard.daemon.reload_with(&config);
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("chmod 600"),
        "{refused}"
    );
    let stale = client("chat", &guard.base, &bob, None);
    assert!(
        upstream_auth_error(&stale),
        "still the settings of the last good reload: {stale}"
    );
}

#[test]
fn sigterm_drains_in_flight_streams() {
    // proxyguard straight in front of the slow provider: the stream stays open until the gate.
    let provider = Provider::start();
    let mut guard = Guard::start(provider.port, MASTER, &["alice"], "");
    let alice = guard.key("alice").to_owned();
    let base = guard.base.clone();
    let gate = provider.gate.to_str().unwrap().to_owned();
    let streaming = std::thread::spawn(move || {
        client_with_env(
            "stream",
            &base,
            &alice,
            Some(&gate),
            &[("PG_TEST_HOLD_GATE", "1")],
        )
    });

    // Wait until the stream is in flight, as the metrics see it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = http(&guard.admin, json!({"method": "GET", "path": "/metrics"}));
        if metrics["body"]
            .as_str()
            .unwrap()
            .contains("proxyguard_in_flight_requests 1")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never started: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    guard.daemon.signal(Signal::SIGTERM);
    // New connections are no longer accepted while the stream drains.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(guard.base.trim_start_matches("http://")).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener stayed open after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    fs::write(&provider.gate, "").unwrap();
    let stream = streaming.join().unwrap();
    assert_eq!(stream["text"], "one two three four five", "{stream}");
    let stopping = guard
        .daemon
        .wait_for(|e| e["kind"] == "stopping")
        .expect("the daemon stops after the drain");
    assert_eq!(stopping["kind"], "stopping");
}

#[test]
fn the_connection_cap_queues_the_next_connection() {
    let guard = Guard::start(
        free_port(),
        MASTER,
        &["alice"],
        // One worker: the kernel's accept queue of its one socket is what is watched. With more
        // workers an idle one may already have accepted the next connection, which then waits
        // unserved for the slot (l7_workers checks the cap across workers).
        "worker_threads = 1\n[proxy.limits]\nmax_connections = 1\n",
    );
    let health = http(&guard.admin, json!({"method": "GET", "path": "/healthz"}));
    assert_eq!(health["status"], 200, "{health}");
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let request = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    let mut first = TcpStream::connect(&addr).unwrap();
    first.write_all(request).unwrap();
    let mut head = [0u8; 12];
    assert_eq!(read_response(&mut first), 404);

    // The second connection waits in the accept queue while the first holds the only slot: the
    // kernel holds it there, unaccepted (so unanswered)...
    let mut second = TcpStream::connect(&addr).unwrap();
    second.write_all(request).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while accept_queue(port) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second connection never showed in the accept queue"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and the sentinel, a request on the first connection made after that, is answered while
    // the second is still queued: the daemon is serving, and not taking the second.
    first.write_all(request).unwrap();
    assert_eq!(read_response(&mut first), 404);
    assert_eq!(accept_queue(port), 1, "the second connection was accepted");
    // ...and is served once the first closes.
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    second.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 404");
}

#[test]
fn a_silent_upstream_gets_504_after_the_response_timeout() {
    let provider = Provider::start();
    let guard = Guard::start(
        provider.port,
        MASTER,
        &["alice"],
        "[proxy.timeouts]\nupstream_response_secs = 1\n",
    );
    let spec = json!({
        "path": "/v1/chat/completions",
        "headers": {"x-api-key": guard.key("alice"), "content-type": "application/json"},
        "body": r#"{"model":"stall","messages":[]}"#
    });
    let got = http(&guard.base, spec);
    // Release the provider's handler.
    fs::write(&provider.gate, "").unwrap();
    assert_eq!(got["status"], 504, "{got}");
    let body: serde_json::Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout", "{body}");
    assert_eq!(body["error"]["type"], "api_error", "{body}");
}

#[test]
fn concurrent_requests_per_key_are_capped() {
    let provider = Provider::start();
    let mut guard = Guard::start(
        provider.port,
        MASTER,
        &["alice", "bob"],
        "[proxy.limits]\nmax_concurrent_per_key = 1\n",
    );
    let alice = guard.key("alice").to_owned();
    let base = guard.base.clone();
    let gate = provider.gate.to_str().unwrap().to_owned();
    let held = std::thread::spawn(move || {
        client_with_env(
            "stream",
            &base,
            &alice,
            Some(&gate),
            &[("PG_TEST_HOLD_GATE", "1")],
        )
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !http(&guard.admin, json!({"method": "GET", "path": "/metrics"}))["body"]
        .as_str()
        .unwrap()
        .contains("proxyguard_in_flight_requests 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // alice's only slot is taken by the open stream; bob has his own.
    let models =
        |key: &str| json!({"method": "GET", "path": "/v1/models", "headers": {"x-api-key": key}});
    let second = http(&guard.base, models(guard.key("alice")));
    assert_eq!(second["status"], 429, "{second}");
    assert!(
        second["body"].as_str().unwrap().contains("concurrency_key"),
        "{second}"
    );
    let bob = http(&guard.base, models(guard.key("bob")));
    // The provider has no GET route: its 501 shows bob's request went through.
    assert_eq!(bob["status"], 501, "{bob}");

    fs::write(&provider.gate, "").unwrap();
    assert_eq!(held.join().unwrap()["text"], "one two three four five");
    // The slot comes back when the stream ends.
    let record = guard
        .daemon
        .wait_for(|e| e["kind"] == "request" && e["key"] == "alice" && e["status"] == 200)
        .expect("the stream's audit line");
    assert_eq!(record["route"], "/v1/chat/completions");
    let again = http(&guard.base, models(guard.key("alice")));
    assert_eq!(again["status"], 501, "{again}");
}
