//! SYN-flood cost: hping3 sends SYNs from the client namespace to the protected port, and the
//! machine's softirq share (from /proc/stat) is read over the flood window. Sender and receiver
//! share this host's CPUs, so the share is the whole machine's; what changes between phases is
//! the receive path (dropped in XDP, dropped by iptables, or answered by the TCP stack).
//!
//! hping3 ignores `-c` under `--flood`, so it sends at a fixed minimum interval (`-i u…`), which
//! honours `-c`; `timeout` bounds the time as well. The rate it reaches depends on the load, so it
//! is measured (the client veth's tx counter) and the cost is also given per packet.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::{json, Value};

use super::{netns, signals};

/// hping3's minimum gap between SYNs, in microseconds (a nominal 100k SYN/s).
const INTERVAL_US: u64 = 10;
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

    /// CPU time in softirq per packet offered, in ns.
    pub fn softirq_ns_per_packet(&self) -> f64 {
        self.softirq_ticks * NS_PER_TICK / self.packets.max(1) as f64
    }

    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "packets": self.packets,
            "packets_per_sec": self.packets_per_sec(),
            "softirq_pct": self.softirq_pct,
            "busy_pct": self.busy_pct,
            "softirq_ns_per_packet": self.softirq_ns_per_packet(),
        })
    }
}

/// Floods `target:port` for `duration`; the measured window leaves out half a second at each end.
pub fn phase(target: &str, port: u16, duration: Duration) -> Result<Sample> {
    let count = duration.as_micros() as u64 / INTERVAL_US;
    let mut hping = netns::command_in(netns::CLIENT_NS, "timeout")
        .args(["-s", "INT", &format!("{}", duration.as_secs() + 1), "hping3", "-q", "-S"])
        .args(["-p", &port.to_string(), "-i", &format!("u{INTERVAL_US}")])
        .args(["-c", &count.to_string(), target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start hping3")?;
    let measured = (|| -> Result<Sample> {
        signals::sleep(Duration::from_millis(500))?;
        let (cpu0, tx0, t0) = (cpu_ticks()?, netns::tx_packets(netns::CLIENT_NS, client_if(target))?, Instant::now());
        signals::sleep(duration.saturating_sub(Duration::from_secs(1)))?;
        let (cpu1, tx1, t1) = (cpu_ticks()?, netns::tx_packets(netns::CLIENT_NS, client_if(target))?, Instant::now());
        let total: u64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum();
        let delta = |i: usize| (cpu1[i] - cpu0[i]) as f64;
        let idle = delta(IDLE) + delta(IOWAIT);
        Ok(Sample {
            seconds: (t1 - t0).as_secs_f64(),
            packets: tx1 - tx0,
            softirq_pct: 100.0 * delta(SOFTIRQ) / total.max(1) as f64,
            busy_pct: 100.0 * (total as f64 - idle) / total.max(1) as f64,
            softirq_ticks: delta(SOFTIRQ),
        })
    })();
    // SIGTERM to `timeout`, which passes it on to hping3 (a SIGKILL would orphan hping3).
    let _ = kill(Pid::from_raw(hping.id() as i32), Signal::SIGTERM);
    let status = hping.wait()?;
    let sample = measured?;
    if sample.packets == 0 {
        bail!("hping3 sent nothing ({status})");
    }
    Ok(sample)
}

fn client_if(target: &str) -> &'static str {
    if target == netns::BASELINE_GUARD_ADDR {
        "pgbc1"
    } else {
        netns::CLIENT_IF
    }
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
