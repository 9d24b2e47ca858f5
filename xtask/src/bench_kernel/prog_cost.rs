//! Program cost: ns per packet from the kernel's BPF run stats, for proxyguard's `syn_rate_limit`
//! (attached by the daemon on pair 0) against the trivial `xdp_pass` from the same object
//! (attached here on pair 1), both fed the same SYN flood, in the same attach mode. Three more
//! pass-through programs that read one clock each (`bpf_ktime_get_ns`, the coarse
//! `bpf_ktime_get_coarse_ns` where the kernel has it, and `bpf_jiffies64`) give what a clock read
//! costs. Beside the
//! ns, which load moves, the limiter's and `xdp_pass`'s translated instruction counts and JITed
//! sizes, which it does not.
//!
//! Run stats are on only while this module holds the `BPF_ENABLE_STATS` fd, so they do not
//! weigh on the other measurements and nothing global is left changed.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    programs::{loaded_programs, Xdp, XdpMode},
    sys::{enable_stats, Stats},
    Ebpf,
};
use guard_common::xdp::{
    PROG_XDP_CLOCK_COARSE, PROG_XDP_CLOCK_FINE, PROG_XDP_CLOCK_JIFFIES, PROG_XDP_PASS,
};
use serde_json::{json, Value};

use super::{netns, signals, syn_flood};

/// The eBPF object that `guard/build.rs` embeds into the release build of proxyguard.
pub fn object_file(target_dir: &Path) -> Result<PathBuf> {
    crate::build::ebpf_object(&target_dir.join("release"))
}

/// A pass-through program of the object (`xdp_pass` or a clock reader) attached to the baseline
/// interface in the guard namespace; detached on drop.
pub struct Baseline {
    pub id: u32,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Baseline {
    pub fn attach(object: &Path, native: bool, name: &'static str) -> Result<Baseline> {
        let object = object.to_owned();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u32>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // The attach resolves the interface name in the calling thread's namespace, and the
        // loaded object must stay alive while attached: one thread does both.
        let thread = std::thread::spawn(move || {
            let attached = (|| -> Result<Ebpf> {
                netns::enter(netns::GUARD_NS)?;
                let mut ebpf = Ebpf::load_file(&object)
                    .with_context(|| format!("cannot load {}", object.display()))?;
                let program: &mut Xdp = ebpf
                    .program_mut(name)
                    .with_context(|| format!("no program {name} in the object"))?
                    .try_into()?;
                program
                    .load()
                    .with_context(|| format!("the kernel refused {name}"))?;
                let mode = if native {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                program.attach(netns::BASELINE_GUARD_IF, mode)?;
                Ok(ebpf)
            })();
            match attached {
                Ok(ebpf) => {
                    let id = netns::xdp_prog_id(netns::GUARD_NS, netns::BASELINE_GUARD_IF)
                        .and_then(|id| id.with_context(|| format!("{name} is not attached")));
                    let _ = ready_tx.send(id);
                    let _ = stop_rx.recv();
                    drop(ebpf);
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                }
            }
        });
        let mut baseline = Baseline {
            id: 0,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        baseline.id = ready_rx
            .recv()
            .map_err(|_| anyhow!("the baseline thread died"))??;
        Ok(baseline)
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// (instructions the verifier left, bytes the JIT made) of program `id`: what load does not
/// change, next to the ns figures it does.
fn sizes(id: u32) -> Result<(u32, u32)> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok((info.size_translated().unwrap_or(0) / 8, info.size_jitted()));
        }
    }
    bail!("BPF program {id} is not loaded")
}

/// (run time in ns, run count) of program `id`.
fn run_stats(id: u32) -> Result<(u64, u64)> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    bail!("BPF program {id} is not loaded")
}

/// The name of loaded program `id` (which build of the limiter the daemon chose).
pub fn program_name(id: u32) -> Result<String> {
    for info in loaded_programs() {
        let info = info?;
        if info.id() == id {
            return Ok(info.name_as_str().unwrap_or("?").to_owned());
        }
    }
    bail!("BPF program {id} is not loaded")
}

pub struct Cost {
    /// Which build of the limiter ran (`syn_rate_limit`, the coarse-clock `syn_limit_coarse` or
    /// the jiffies `syn_limit_jiffy`; the kernel keeps 15 bytes of a name).
    pub limiter: String,
    /// `syn_rate_limit` on SYNs to the protected port from a source over its limit: the whole
    /// judging path, ending in a drop.
    pub limiter_ns: f64,
    pub limiter_runs: u64,
    /// `syn_rate_limit` on SYNs to an unprotected port: parsing and the port lookup only.
    pub limiter_other_port_ns: f64,
    pub pass_ns: f64,
    pub pass_runs: u64,
    /// (translated instructions, JITed bytes) of the limiter and of `xdp_pass`.
    pub limiter_size: (u32, u32),
    pub pass_size: (u32, u32),
    /// Pass-through programs that read the precise and the coarse clock once.
    pub clock_fine_ns: f64,
    /// `None` where the kernel has no coarse clock helper (before 5.11).
    pub clock_coarse_ns: Option<f64>,
    /// `None` where the kernel refuses `bpf_jiffies64` (before 5.5).
    pub clock_jiffies_ns: Option<f64>,
}

impl Cost {
    pub fn ratio(&self) -> f64 {
        self.limiter_ns / self.pass_ns
    }

