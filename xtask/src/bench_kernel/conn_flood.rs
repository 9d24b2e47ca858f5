//! Connection flood: an abusive source completes real handshakes and HTTP requests as fast as
//! `FLOOD_THREADS` threads can, while a legitimate source makes paced requests. What counts is
//! what the legitimate client sees: success rate and latency.
//!
//! Both clients run in the client namespace, each thread bound to its own source address. The
//! flood is bounded in time (the phase) and in count (`MAX_FLOOD_CONNECTIONS`).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use socket2::{Domain, SockAddr, Socket, Type};

use super::{netns, signals};

const FLOOD_THREADS: usize = 64;
const MAX_FLOOD_CONNECTIONS: u64 = 2_000_000;
/// Requests per second from the legitimate client (well under the per-source limit).
pub const LEGIT_RATE: u32 = 10;
/// A legitimate request not answered within this long failed. Long enough to survive one SYN
/// retransmit (at 1 s), so a failure means the service was really unavailable.
const LEGIT_TIMEOUT: Duration = Duration::from_secs(3);
/// The abusive client does not wait for SYN retransmits: an unanswered connect is abandoned
/// quickly and tried again (on a veth an answered one takes microseconds).
const FLOOD_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);

const REQUEST: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";

pub struct Outcome {
    pub attempts: u64,
    pub ok: u64,
    /// Latencies of every attempt, failures counted as the full timeout.
    pub latencies: Vec<Duration>,
    pub flood_completed: u64,
    pub flood_failed: u64,
    /// How long the phase ran.
    pub seconds: f64,
}

impl Outcome {
    pub fn success_pct(&self) -> f64 {
        100.0 * self.ok as f64 / self.attempts.max(1) as f64
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
    }

    pub fn flood_per_sec(&self) -> f64 {
        self.flood_completed as f64 / self.seconds
    }

    pub fn json(&self) -> Value {
        json!({
            "legit_attempts": self.attempts,
            "legit_ok": self.ok,
            "legit_success_pct": self.success_pct(),
            "legit_p50_ms": self.percentile_ms(50.0),
            "legit_p99_ms": self.percentile_ms(99.0),
            "flood_completed": self.flood_completed,
            "flood_failed": self.flood_failed,
            "flood_completed_per_sec": self.flood_per_sec(),
            "seconds": self.seconds,
        })
    }
}

/// One phase: `flood` abusive threads (or none) and the paced legitimate client for `duration`.
pub fn phase(port: u16, duration: Duration, flood: bool) -> Result<Outcome> {
    let target = SocketAddr::new(netns::GUARD_ADDR.parse()?, port);
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    if flood {
        for _ in 0..FLOOD_THREADS {
            let (stop, completed, failed) = (stop.clone(), completed.clone(), failed.clone());
            flooders.push(std::thread::spawn(move || -> Result<()> {
                netns::enter(netns::CLIENT_NS)?;
                let source: IpAddr = netns::FLOOD_SRC.parse()?;
                while !stop.load(Ordering::Relaxed)
                    && completed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
                        < MAX_FLOOD_CONNECTIONS
                {
                    match request(source, target, FLOOD_CONNECT_TIMEOUT, LEGIT_TIMEOUT) {
                        Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                Ok(())
            }));
        }
        // Let the flood fill the upstream's queue before the legitimate client starts.
        std::thread::sleep(Duration::from_secs(1));
    }

    let legit = legit_client(target, duration);
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().expect("flood thread panicked")?;
    }
    let (attempts, ok, latencies) = legit?;
    Ok(Outcome {
        attempts,
        ok,
        latencies,
        flood_completed: completed.load(Ordering::Relaxed),
        flood_failed: failed.load(Ordering::Relaxed),
        seconds: duration.as_secs_f64(),
    })
}

/// The paced legitimate client alone for `duration` (another module brings the flood).
pub fn legit_phase(port: u16, duration: Duration) -> Result<Outcome> {
    let target = SocketAddr::new(netns::GUARD_ADDR.parse()?, port);
    let (attempts, ok, latencies) = legit_client(target, duration)?;
    Ok(Outcome {
        attempts,
        ok,
        latencies,
        flood_completed: 0,
        flood_failed: 0,
        seconds: duration.as_secs_f64(),
    })
}

/// Open-loop paced requests: one every 1/LEGIT_RATE s, each on its own thread so a slow answer
/// does not delay the next request.
fn legit_client(target: SocketAddr, duration: Duration) -> Result<(u64, u64, Vec<Duration>)> {
    let count = (duration.as_secs_f64() * f64::from(LEGIT_RATE)) as u32;
    let interval = Duration::from_secs(1) / LEGIT_RATE;
    let start = Instant::now();
    let mut threads = Vec::new();
    for i in 0..count {
        if signals::interrupted() {
            break;
        }
        let due = start + interval * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        threads.push(std::thread::spawn(move || -> Result<(bool, Duration)> {
            netns::enter(netns::CLIENT_NS)?;
            let source: IpAddr = netns::LEGIT_SRC.parse()?;
            let began = Instant::now();
            let ok = request(source, target, LEGIT_TIMEOUT, LEGIT_TIMEOUT).is_ok()
                && began.elapsed() <= LEGIT_TIMEOUT;
            Ok((ok, if ok { began.elapsed() } else { LEGIT_TIMEOUT }))
        }));
    }
    let (mut attempts, mut ok, mut latencies) = (0, 0, Vec::new());
    for thread in threads {
        let (success, latency) = thread.join().expect("client thread panicked")?;
        attempts += 1;
        ok += u64::from(success);
        latencies.push(latency);
    }
    signals::check()?;
    Ok((attempts, ok, latencies))
}

/// One HTTP request on a fresh connection from `source`; Ok only for a complete 200 answer.
fn request(
    source: IpAddr,
    target: SocketAddr,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
    socket.connect_timeout(&SockAddr::from(target), connect_timeout)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    stream.write_all(REQUEST)?;
    let mut answer = Vec::with_capacity(256);
    stream.read_to_end(&mut answer)?;
    answer
        .starts_with(b"HTTP/1.1 200")
        .then_some(())
        .context("no 200 answer")
}
