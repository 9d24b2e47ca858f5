//! The fleet's cost (issue 15): one proxyguard with its limits local, and the same with
//! `[fleet]` on a Redis on loopback (every request then makes its one Redis round trip).
//!
//! - Peak throughput of each (wrk), interleaved rounds, the order turned each round; per round
//!   also CPU per request of proxyguard and of redis-server (`/proc/PID/stat` over the phase, ÷
//!   the requests wrk counted), and Redis's commands per request (`INFO commandstats`, reset
//!   before the phase): counts that the machine's load does not change, unlike the req/s.
//! - The latency Redis adds, from the paced open-loop client (`xtask pace`, the same for both),
//!   at half of the lower of the two median peaks, which must lie below every target's slowest
//!   round (else a figure is a queue, not a latency: the bench warns). Interleaved rounds; the
//!   added figures are per-round differences, given as median and spread. Target: added p50
//!   ≤ 0.3 ms.

use std::{
    collections::BTreeMap,
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{free_port, l7::rotated, l7::Spread, lua_script, nginx, pace, peers, wrk, KEY};
use crate::build;

/// One of the two proxyguards.
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
}

/// A saturation phase of one target.
struct Saturated {
    run: wrk::Run,
    guard_cpu_us: f64,
    redis_cpu_us: f64,
    /// Per request: every command Redis ran (a script's own included), and the calls that came
    /// over the wire (`EVALSHA`, `EVAL` and anything else not run from a script).
    commands: f64,
    calls: f64,
    by_command: BTreeMap<String, f64>,
}

/// `INFO commandstats` as `command -> calls` (Redis 7 counts a script's own commands too).
fn commandstats(port: u16) -> Result<BTreeMap<String, u64>> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .context("cannot run redis-cli")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stats = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        stats.insert(name.to_owned(), calls);
    }
    Ok(stats)
}

fn reset_stats(port: u16) -> Result<()> {
    let status = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "CONFIG", "RESETSTAT"])
        .stdout(Stdio::null())
        .status()
        .context("cannot run redis-cli")?;
    anyhow::ensure!(status.success(), "redis-cli CONFIG RESETSTAT failed");
    Ok(())
}

/// The commands a script runs from inside Redis (not round trips of their own).
const IN_SCRIPTS: &[&str] = &[
    "time",
    "get",
    "set",
    "incrbyfloat",
    "expire",
    "exists",
    "mget",
    "hincrbyfloat",
];

