//! The fleet's cost (issue 15): one proxyguard with its limits local, and the same with
//! `[fleet]` on a Redis on loopback (every request then makes its one Redis round trip).
//!
//! - Peak throughput of each (wrk), interleaved rounds, the order turned each round; per round
//!   also CPU per request of proxyguard and of redis-server (`/proc/PID/stat` over the phase, ÷
//!   the requests wrk counted), and Redis's commands per request (`INFO commandstats`, reset
//!   before the phase): counts that the machine's load does not change, unlike the req/s.
//! - The latency Redis adds, from the paced open-loop client (`xtask pace`, the same for both),
//!   at a light fixed rate (`LIGHT`, or `--rates`) and at half of the lower of the two median
//!   peaks, which must lie below every target's slowest round (else a figure is a queue, not a
//!   latency: the bench warns). Interleaved rounds; the added figures are per-round differences,
//!   given as median and spread. Target: added p50 ≤ 0.3 ms. At half of the peak the two cores
//!   are most of the way busy with the Redis leg's extra work (its proxyguard, redis-server and
//!   the client), so that figure holds the machine's queueing as well; the light rate shows the
//!   round trip itself. Per Redis round also what explains the difference: Redis's own time per
//!   call (`INFO commandstats`' `usec_per_call` of `EVALSHA`) and the call as proxyguard timed it
//!   (`proxyguard_fleet_call_seconds`, scraped before and after).

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

/// The light fixed rate (req/s) the added latency is also measured at: well below either peak,
/// so that neither the two cores nor the pacing client queue.
pub const LIGHT: f64 = 1000.0;

/// One of the two proxyguards.
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
}

/// One command's line of `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default)]
struct Stat {
    calls: u64,
    usec: u64,
}

/// What a paced Redis round says about its calls: Redis's own microseconds per `EVALSHA`, and
/// the calls as proxyguard timed them (mean, and the median read from the histogram's buckets).
#[derive(Debug, Clone, Copy, Default)]
struct CallTimes {
    redis_usec_per_call: f64,
    call_mean_us: f64,
    call_p50_us: f64,
    calls: f64,
}

impl CallTimes {
    fn to_json(self) -> Value {
        json!({
            "redis_evalsha_usec_per_call": self.redis_usec_per_call,
            "proxyguard_call_mean_us": self.call_mean_us,
            "proxyguard_call_p50_us": self.call_p50_us,
            "proxyguard_calls": self.calls,
        })
    }
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
    /// Redis's own microseconds per `EVALSHA` (its `usec_per_call`).
    evalsha_usec: f64,
}

/// `INFO commandstats` per command (Redis 7 counts a script's own commands too).
fn commandstats(port: u16) -> Result<BTreeMap<String, Stat>> {
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
        let field = |name: &str| {
            rest.split(',')
                .find_map(|f| f.strip_prefix(name))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let stat = Stat {
            calls: field("calls="),
            usec: field("usec="),
        };
        stats.insert(name.to_owned(), stat);
    }
    Ok(stats)
}

/// `usec_per_call` of `EVALSHA` in `stats`.
fn evalsha_usec(stats: &BTreeMap<String, Stat>) -> f64 {
    stats
        .get("evalsha")
        .map_or(f64::NAN, |s| s.usec as f64 / s.calls.max(1) as f64)
}

/// The admin listener's port, from the `ready` line in `dir`'s audit stream.
fn admin_port(dir: &std::path::Path) -> Result<u16> {
    let text = fs::read_to_string(dir.join("audit.jsonl"))?;
    let ready = text
        .lines()
        .find(|line| line.contains("\"ready\""))
        .context("no ready line")?;
    let value: Value = serde_json::from_str(ready)?;
    value["proxy"]["admin"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .context("no admin address in `ready`")
}

/// `proxyguard_fleet_call_seconds` from the admin listener: `(upper bound, cumulative count)`
/// per bucket, the sum and the count.
type Calls = (Vec<(f64, f64)>, f64, f64);

fn scrape_calls(admin: u16) -> Result<Calls> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", admin))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("proxyguard_fleet_call_seconds") else {
            continue;
        };
        let Some((name, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if let Some(le) = name
            .strip_prefix("_bucket{le=\"")
            .and_then(|l| l.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            buckets.push((le, value));
        } else if name == "_sum" {
            sum = value;
        } else if name == "_count" {
            count = value;
        }
    }
    Ok((buckets, sum, count))
}

/// The calls between two scrapes: their mean and their median, interpolated within its bucket
/// (microseconds), and their number.
fn calls_between(before: &Calls, after: &Calls) -> (f64, f64, f64) {
    let count = after.2 - before.2;
    let mean = (after.1 - before.1) / count.max(1.0) * 1e6;
    let mut lower = (0.0, 0.0);
    let mut p50 = f64::NAN;
    for (i, (le, cumulative)) in after.0.iter().enumerate() {
        let n = cumulative - before.0.get(i).map_or(0.0, |b| b.1);
        if n >= count / 2.0 && count > 0.0 {
            let (low, below) = lower;
            p50 = if le.is_finite() && n > below {
                low + (le - low) * (count / 2.0 - below) / (n - below)
            } else {
                low
            };
            break;
        }
        lower = (*le, n);
    }
    (mean, p50 * 1e6, count)
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
    run_with(quick, &[LIGHT])
}

