//! Kernel benchmarks (issue 7): what proxyguard's XDP SYN limit buys against a connection flood,
//! what a SYN flood costs the receiver with it and with iptables `hashlimit`, and what the program
//! costs per packet against a pass-through one. All in one run, on the benchmark's own namespaces,
//! against the same per-source limit; figures are ratios against peers measured in the same run.
//!
//! This is a measurement, not a test: nothing here fails on a figure. Each target is reported as
//! met or missed.
//!
//! `cargo xtask bench-xdp-test-run` runs only the `BPF_PROG_TEST_RUN` rounds of the program cost
//! (see `test_run.rs`): seconds, not minutes, and no namespaces.

mod conn_flood;
mod defence;
mod netns;
mod peers;
mod prog_cost;
mod rotation;
mod signals;
mod syn_flood;
mod syn_sender;
mod test_run;
mod upstream;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{build, cmd};

/// The protected port (the slow upstream listens on it; both defences guard it).
const PORT: u16 = 18080;

struct Plan {
    conn_phase: Duration,
    rotation_phase: Duration,
    syn_phase: Duration,
    cost_phase: Duration,
    /// Pause between phases, for queues and TIME_WAITs from a flood to drain.
    settle: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                conn_phase: Duration::from_secs(10),
                rotation_phase: Duration::from_secs(10),
                // /proc/stat is tick-sampled: shorter windows make the softirq share noisy.
                syn_phase: Duration::from_secs(8),
                cost_phase: Duration::from_secs(3),
                settle: Duration::from_secs(2),
            }
        } else {
            Plan {
                conn_phase: Duration::from_secs(30),
                rotation_phase: Duration::from_secs(30),
                syn_phase: Duration::from_secs(20),
                cost_phase: Duration::from_secs(8),
                settle: Duration::from_secs(4),
            }
        }
    }
}

/// Interleaved `BPF_PROG_TEST_RUN` rounds per run.
const TEST_RUN_ROUNDS: usize = 15;

/// Only the `BPF_PROG_TEST_RUN` rounds (as root), on the release build's object.
pub fn test_runs(rounds: usize) -> Result<Value> {
    signals::watch()?;
    let result = (|| {
        cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
        let target_dir = build::target_dir();
        let object = prog_cost::object_file(&target_dir)?;
        let rounds = test_run::measure(&object, rounds, &target_dir.join("bench"))?;
        rounds.print();
        Ok(rounds.json())
    })();
    signals::finished();
    result
}

/// Saves the translated code of `object`'s limiter builds under `target/bench/<object name>/`.
pub fn xlated_of(object: &std::path::Path) -> Result<()> {
    let name = object
        .file_name()
        .map_or("object".into(), |n| n.to_string_lossy());
    test_run::dump_limiters(object, &build::target_dir().join("bench").join(&*name))
}

/// Runs every kernel benchmark, prints a table, and returns the figures.
pub fn run(quick: bool) -> Result<Value> {
    signals::watch()?;
    let result = run_all(quick);
    signals::finished();
    result
}

