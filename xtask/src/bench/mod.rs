//! `cargo xtask bench`: the L7 benchmark. wrk against a fast upstream (nginx returning a fixed
//! chat completion), measured in one run three ways: direct; through proxyguard with every check
//! on; and through nginx configured with the same limits. It reports throughput and the latency
//! each guard adds over direct, proxyguard's peak RSS at 1,000 connections, and a soak at a
//! steady rate with RSS and descriptors sampled (`soak.rs`). Ratios matter, not absolute
//! timings: the machine is shared and wrk runs on the same cores.

mod fleet;
pub mod gateway;
mod peers;
mod soak;
mod sse_rss;
mod wrk;

use std::{fs, process::Command, time::Duration};

use anyhow::Result;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{build, cmd};

/// A fixed client key for the run (the benchmark's config holds only its hash).
const KEY: &str = "pgk_bench_0123456789abcdef0123456789abcdef0123456789abcdef01234567";

/// Every benchmark in one run (L7, kernel, environ watch), each as ratios against the peers
/// measured in the same run; the figures go to target/bench/results.json.
pub fn run(quick: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let l7 = l7(quick)?;
    println!("\n==> bench: SSE memory (RSS while streaming a 1 MB answer, accounting on and off)");
    let sse_rss = sse_rss::run(quick)?;
    println!("\n==> bench: provider gateway (added latency against the HTTPS provider directly)");
    let gateway = gateway::run(quick)?;
    println!("\n==> bench: kernel (connection flood, SYN-flood cost, XDP program cost)");
    let kernel = crate::bench_kernel::run(quick)?;
    println!("\n==> bench: environ watch (openat overhead)");
    let binary = build::target_dir().join("release/proxyguard");
    let watch = crate::bench_watch::run(&binary, if quick { 200_000 } else { 1_000_000 })?;
    println!("{}", serde_json::to_string_pretty(&watch)?);
    let results = json!({
        "quick": quick,
        "date": humantime_now(),
        "machine": machine(),
        "seconds": started.elapsed().as_secs(),
        "l7": l7,
        "sse_rss": sse_rss,
        "gateway": gateway,
        "kernel": kernel,
        "watch": watch,
        "fleet": fleet::run(quick)?,
    });
    let out = build::target_dir().join("bench/results.json");
    fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!(
        "\nbench: all figures in {} ({} s)",
        out.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn shell(script: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.args(["-c", script]);
    sh
}

fn humantime_now() -> String {
    cmd::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .map(|d| d.trim().to_owned())
        .unwrap_or_default()
}

/// Cores, memory and kernel, so a figure is never read without its machine.
fn machine() -> Value {
    let text = |mut cmd: Command| {
        cmd::output(&mut cmd)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cores": text(Command::new("nproc")),
        "kernel": text({
            let mut uname = Command::new("uname");
            uname.arg("-r");
            uname
        }),
        "memory": text(shell("free -h | awk '/Mem:/ {print $2}'")),
        "cpu": text(shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")),
    })
}

/// The L7 benchmark: wrk against nginx direct, through proxyguard (all checks on) and through
/// nginx with the same limits; RSS at 1,000 connections.
pub fn l7(quick: bool) -> Result<Value> {
    install_peers()?;
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    let binary = build::target_dir().join("release/proxyguard");
    let dir = build::target_dir().join("bench");
    let _ = fs::remove_dir_all(dir.join("run"));
    let work = dir.join("run");
    fs::create_dir_all(&work)?;

    let script = work.join("chat.lua");
    fs::write(&script, lua_script())?;
    let (upstream_port, nginx_port) = (free_port()?, free_port()?);
    let nginx_process = peers::nginx(&work.join("nginx"), upstream_port, nginx_port, KEY)?;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let (guard, guard_port) = peers::proxyguard(&binary, &work, upstream_port, &hash, "")?;
    // The same guard with token accounting off (issue 14): what reading every answer costs.
    let off_dir = work.join("accounting-off");
    fs::create_dir_all(&off_dir)?;
    let (guard_off, off_port) = peers::proxyguard(
        &binary,
        &off_dir,
        upstream_port,
        &hash,
        "[proxy.usage]\nenabled = false",
    )?;

    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let connections = 64;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    // Warm the pools and caches, then measure each target in turn.
    for port in [upstream_port, guard_port, off_port, nginx_port] {
        wrk::run(&url(port), &script, connections, Duration::from_secs(1))?;
    }
    println!(
        "bench: {} s per target, {connections} connections",
        duration.as_secs()
    );
    // CPU per request as well as throughput: on a shared machine, CPU time is what other tenants
    // disturb least. nginx is one process serving both the upstream and its guard, so its guard
    // share is its CPU per request through the guard less its CPU per request direct.
    let cpu = |pid: u32, run: &dyn Fn() -> Result<wrk::Run>| -> Result<(wrk::Run, f64)> {
        let before = peers::cpu_seconds(pid)?;
        let result = run()?;
        let used = peers::cpu_seconds(pid)? - before;
        Ok((result, used * 1e6 / result.requests.max(1) as f64))
    };
    let (direct, upstream_us) = cpu(nginx_process.pid(), &|| {
        wrk::run(&url(upstream_port), &script, connections, duration)
    })?;
    let (proxyguard, proxyguard_us) = cpu(guard.pid(), &|| {
        wrk::run(&url(guard_port), &script, connections, duration)
    })?;
    let (accounting_off, accounting_off_us) = cpu(guard_off.pid(), &|| {
        wrk::run(&url(off_port), &script, connections, duration)
    })?;
    drop(guard_off);
    let accounting_cost = proxyguard_us / accounting_off_us.max(f64::EPSILON) - 1.0;
    let (nginx, nginx_total_us) = cpu(nginx_process.pid(), &|| {
        wrk::run(&url(nginx_port), &script, connections, duration)
    })?;
    let nginx_us = (nginx_total_us - upstream_us).max(f64::EPSILON);
    let cpu_ratio = proxyguard_us / nginx_us;

    // Added latency at half of proxyguard's peak: each connection waits between requests so the
    // total rate is about half the peak (wrk's `delay()`), against direct and through proxyguard.
    let half_rate = proxyguard.rps / 2.0;
    let paced = work.join("paced.lua");
    let delay_ms = (f64::from(connections) * 1000.0 / half_rate).max(1.0);
    fs::write(
        &paced,
        format!(
            "{}function delay()\n  return {delay_ms:.0}\nend\n",
            lua_script()
        ),
    )?;
    println!("bench: at about {half_rate:.0} req/s (half of proxyguard's peak)");
    let direct_half = wrk::run(&url(upstream_port), &paced, connections, duration)?;
    let proxyguard_half = wrk::run(&url(guard_port), &paced, connections, duration)?;
    let added_p99_half = proxyguard_half.p99 - direct_half.p99;

    println!("bench: proxyguard at 1,000 connections");
    let many = wrk::run(&url(guard_port), &script, 1000, duration)?;
    let rss = peers::peak_rss_mib(guard.pid())?;

    // The soak runs on a fresh proxyguard, so the 1,000-connection burst is not in its memory.
    let soak_for = Duration::from_secs(if quick { 60 } else { 600 });
    let soak = soak::run(
        &binary,
        &work,
        upstream_port,
        &hash,
        &lua_script(),
        soak_for,
    )?;

    let rows = [
        ("direct", direct),
        ("proxyguard", proxyguard),
        ("nginx", nginx),
    ];
    println!();
    println!(
        "{:<12} {:>10} {:>9} {:>9} {:>12} {:>12} {:>8}",
        "target", "req/s", "p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "non-2xx"
    );
    for (name, run) in rows {
        println!(
            "{name:<12} {:>10.0} {:>9.3} {:>9.3} {:>12.3} {:>12.3} {:>8}",
            run.rps,
            run.p50,
            run.p99,
            run.p50 - direct.p50,
            run.p99 - direct.p99,
            run.non_2xx
        );
    }
    // Paced, not at peak: its latency is not comparable with direct's, so nothing is added.
    println!(
        "{:<12} {:>10.0} {:>9.3} {:>9.3} {:>12} {:>12} {:>8}",
        "soak", soak.run.rps, soak.run.p50, soak.run.p99, "-", "-", soak.run.non_2xx
    );
    let ratio = proxyguard.rps / nginx.rps;
    println!();
    println!("proxyguard / nginx throughput: {ratio:.2} (target >= 1.0)");
    println!(
        "CPU per request, guard share: proxyguard {proxyguard_us:.1} us, nginx {nginx_us:.1} us (its {nginx_total_us:.1} less {upstream_us:.1} for the upstream); ratio {cpu_ratio:.2}"
    );
    println!(
        "at half of proxyguard's peak ({:.0} vs {:.0} req/s measured): p99 direct {:.3} ms, proxyguard {:.3} ms, added {added_p99_half:.3} ms (target <= 1)",
        direct_half.rps, proxyguard_half.rps, direct_half.p99, proxyguard_half.p99
    );
    println!(
        "token accounting: {proxyguard_us:.1} us per request on, {accounting_off_us:.1} us off ({:.0} req/s off): {:+.1}% (target <= 5%)",
        accounting_off.rps,
        accounting_cost * 100.0
    );
    println!("proxyguard peak RSS after 1,000 connections: {rss:.1} MiB (target <= 64); {:.0} req/s, {} non-2xx", many.rps, many.non_2xx);
    println!("{} (target: flat)", soak.summary());

    let results = json!({
        "quick": quick,
        "seconds_per_target": duration.as_secs(),
        "connections": connections,
        "direct": direct.to_json(),
        "proxyguard": proxyguard.to_json(),
        "nginx": nginx.to_json(),
        "added_over_direct": {
            "proxyguard": { "p50_ms": proxyguard.p50 - direct.p50, "p99_ms": proxyguard.p99 - direct.p99 },
            "nginx": { "p50_ms": nginx.p50 - direct.p50, "p99_ms": nginx.p99 - direct.p99 },
        },
        "throughput_ratio_proxyguard_to_nginx": ratio,
        "cpu_us_per_request": {
            "proxyguard": proxyguard_us,
            "nginx_guard_share": nginx_us,
            "nginx_total": nginx_total_us,
            "upstream": upstream_us,
            "ratio_proxyguard_to_nginx": cpu_ratio,
        },
        "accounting": {
            "on_cpu_us_per_request": proxyguard_us,
            "off_cpu_us_per_request": accounting_off_us,
            "off": accounting_off.to_json(),
            "cost_ratio": accounting_cost,
        },
        "half_peak": {
            "target_rps": half_rate,
            "direct": direct_half.to_json(),
            "proxyguard": proxyguard_half.to_json(),
            "added_p99_ms": added_p99_half,
        },
        "proxyguard_1000_connections": { "run": many.to_json(), "peak_rss_mib": rss },
        "soak": soak.to_json(),
    });
    Ok(results)
}

/// POSTs a small chat completion with the key, as an SDK would.
fn lua_script() -> String {
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {KEY}"
wrk.body = '{{"model":"bench","messages":[{{"role":"user","content":"Say ok."}}]}}'
"#
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// nginx and wrk from apt, installed once.
fn install_peers() -> Result<()> {
    crate::setup::apt_install("bench", &["nginx", "wrk"])
}