/// The bench, with the added latency measured at each of the fixed `rates` (req/s) besides half
/// of the peak.
pub fn run_with(quick: bool, rates: &[f64]) -> Result<Value> {
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
    let admin = admin_port(&shared_dir)?;
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
            let commands = stats.values().map(|s| s.calls).sum::<u64>() as f64 / n;
            let calls = stats
                .iter()
                .filter(|(name, _)| !IN_SCRIPTS.contains(&name.as_str()))
                .map(|(_, s)| s.calls)
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
                evalsha_usec: evalsha_usec(&stats),
                by_command: stats
                    .into_iter()
                    .map(|(name, s)| (name, s.calls as f64 / n))
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
    // Each rate in interleaved rounds; per round the local and Redis answers, and what the Redis
    // round's calls took.
    let paced_at = |rate: f64| -> Result<Paced> {
        let mut paced = Paced::default();
        for round in 0..rounds {
            for i in rotated(targets.len(), round) {
                let before = if i == 1 {
                    reset_stats(redis_port)?;
                    Some(scrape_calls(admin)?)
                } else {
                    None
                };
                let run = pace::spawn(&pace::Args::chat(
                    url(targets[i].port),
                    rate,
                    connections,
                    duration.as_secs_f64(),
                    warmup,
                    format!("Authorization: Bearer {KEY}"),
                ))?;
                let mut line = String::new();
                if let Some(before) = before {
                    let (call_mean_us, call_p50_us, calls) =
                        calls_between(&before, &scrape_calls(admin)?);
                    let times = CallTimes {
                        redis_usec_per_call: evalsha_usec(&commandstats(redis_port)?),
                        call_mean_us,
                        call_p50_us,
                        calls,
                    };
                    line = format!(
                        "  EVALSHA in redis {:.1} µs, the call in proxyguard mean {:.0} p50 ~{:.0} µs",
                        times.redis_usec_per_call, times.call_mean_us, times.call_p50_us
                    );
                    paced.calls.push(times);
                }
                println!(
                    "  round {} {:<6} paced {:>7.0} req/s  p50 {:.3}  p99 {:.3} ms  service p50 {:.3} ms  late {:.1}%  non-2xx {}  errors {}{line}",
                    round + 1,
                    targets[i].name,
                    run.achieved_rps,
                    run.p50,
                    run.p99,
                    run.service_p50,
                    run.late_share * 100.0,
                    run.non_2xx,
                    run.errors
                );
                paced.runs[i].push(run);
            }
        }
        Ok(paced)
    };
    let mut fixed = Vec::new();
    for &light in rates {
        fixed.push((light, paced_at(light)?));
    }
    let half = paced_at(rate)?;
    let (added_p50, added_p99) = (half.added(&|p| p.p50), half.added(&|p| p.p99));

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
    for (light, paced) in &fixed {
        println!(
            "fleet: at {light:.0} req/s (paced, a light fixed rate), added by Redis: p50 {} ms (target <= 0.3), p99 {} ms; {}",
            paced.added(&|p| p.p50).show(3),
            paced.added(&|p| p.p99).show(3),
            paced.explain(),
        );
    }
    println!(
        "fleet: at {rate:.0} req/s (paced, half of the lower peak), added by Redis: p50 {} ms (target <= 0.3), p99 {} ms; {}",
        added_p50.show(3),
        added_p99.show(3),
        half.explain(),
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
                    "redis_evalsha_usec_per_call": s.evalsha_usec,
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
            "redis_evalsha_usec_per_call": of(1, &|s| s.evalsha_usec).to_json(),
        },
        "paced": half.to_json(rate),
        "paced_fixed": fixed
            .iter()
            .map(|(light, paced)| paced.to_json(*light))
            .collect::<Vec<_>>(),
    }))
}

/// The paced rounds at one rate: the answers of each target, and the Redis rounds' call times.
#[derive(Default)]
struct Paced {
    runs: [Vec<pace::Paced>; 2],
    calls: Vec<CallTimes>,
}

impl Paced {
    /// Redis's figure less the local one, per round.
    fn added(&self, f: &dyn Fn(&pace::Paced) -> f64) -> Spread {
        Spread::of(
            &self.runs[1]
                .iter()
                .zip(&self.runs[0])
                .map(|(redis, local)| f(redis) - f(local))
                .collect::<Vec<_>>(),
        )
    }

    fn of(&self, f: &dyn Fn(&CallTimes) -> f64) -> Spread {
        Spread::of(&self.calls.iter().map(f).collect::<Vec<_>>())
    }

    /// What the added p50 is made of: the service time added, the late shares, and the call.
    fn explain(&self) -> String {
        let late = |i: usize| {
            Spread::of(
                &self.runs[i]
                    .iter()
                    .map(|r| r.late_share * 100.0)
                    .collect::<Vec<_>>(),
            )
        };
        format!(
            "service p50 added {} ms, late local {} %, redis {} %; EVALSHA in redis {} µs, the call in proxyguard mean {} µs, p50 ~{} µs",
            self.added(&|p| p.service_p50).show(3),
            late(0).show(1),
            late(1).show(1),
            self.of(&|c| c.redis_usec_per_call).show(1),
            self.of(&|c| c.call_mean_us).show(0),
            self.of(&|c| c.call_p50_us).show(0),
        )
    }

    fn to_json(&self, rate: f64) -> Value {
        json!({
            "rate": rate,
            "local": self.runs[0].iter().map(pace::Paced::to_json).collect::<Vec<_>>(),
            "redis": self.runs[1].iter().map(pace::Paced::to_json).collect::<Vec<_>>(),
            "redis_calls": self.calls.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            "added_p50_ms": self.added(&|p| p.p50).to_json(),
            "added_p99_ms": self.added(&|p| p.p99).to_json(),
            "added_service_p50_ms": self.added(&|p| p.service_p50).to_json(),
            "redis_evalsha_usec_per_call": self.of(&|c| c.redis_usec_per_call).to_json(),
            "proxyguard_call_mean_us": self.of(&|c| c.call_mean_us).to_json(),
            "proxyguard_call_p50_us": self.of(&|c| c.call_p50_us).to_json(),
        })
    }
}