pub fn run(quick: bool) -> Result<Value> {
    crate::setup::apt_install("bench", &["nginx", "wrk", "redis-server"])?;
    pace::build_release()?;
    let binary = build::target_dir().join("release/proxyguard");
    let work = build::target_dir().join("bench/fleet");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(work.join("redis"))?;

    let redis_port = free_port()?;
    let redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
        ])
        .arg(redis_port.to_string())
        .arg("--dir")
        .arg(work.join("redis"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let redis = peers::Process::new(redis);
    peers::wait_for(redis_port, "redis-server")?;

    let upstream_port = free_port()?;
    let _upstream = nginx::upstream(&work.join("upstream"), upstream_port, peers::UPSTREAM_KEY)?;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let local_dir = work.join("local");
    let shared_dir = work.join("shared");
    fs::create_dir_all(&local_dir)?;
    fs::create_dir_all(&shared_dir)?;
    let (local, local_port) = peers::proxyguard(&binary, &local_dir, upstream_port, &hash, "")?;
    let fleet = format!(
        "[fleet]\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\ninstance = \"bench\"\nexpected_instances = 1\ntimeout_ms = 30\n"
    );
    let (shared, shared_port) =
        peers::proxyguard(&binary, &shared_dir, upstream_port, &hash, &fleet)?;
    let targets = [
        Target {
            name: "local",
            port: local_port,
            pid: local.pid(),
        },
        Target {
            name: "redis",
            port: shared_port,
            pid: shared.pid(),
        },
    ];

    let script = work.join("chat.lua");
    fs::write(&script, lua_script())?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let connections = 64;
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let rounds = if quick { 3 } else { 5 };
    for t in &targets {
        let warm = wrk::run(&url(t.port), &script, connections, Duration::from_secs(1))?;
        anyhow::ensure!(
            warm.non_2xx == 0,
            "{} refused {} warm-up requests (see {})",
            t.name,
            warm.non_2xx,
            work.display()
        );
    }

    let mut saturated: Vec<Vec<Saturated>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in rotated(targets.len(), round) {
            let t = &targets[i];
            reset_stats(redis_port)?;
            let (guard0, redis0) = (peers::cpu_seconds(t.pid)?, peers::cpu_seconds(redis.pid())?);
            let run = wrk::run(&url(t.port), &script, connections, duration)?;
            let (guard1, redis1) = (peers::cpu_seconds(t.pid)?, peers::cpu_seconds(redis.pid())?);
            let stats = commandstats(redis_port)?;
            let n = run.requests.max(1) as f64;
            let commands = stats.values().sum::<u64>() as f64 / n;
            let calls = stats
                .iter()
                .filter(|(name, _)| !IN_SCRIPTS.contains(&name.as_str()))
                .map(|(_, calls)| *calls)
                .sum::<u64>() as f64
                / n;
            println!(
                "  round {} {:<6} {:>9.0} req/s  proxyguard {:.1} µs/req  redis-server {:.1} µs/req  redis calls {calls:.2}/req, commands {commands:.2}/req",
                round + 1,
                t.name,
                run.rps,
                (guard1 - guard0) * 1e6 / n,
                (redis1 - redis0) * 1e6 / n,
            );
            saturated[i].push(Saturated {
                run,
                guard_cpu_us: (guard1 - guard0) * 1e6 / n,
                redis_cpu_us: (redis1 - redis0) * 1e6 / n,
                commands,
                calls,
                by_command: stats
                    .into_iter()
                    .map(|(name, calls)| (name, calls as f64 / n))
                    .collect(),
            });
        }
    }
    let of = |i: usize, f: &dyn Fn(&Saturated) -> f64| {
        Spread::of(&saturated[i].iter().map(f).collect::<Vec<_>>())
    };
    let rps = |i: usize| of(i, &|s| s.run.rps);
    // The throughput ratio within each round (both under the same machine conditions).
    let ratio = Spread::of(
        &saturated[1]
            .iter()
            .zip(&saturated[0])
            .map(|(redis, local)| redis.run.rps / local.run.rps)
            .collect::<Vec<_>>(),
    );

    // Half of the lower median peak, and below every target's slowest round.
    let rate = rps(0).median.min(rps(1).median) / 2.0;
    for (i, t) in targets.iter().enumerate() {
        if rps(i).min <= rate {
            println!(
                "fleet: warning: {} peaked at {:.0} req/s in a round, not above the paced rate {rate:.0}: its latency is a queue",
                t.name,
                rps(i).min
            );
        }
    }
    let warmup = if quick { 1.0 } else { 2.0 };
    let mut paced: Vec<Vec<pace::Paced>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in rotated(targets.len(), round) {
            let run = pace::spawn(&pace::Args::chat(
                url(targets[i].port),
                rate,
                connections,
                duration.as_secs_f64(),
                warmup,
                format!("Authorization: Bearer {KEY}"),
            ))?;
            println!(
                "  round {} {:<6} paced {:>9.0} req/s  p50 {:.3}  p99 {:.3} ms  non-2xx {}  errors {}",
                round + 1,
                targets[i].name,
                run.achieved_rps,
                run.p50,
                run.p99,
                run.non_2xx,
                run.errors
            );
            paced[i].push(run);
        }
    }
    let added = |f: &dyn Fn(&pace::Paced) -> f64| {
        Spread::of(
            &paced[1]
                .iter()
                .zip(&paced[0])
                .map(|(redis, local)| f(redis) - f(local))
                .collect::<Vec<_>>(),
        )
    };
    let (added_p50, added_p99) = (added(&|p| p.p50), added(&|p| p.p99));

    println!(
        "fleet: peak req/s local {}, with Redis {}: {}x",
        rps(0).show(0),
        rps(1).show(0),
        ratio.show(2)
    );
    println!(
        "fleet: CPU per request: proxyguard local {} µs, with Redis {} µs; redis-server {} µs",
        of(0, &|s| s.guard_cpu_us).show(1),
        of(1, &|s| s.guard_cpu_us).show(1),
        of(1, &|s| s.redis_cpu_us).show(1),
    );
    println!(
        "fleet: per request with Redis: {} calls over the wire, {} commands run",
        of(1, &|s| s.calls).show(2),
        of(1, &|s| s.commands).show(2),
    );
    println!(
        "fleet: at {rate:.0} req/s (paced, half of the lower peak), added by Redis: p50 {} ms (target <= 0.3), p99 {} ms",
        added_p50.show(3),
        added_p99.show(3)
    );
    let rounds_json = |i: usize| {
        saturated[i]
            .iter()
            .map(|s| {
                json!({
                    "wrk": s.run.to_json(),
                    "proxyguard_cpu_us": s.guard_cpu_us,
                    "redis_cpu_us": s.redis_cpu_us,
                    "redis_calls_per_request": s.calls,
                    "redis_commands_per_request": s.commands,
                    "redis_commands": s.by_command,
                })
            })
            .collect::<Vec<_>>()
    };
    Ok(json!({
        "quick": quick,
        "seconds_per_phase": duration.as_secs(),
        "rounds": rounds,
        "connections": connections,
        "peak": {
            "local": rounds_json(0),
            "redis": rounds_json(1),
            "local_rps": rps(0).to_json(),
            "redis_rps": rps(1).to_json(),
            "ratio": ratio.to_json(),
            "proxyguard_cpu_us": { "local": of(0, &|s| s.guard_cpu_us).to_json(),
                                   "redis": of(1, &|s| s.guard_cpu_us).to_json() },
            "redis_server_cpu_us": of(1, &|s| s.redis_cpu_us).to_json(),
            "redis_calls_per_request": of(1, &|s| s.calls).to_json(),
            "redis_commands_per_request": of(1, &|s| s.commands).to_json(),
        },
        "paced": {
            "rate": rate,
            "local": paced[0].iter().map(pace::Paced::to_json).collect::<Vec<_>>(),
            "redis": paced[1].iter().map(pace::Paced::to_json).collect::<Vec<_>>(),
            "added_p50_ms": added_p50.to_json(),
            "added_p99_ms": added_p99.to_json(),
        },
    }))
}