    pub fn json(&self) -> Value {
        json!({
            "limiter_program": self.limiter,
            "syn_rate_limit_ns_per_packet": self.limiter_ns,
            "syn_rate_limit_runs": self.limiter_runs,
            "syn_rate_limit_unprotected_port_ns_per_packet": self.limiter_other_port_ns,
            "xdp_pass_ns_per_packet": self.pass_ns,
            "xdp_pass_runs": self.pass_runs,
            "syn_rate_limit_xlated_insns": self.limiter_size.0,
            "syn_rate_limit_jited_bytes": self.limiter_size.1,
            "xdp_pass_xlated_insns": self.pass_size.0,
            "xdp_pass_jited_bytes": self.pass_size.1,
            "clock_fine_ns_per_packet": self.clock_fine_ns,
            "clock_coarse_ns_per_packet": self.clock_coarse_ns,
            "clock_jiffies_ns_per_packet": self.clock_jiffies_ns,
            "ratio": self.ratio(),
        })
    }
}

/// ns per packet and runs of program `id` over one SYN flood of `duration` at `target:port`.
fn flood_cost(id: u32, target: &str, port: u16, duration: Duration) -> Result<(f64, u64)> {
    signals::check()?;
    let before = run_stats(id)?;
    syn_flood::phase(target.parse()?, port, duration)?;
    let after = run_stats(id)?;
    let runs = after.1 - before.1;
    if runs == 0 {
        bail!("BPF program {id} never ran during its flood");
    }
    Ok(((after.0 - before.0) as f64 / runs as f64, runs))
}

/// Floods each program in turn for `duration` with run stats on: the limiter with SYNs to the
/// protected port and to the next (unprotected) one, then the pass-through baseline and the two
/// clock readers, one at a time on the baseline interface.
pub fn measure(
    limiter_id: u32,
    object: &Path,
    native: bool,
    port: u16,
    duration: Duration,
) -> Result<Cost> {
    let _stats = enable_stats(Stats::RunTime).context("cannot enable BPF run stats")?;
    let limiter = program_name(limiter_id)?;
    let (limiter_ns, limiter_runs) = flood_cost(limiter_id, netns::GUARD_ADDR, port, duration)?;
    let (limiter_other_port_ns, _) = flood_cost(limiter_id, netns::GUARD_ADDR, port + 1, duration)?;
    let limiter_size = sizes(limiter_id)?;
    let on_baseline = |name: &'static str| -> Result<(f64, u64, (u32, u32))> {
        let baseline = Baseline::attach(object, native, name)?;
        let cost = flood_cost(baseline.id, netns::BASELINE_GUARD_ADDR, port, duration);
        let size = sizes(baseline.id);
        drop(baseline);
        let (ns, runs) = cost?;
        Ok((ns, runs, size?))
    };
    let (pass_ns, pass_runs, pass_size) = on_baseline(PROG_XDP_PASS)?;
    let (clock_fine_ns, _, _) = on_baseline(PROG_XDP_CLOCK_FINE)?;
    let optional = |name: &'static str| match on_baseline(name) {
        Ok((ns, _, _)) => Some(ns),
        Err(err) => {
            eprintln!("bench-kernel: no {name} measurement: {err:#}");
            None
        }
    };
    let clock_coarse_ns = optional(PROG_XDP_CLOCK_COARSE);
    let clock_jiffies_ns = optional(PROG_XDP_CLOCK_JIFFIES);
    Ok(Cost {
        limiter,
        limiter_ns,
        limiter_runs,
        limiter_other_port_ns,
        pass_ns,
        pass_runs,
        limiter_size,
        pass_size,
        clock_fine_ns,
        clock_coarse_ns,
        clock_jiffies_ns,
    })
}
