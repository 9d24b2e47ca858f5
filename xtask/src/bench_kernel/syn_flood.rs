//! SYN-flood cost: a raw sender (see `syn_sender`) floods the protected port from one source at
//! a fixed rate, and the machine's softirq share is read from /proc/stat over the flood window.
//! Sender and receiver share this host's CPUs, so the share is the whole machine's; what changes
//! between phases is only the receive path (dropped in XDP, dropped by iptables, or answered by
//! the TCP stack with SYN-ACKs that the client side answers with RSTs).
//!
//! /proc/stat here comes from tick sampling (no IRQ time accounting), so windows are long enough
//! for a few thousand ticks, and the cost is also given per SYN actually sent. The machine is
//! shared: the median of 2-second slices is the figure compared, and the softirq share just
//! before each flood is reported, so contamination by other tenants shows.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

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

/// The flood window is cut into slices of about this long; the median slice is robust against
/// a burst of someone else's work on a shared machine, which the whole-window share is not.
const SLICE: Duration = Duration::from_secs(2);
/// The machine's softirq share is also read this long before each flood, with no flood: what
/// the other tenants of the machine add.
const BACKGROUND: Duration = Duration::from_secs(2);

pub struct Sample {
    pub seconds: f64,
    pub packets: u64,
    pub softirq_pct: f64,
    pub busy_pct: f64,
    pub softirq_ticks: f64,
    /// Softirq share in the window just before the flood.
    pub background_softirq_pct: f64,
    /// Softirq ns per SYN in each slice of the window.
    pub slice_ns_per_syn: Vec<f64>,
    /// CPU ns per SYN of the sender thread: sending plus the receive work run inline in its
    /// context. Precise and untouched by other tenants, but it includes the send path.
    pub sender_cpu_ns_per_syn: f64,
}

impl Sample {
    pub fn packets_per_sec(&self) -> f64 {
        self.packets as f64 / self.seconds
    }

    /// CPU time in softirq per SYN sent over the whole window, in ns.
    pub fn softirq_ns_per_packet(&self) -> f64 {
        self.softirq_ticks * NS_PER_TICK / self.packets.max(1) as f64
    }

    /// The median slice's softirq ns per SYN.
    pub fn median_ns_per_syn(&self) -> f64 {
        let mut sorted = self.slice_ns_per_syn.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
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
            "softirq_ns_per_syn_median_slice": self.median_ns_per_syn(),
            "softirq_ns_per_syn_slices": self.slice_ns_per_syn,
            "background_softirq_pct": self.background_softirq_pct,
            "sender_thread_cpu_ns_per_syn": self.sender_cpu_ns_per_syn,
        })
    }
}

/// Floods `target:port` for `duration`; the measured window leaves out half a second at each end.
pub fn phase(target: Ipv4Addr, port: u16, duration: Duration) -> Result<Sample> {
    let before = cpu_ticks()?;
    signals::sleep(BACKGROUND)?;
    let background = share(&before, &cpu_ticks()?, SOFTIRQ);

    let count = SYN_RATE * duration.as_secs();
    let flood = SynFlood::start(SOURCE, target, port, SYN_RATE, count, duration)?;
    signals::sleep(Duration::from_millis(500))?;
    let window = duration.saturating_sub(Duration::from_secs(1));
    let slices = ((window.as_secs_f64() / SLICE.as_secs_f64()).floor() as u32).max(1);
    let sender0 = flood.cpu_ns()?;
    let mut marks = vec![(cpu_ticks()?, flood.sent(), Instant::now())];
    for _ in 0..slices {
        signals::sleep(window / slices)?;
        marks.push((cpu_ticks()?, flood.sent(), Instant::now()));
    }
    let sender1 = flood.cpu_ns()?;
    flood.stop()?;

    let (first, last) = (&marks[0], &marks[marks.len() - 1]);
    let (cpu0, cpu1) = (&first.0, &last.0);
    let total: u64 = cpu1.iter().zip(cpu0).map(|(a, b)| a - b).sum();
    let delta = |i: usize| (cpu1[i] - cpu0[i]) as f64;
    let idle = delta(IDLE) + delta(IOWAIT);
    let slice_ns_per_syn = marks
        .windows(2)
        .map(|w| {
            (w[1].0[SOFTIRQ] - w[0].0[SOFTIRQ]) as f64 * NS_PER_TICK
                / (w[1].1 - w[0].1).max(1) as f64
        })
        .collect();
    let sample = Sample {
        seconds: (last.2 - first.2).as_secs_f64(),
        packets: last.1 - first.1,
        softirq_pct: 100.0 * delta(SOFTIRQ) / total.max(1) as f64,
        busy_pct: 100.0 * (total as f64 - idle) / total.max(1) as f64,
        softirq_ticks: delta(SOFTIRQ),
        background_softirq_pct: background,
        slice_ns_per_syn,
        sender_cpu_ns_per_syn: (sender1 - sender0) as f64 / (last.1 - first.1).max(1) as f64,
    };
    if sample.packets == 0 {
        bail!("the SYN sender sent nothing");
    }
    Ok(sample)
}

/// Percentage of all CPU time spent in field `index` between two readings.
fn share(before: &[u64; 8], after: &[u64; 8], index: usize) -> f64 {
    let total: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
    100.0 * (after[index] - before[index]) as f64 / total.max(1) as f64
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