fn run_all(quick: bool) -> Result<Value> {
    peers::install()?;
    // Only the daemon is needed, in release: cheaper than the whole workspace on a busy machine.
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    let target_dir = build::target_dir();
    let binary = target_dir.join("release/proxyguard");
    let object = prog_cost::object_file(&target_dir)?;
    let plan = Plan::new(quick);

    let _topology = netns::Topology::new()?;
    let _upstream = upstream::Upstream::start(PORT)?;
    let mut conn = Vec::new();
    let mut syn = Vec::new();
    let phase = |name: &str| eprintln!("bench-kernel: {name}");

    phase("connection flood: no flood");
    conn.push(("no flood", conn_flood::phase(PORT, plan.conn_phase, false)?));
    signals::sleep(plan.settle)?;
    phase("connection flood: no defence");
    conn.push((
        "flood, no defence",
        conn_flood::phase(PORT, plan.conn_phase, true)?,
    ));
    signals::sleep(plan.settle)?;
    phase("SYN flood: no defence");
    syn.push((
        "no defence",
        syn_flood::phase(netns::GUARD_ADDR.parse()?, PORT, plan.syn_phase)?,
    ));
    signals::sleep(plan.settle)?;

    let iptables_dropped = {
        let hashlimit = defence::Hashlimit::add(PORT)?;
        phase("connection flood: iptables hashlimit");
        conn.push((
            "flood + iptables hashlimit",
            conn_flood::phase(PORT, plan.conn_phase, true)?,
        ));
        signals::sleep(plan.settle)?;
        phase("SYN flood: iptables hashlimit");
        syn.push((
            "iptables hashlimit",
            syn_flood::phase(netns::GUARD_ADDR.parse()?, PORT, plan.syn_phase)?,
        ));
        hashlimit.dropped()?
    };
    signals::sleep(plan.settle)?;

    let (hook, cost, rotation, xdp_counters) = {
        let mut daemon = defence::Daemon::start(&binary, PORT)?;
        let hook = daemon.hook();
        phase("connection flood: proxyguard XDP");
        conn.push((
            "flood + proxyguard XDP",
            conn_flood::phase(PORT, plan.conn_phase, true)?,
        ));
        signals::sleep(plan.settle)?;
        phase("SYN flood: proxyguard XDP");
        syn.push((
            "proxyguard XDP",
            syn_flood::phase(netns::GUARD_ADDR.parse()?, PORT, plan.syn_phase)?,
        ));
        signals::sleep(plan.settle)?;
        phase("rotation flood: 200,000 IPv6 + 65,536 IPv4 sources, proxyguard XDP");
        let rotation = rotation::phase(PORT, plan.rotation_phase)?;
        signals::sleep(plan.settle)?;
        phase("program cost: syn_rate_limit vs xdp_pass (and the clock helpers)");
        let limiter_id = netns::xdp_prog_id(netns::GUARD_NS, netns::GUARD_IF)?
            .context("proxyguard's XDP program is not attached to the guard veth")?;
        let cost = prog_cost::measure(
            limiter_id,
            &object,
            hook.contains("native"),
            PORT,
            plan.cost_phase,
        )?;
        (hook, cost, rotation, daemon.stop()?)
    };
    phase("program cost: BPF_PROG_TEST_RUN rounds");
    let test_runs = test_run::measure(&object, TEST_RUN_ROUNDS, &target_dir.join("bench"))?;

    let targets = targets(&conn, &syn, &cost, &rotation);
    print_table(quick, &hook, &conn, &syn, &cost, &rotation, &targets);
    println!();
    test_runs.print();
    Ok(json!({
        "quick": quick,
        "limit": { "rate_per_sec": defence::RATE_PER_SEC, "burst": defence::BURST },
        "upstream": {
            "workers": upstream::WORKERS,
            "delay_ms": upstream::DELAY.as_millis() as u64,
        },
        "legit_rate_per_sec": conn_flood::LEGIT_RATE,
        "xdp_hook": hook,
        "connection_flood": conn.iter().map(|(name, o)| (name.to_string(), o.json())).collect::<serde_json::Map<_, _>>(),
        "syn_flood": syn.iter().map(|(name, s)| (name.to_string(), s.json())).collect::<serde_json::Map<_, _>>(),
        "rotation_flood": rotation.json(),
        "program_cost": cost.json(),
        "program_cost_test_run": test_runs.json(),
        "xdp_counters": xdp_counters,
        "iptables_hashlimit_dropped": iptables_dropped,
        "targets": targets.iter().map(|t| t.json()).collect::<Vec<_>>(),
    }))
}

struct Target {
    name: &'static str,
    value: f64,
    bound: f64,
    /// true: the value must be at least the bound; false: at most.
    at_least: bool,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.bound
        } else {
            self.value <= self.bound
        }
    }

    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "value": self.value,
            "bound": self.bound,
            "rule": if self.at_least { "at least" } else { "at most" },
            "met": self.met(),
        })
    }
}

fn targets(
    conn: &[(&str, conn_flood::Outcome)],
    syn: &[(&str, syn_flood::Sample)],
    cost: &prog_cost::Cost,
    rotation: &rotation::Outcome,
) -> Vec<Target> {
    let (baseline, xdp) = (&conn[0].1, &conn[3].1);
    let (iptables, xdp_syn) = (&syn[1].1, &syn[2].1);
    vec![
        Target {
            name: "conn flood + XDP: legit success %",
            value: xdp.success_pct(),
            bound: 99.0,
            at_least: true,
        },
        Target {
            name: "rotation flood (200k sources) + XDP: legit success %",
            value: rotation.legit.success_pct(),
            bound: 99.0,
            at_least: true,
        },
        Target {
            name: "conn flood + XDP: legit p99 / no-flood p99",
            value: xdp.percentile_ms(99.0) / baseline.percentile_ms(99.0),
            bound: 1.5,
            at_least: false,
        },
        Target {
            name: "SYN flood: softirq per SYN (median), XDP / iptables",
            value: xdp_syn.median_ns_per_syn() / iptables.median_ns_per_syn(),
            bound: 0.75,
            at_least: false,
        },
        Target {
            name: "program cost: syn_rate_limit / xdp_pass",
            value: cost.ratio(),
            bound: 2.0,
            at_least: false,
        },
    ]
}

