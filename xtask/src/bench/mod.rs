//! `cargo xtask bench`: every benchmark in one run. The L7 one (`l7.rs`) loads a fast upstream
//! (nginx returning a fixed chat completion) directly, through proxyguard with every check on, and
//! through nginx-as-guard in its own process with every check nginx can express (`nginx.rs`), in
//! interleaved rounds: throughput at saturation (wrk), latency at a fixed offered rate (the paced
//! client, `pace.rs`), CPU per request of each process, proxyguard's RSS at 1,000 connections and
//! a soak (`soak.rs`). Then the provider gateway (`gateway.rs`), the kernel and the environ watch.
//! Ratios matter, not absolute timings: the machine is shared and the load runs on its cores.

pub mod fleet;
pub mod gateway;
mod l7;
mod nginx;
pub mod pace;
mod peers;
mod soak;
mod sse_rss;
mod wrk;

use std::{fs, process::Command};

use anyhow::Result;
use serde_json::{json, Value};

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
    println!("\n==> bench: fleet (one proxyguard with and without Redis on loopback)");
    let fleet = fleet::run(quick)?;
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
        "fleet": fleet,
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

/// The L7 benchmark (`l7.rs`): direct, proxyguard and nginx-as-guard in interleaved rounds.
pub fn l7(quick: bool) -> Result<Value> {
    l7::run(quick)
}

/// The chat completion every load sends, as an SDK would.
pub const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Say ok."}]}"#;

/// POSTs `BODY` with the client key, as an SDK would.
fn lua_script() -> String {
    lua_script_for(KEY)
}

/// POSTs `BODY` with `key` as the bearer token.
fn lua_script_for(key: &str) -> String {
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = '{BODY}'
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
