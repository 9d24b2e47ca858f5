//! An upstream that fails on purpose, in plain Rust (so it also runs in the VM). The request's
//! `model` picks the fault, so one guard in front of it can meet every failure in turn:
//!
//! - `slow`: reads the request and never answers (the guard must time out with 504);
//! - `reset-before-head`: reads the request, then resets the connection (502);
//! - `reset-mid-stream`: sends a 200 `text/event-stream` head and two chunks, waits until the
//!   test [`FaultyUpstream::release`]s it, then resets (the client's stream is cut);
//! - `long-stream-N`: a 200 `text/event-stream` of N events of [`LONG_EVENT`] bytes each, written
//!   as fast as the guard takes them (so a client that stops reading backs up into the guard);
//! - anything else: a normal chat completion, kept alive.
//!
//! A reset is a close with `SO_LINGER` 0, so the peer gets an RST, not a FIN.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

/// The two chunks a `reset-mid-stream` response carries before the reset.
pub const CHUNKS: [&str; 2] = ["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n"];

/// The size of one `long-stream-N` event on the wire (`data: xxx…\n\n`).
pub const LONG_EVENT: usize = 16 * 1024;

/// How long a held connection waits for a release before it resets anyway (a bound, so a failed
/// test never leaves threads behind for long).
const HOLD: Duration = Duration::from_secs(60);

pub struct FaultyUpstream {
    pub port: u16,
    /// Releases granted to `reset-mid-stream` connections and not yet used.
    releases: Arc<(Mutex<u32>, Condvar)>,
    /// `reset-mid-stream` responses open now, and the most ever open at once.
    streams: Arc<Mutex<(u32, u32)>>,
}

impl FaultyUpstream {
    pub fn start() -> FaultyUpstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the upstream");
        let port = listener.local_addr().expect("local addr").port();
        let releases = Arc::new((Mutex::new(0), Condvar::new()));
        let streams = Arc::new(Mutex::new((0, 0)));
        let (gate, open) = (releases.clone(), streams.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (gate, open) = (gate.clone(), open.clone());
                std::thread::spawn(move || serve(stream, &gate, &open));
            }
        });
        FaultyUpstream {
            port,
            releases,
            streams,
        }
    }

    /// `reset-mid-stream` responses open now (head sent, not yet reset).
    pub fn open_streams(&self) -> u32 {
        self.streams.lock().expect("streams lock").0
    }

    /// The most `reset-mid-stream` responses that were ever open at once.
    pub fn most_open_streams(&self) -> u32 {
        self.streams.lock().expect("streams lock").1
    }

    /// Lets `n` held `reset-mid-stream` connections reset.
    pub fn release(&self, n: u32) {
        let (count, signal) = &*self.releases;
        *count.lock().expect("release lock") += n;
        signal.notify_all();
    }
}

fn serve(stream: TcpStream, releases: &(Mutex<u32>, Condvar), streams: &Mutex<(u32, u32)>) {
    // One descriptor only (no try_clone): the reset must happen on the last close.
    let mut reader = BufReader::new(&stream);
    while let Some(model) = read_request(&mut reader) {
        match model.as_str() {
            "slow" => {
                // Hold the connection, answering nothing, until the guard gives up and closes it.
                let mut sink = [0u8; 1024];
                while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            "reset-before-head" => return reset(stream),
            "reset-mid-stream" => {
                {
                    let mut open = streams.lock().expect("streams lock");
                    open.0 += 1;
                    open.1 = open.1.max(open.0);
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                let mut out = head.to_owned();
                for chunk in CHUNKS {
                    out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
                }
                if (&stream).write_all(out.as_bytes()).is_ok() {
                    wait_for_release(releases);
                }
                streams.lock().expect("streams lock").0 -= 1;
                return reset(stream);
            }
            long if long.starts_with("long-stream-") => {
                let events = long["long-stream-".len()..].parse().unwrap_or(0);
                if long_stream(&stream, events).is_err() {
                    return;
                }
            }
            _ => {
                let reply = r#"{"id":"c1","object":"chat.completion","choices":[]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                if (&stream).write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes `events` events of [`LONG_EVENT`] bytes as one chunked response.
fn long_stream(mut stream: &TcpStream, events: usize) -> std::io::Result<()> {
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes())?;
    let mut event = b"data: ".to_vec();
    event.resize(LONG_EVENT - 2, b'x');
    event.extend_from_slice(b"\n\n");
    let mut chunk = format!("{:x}\r\n", event.len()).into_bytes();
    chunk.extend_from_slice(&event);
    chunk.extend_from_slice(b"\r\n");
    for _ in 0..events {
        stream.write_all(&chunk)?;
    }
    stream.write_all(b"0\r\n\r\n")
}

/// Reads one request (head and `Content-Length` body); returns its `model`, or None at EOF.
fn read_request(reader: &mut BufReader<&TcpStream>) -> Option<String> {
    let mut length = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    Some(value["model"].as_str().unwrap_or_default().to_owned())
}

fn wait_for_release(releases: &(Mutex<u32>, Condvar)) {
    let (count, signal) = releases;
    let guard = count.lock().expect("release lock");
    let (mut guard, _) = signal
        .wait_timeout_while(guard, HOLD, |n| *n == 0)
        .expect("release lock");
    *guard = guard.saturating_sub(1);
}

/// Closes with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// A loopback port with nothing listening on it (an upstream that is down).
pub fn down_port() -> u16 {
    crate::net::free_port()
}