fn print_table(
    quick: bool,
    hook: &str,
    conn: &[(&str, conn_flood::Outcome)],
    syn: &[(&str, syn_flood::Sample)],
    cost: &prog_cost::Cost,
    rotation: &rotation::Outcome,
    targets: &[Target],
) {
    println!();
    println!(
        "kernel benchmarks ({}; limit {}/s burst {} per source; XDP hook: {hook})",
        if quick { "quick" } else { "full" },
        defence::RATE_PER_SEC,
        defence::BURST
    );
    println!();
    println!(
        "connection flood (upstream: {} workers x {} ms; legit client {}/s)",
        upstream::WORKERS,
        upstream::DELAY.as_millis(),
        conn_flood::LEGIT_RATE
    );
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "", "legit ok", "p50 ms", "p99 ms", "flood ok/s", "flood fail"
    );
    for (name, o) in conn {
        println!(
            "  {:<28} {:>8.1}% {:>9.1} {:>9.1} {:>12.1} {:>12}",
            name,
            o.success_pct(),
            o.percentile_ms(50.0),
            o.percentile_ms(99.0),
            o.flood_per_sec(),
            o.flood_failed
        );
    }
    println!();
    println!(
        "SYN flood (raw sender, one source, {} SYN/s offered; machine-wide /proc/stat over the window)",
        syn_flood::SYN_RATE
    );
    println!(
        "  {:<28} {:>8} {:>10} {:>8} {:>8} {:>8} {:>9} {:>11}",
        "", "SYN/s", "softirq %", "busy %", "ns/SYN", "median", "before %", "sender ns"
    );
    for (name, s) in syn {
        println!(
            "  {:<28} {:>8.0} {:>9.1}% {:>7.1}% {:>8.0} {:>8.0} {:>8.1}% {:>11.0}",
            name,
            s.packets_per_sec(),
            s.softirq_pct,
            s.busy_pct,
            s.softirq_ns_per_packet(),
            s.median_ns_per_syn(),
            s.background_softirq_pct,
            s.sender_cpu_ns_per_syn,
        );
    }
    println!(
        "  (ns/SYN: softirq CPU per SYN over the window; median: of its 2 s slices; before %:\n   \
         softirq share in the 2 s before the flood, from other tenants of the machine;\n   \
         sender ns: the sender thread's CPU per SYN, send path plus the softirq work run inline)"
    );
    println!();
    println!(
        "rotation flood (raw SYNs over {} IPv6 sources in one /48 and {} IPv4 in one /16, {} rounds)",
        rotation::V6_SOURCES,
        rotation::V4_SOURCES,
        rotation.rounds
    );
    println!(
        "  legit ok {:.1}% ({} of {}), p99 {:.1} ms; {} flood SYNs sent ({:.0}/s)",
        rotation.legit.success_pct(),
        rotation.legit.ok,
        rotation.legit.attempts,
        rotation.legit.percentile_ms(99.0),
        rotation.flood_sent,
        rotation.flood_sent as f64 / rotation.legit.seconds
    );
    println!();
    println!(
        "program cost (BPF run stats, same SYN flood; limiter build: {})",
        cost.limiter
    );
    println!(
        "  syn_rate_limit, SYNs over the limit:   {:>6.0} ns/pkt ({} runs; {} insns translated, {} bytes JITed)",
        cost.limiter_ns, cost.limiter_runs, cost.limiter_size.0, cost.limiter_size.1
    );
    println!(
        "  syn_rate_limit, SYNs to another port:  {:>6.0} ns/pkt (parse and port lookup only)",
        cost.limiter_other_port_ns
    );
    println!(
        "  xdp_pass:                              {:>6.0} ns/pkt ({} runs; {} insns, {} bytes)",
        cost.pass_ns, cost.pass_runs, cost.pass_size.0, cost.pass_size.1
    );
    println!(
        "  xdp_pass + bpf_ktime_get_ns:           {:>6.0} ns/pkt",
        cost.clock_fine_ns
    );
    match cost.clock_coarse_ns {
        Some(ns) => println!("  xdp_pass + bpf_ktime_get_coarse_ns:    {ns:>6.0} ns/pkt"),
        None => println!("  xdp_pass + bpf_ktime_get_coarse_ns:    (not in this kernel)"),
    }
    match cost.clock_jiffies_ns {
        Some(ns) => println!("  xdp_pass + bpf_jiffies64:              {ns:>6.0} ns/pkt"),
        None => println!("  xdp_pass + bpf_jiffies64:              (not in this kernel)"),
    }
    println!();
    println!("targets");
    for t in targets {
        println!(
            "  {:<54} {:>8.2}  {} {:<6} {}",
            t.name,
            t.value,
            if t.at_least { ">=" } else { "<=" },
            t.bound,
            if t.met() { "met" } else { "MISSED" }
        );
    }
}
