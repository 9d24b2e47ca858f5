//! SYN-flood cost: a raw sender (see `syn_sender`) floods the protected port from one source at
//! a fixed rate, and the machine's softirq share is read from /proc/stat over the flood window.
//! Sender and receiver share this host's CPUs, so the share is the whole machine's; what changes
//! between phases is only the receive path (dropped in XDP, dropped by iptables, or answered by
//! the TCP stack with SYN-ACKs that the client side answers with RSTs).
//!
//! /proc/stat here comes from tick sampling (no IRQ time accounting), so windows are long enough
//! for a few thousand ticks, and the cost is also given per SYN actually sent.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{signals, syn_sender::SynFlood};

/// The offered rate, SYN/s: the same in every phase, and within what one sender thread reaches
/// on a busy 2-core machine even when every SYN is answered.
pub const SYN_RATE: u64 = 50_000;
/// The SYN flood comes from the client veth's primary address.
const SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// /proc/stat counts in USER_HZ ticks, which is 100 on Linux.
const NS_PER_TICK: f64 = 1e7;

pub struct Sample {
    pub seconds: f64,
    pub packets: u64,
    pub softirq_pct: f64,
    pub busy_pct: f64,
    pub softirq_ticks: f64,
}

impl Sample {
    pub fn packets_per_sec(&self) -> f64 {
        self.packets as f64 / self.seconds
    }

    /// CPU time in softirq per SYN sent, in ns.
    pub fn softirq_ns_per_packet(&self) -> f64 {
        self.softirq_ticks * NS_PER_TICK / self.packets.max(1) as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "syn_sent": self.packets,
            "syn_per_sec": self.packets_per_sec(),
            "softirq_pct": self.softirq_pct,
            "busy_pct": self.busy_pct,
            "softirq_ticks": self.softirq_ticks,
            "softirq_ns_per_syn": self.softirq_ns_per_packet(),
        })
    }
}

/// Floods `target:port` for `duration`; the measured window leaves out half a second at each end.
pub fn phase(target: Ipv4Addr, port: u16, duration: Duration) -> Result<Sample> {
    let count = SYN_RATE * duration.as_secs();
    let flood = SynFlood::start(SOURCE, target, port, SYN_RATE, count, duration)?;
    signals::sleep(Duration::from_millis(500))?;
    let (cpu0, sent0, t0) = (cpu_ticks()?, flood.sent(), std::time::Instant::now());
    signals::sleep(duration.saturating_sub(Duration::from_secs(1)))?;
    let (cpu1, sent1, t1) = (cpu_ticks()?, flood.sent(), std::time::Instant::now());
    flood.stop()?;
    let total: u64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum();
    let delta = |i: usize| (cpu1[i] - cpu0[i]) as f64;
    let idle = delta(IDLE) + delta(IOWAIT);
    let sample = Sample {
        seconds: (t1 - t0).as_secs_f64(),
        packets: sent1 - sent0,
        softirq_pct: 100.0 * delta(SOFTIRQ) / total.max(1) as f64,
        busy_pct: 100.0 * (total as f64 - idle) / total.max(1) as f64,
        softirq_ticks: delta(SOFTIRQ),
    };
    if sample.packets == 0 {
        bail!("the SYN sender sent nothing");
    }
    Ok(sample)
}

const IDLE: usize = 3;
const IOWAIT: usize = 4;
const SOFTIRQ: usize = 6;

/// The machine-wide `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal.
fn cpu_ticks() -> Result<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let mut ticks = [0u64; 8];
    for (slot, field) in ticks.iter_mut().zip(line.split_whitespace().skip(1)) {
        *slot = field.parse()?;
    }
    Ok(ticks)
}
