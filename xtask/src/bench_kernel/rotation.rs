//! Rotation flood: raw SYN frames rotating over 200,000 IPv6 sources in one /48 and the 65,536
//! IPv4 sources of one /16 (proxyguard-tests' `syn_frames`, the same sender the XDP tests use),
//! round after round, while the legitimate client of the connection flood makes its paced
//! requests. What counts is the legitimate client's success: the per-source limit alone would
//! let every rotated source through with a full bucket and evict the client's own.
//!
//! The flood is bounded by the phase and by `MAX_ROUNDS`; its sources are the benchmarking
//! ranges, inside the benchmark's namespaces, with no route back out of the guard namespace.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use proxyguard_tests::syn_frames::{self, FrameSocket};
use serde_json::{json, Value};

use super::{conn_flood, netns};

/// Distinct IPv6 sources (one /48) and IPv4 sources (one /16) per round.
pub const V6_SOURCES: u32 = 200_000;
pub const V4_SOURCES: u32 = 65_536;
const MAX_ROUNDS: u32 = 50;

pub struct Outcome {
    pub legit: conn_flood::Outcome,
    pub flood_sent: u64,
    pub rounds: u32,
}

impl Outcome {
    pub fn json(&self) -> Value {
        json!({
            "legit_attempts": self.legit.attempts,
            "legit_ok": self.legit.ok,
            "legit_success_pct": self.legit.success_pct(),
            "legit_p99_ms": self.legit.percentile_ms(99.0),
            "flood_syns_sent": self.flood_sent,
            "flood_rounds": self.rounds,
            "flood_syns_per_sec": self.flood_sent as f64 / self.legit.seconds,
            "v6_sources": V6_SOURCES,
            "v4_sources": V4_SOURCES,
        })
    }
}

pub fn phase(port: u16, duration: Duration) -> Result<Outcome> {
    let dst_mac = syn_frames::mac_of(netns::GUARD_NS, netns::GUARD_IF);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (flag, counter) = (stop.clone(), sent.clone());
    let flood = std::thread::spawn(move || -> Result<u32> {
        netns::enter(netns::CLIENT_NS)?;
        let socket = FrameSocket::open(netns::CLIENT_IF)
            .context("cannot open an AF_PACKET socket on the client veth")?;
        let sources: Vec<IpAddr> = syn_frames::v6_sources(V6_SOURCES)
            .chain(syn_frames::v4_sources(V4_SOURCES))
            .collect();
        let mut rounds = 0;
        while rounds < MAX_ROUNDS && !flag.load(Ordering::Relaxed) {
            // In slices, so a stop is seen within a few thousand frames.
            for chunk in sources.chunks(4096) {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let n = syn_frames::flood(
                    &socket,
                    dst_mac,
                    chunk.iter().copied(),
                    netns::GUARD_ADDR.parse()?,
                    netns::GUARD_V6.parse()?,
                    super::PORT,
                    64,
                );
                counter.fetch_add(n, Ordering::Relaxed);
            }
            rounds += 1;
        }
        Ok(rounds)
    });
    let started = Instant::now();
    let legit = conn_flood::legit_phase(port, duration);
    stop.store(true, Ordering::Relaxed);
    let rounds = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the rotating sender panicked"))??;
    let mut legit = legit?;
    legit.seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        legit,
        flood_sent: sent.load(Ordering::Relaxed),
        rounds,
    })
}
