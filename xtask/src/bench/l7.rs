//! The L7 benchmark, made fair in both directions (issue 16):
//!
//! - three kinds of process, each on its own: the upstream (nginx, a fixed chat completion),
//!   proxyguard on its defaults with every check on, and nginx as the guard with every check it
//!   can express (`nginx.rs`); the same proxyguard with token accounting off beside them;
//! - probes first: each guard must answer the same requests the same way (a key missing, a
//!   reserved header, an unknown route, a body over the limit, ...), so neither runs fewer checks
//!   than BENCHMARKS.md says;
//! - throughput at saturation (wrk, 64 connections) in interleaved rounds, the order rotated per
//!   round, reported as the median and the spread of the rounds; ratios are taken per round, so
//!   the machine's drift hits both sides of each;
//! - CPU per request of each process on its own, from /proc (nginx's master and workers summed),
//!   never by subtraction;
//! - latency at a fixed offered rate of half of proxyguard's peak, below every target's peak,
//!   with the paced open-loop client (`pace.rs`), again in interleaved rounds: the added p50/p99
//!   over direct, per round, and each process's CPU per request at that same rate (accounting's
//!   figure is taken there too: at saturation the slower of two processes is polled with fewer
//!   requests per wake-up, so its CPU per request includes that loss of batching as well);
//! - proxyguard's peak RSS at 1,000 connections, and the soak (`soak.rs`).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{free_port, install_peers, lua_script_for, nginx, pace, peers, soak, wrk, BODY, KEY};
use crate::build;

/// wrk's connections at saturation, and the paced client's.
const CONNECTIONS: u32 = 64;

/// The median and the spread of a figure over rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }

    pub fn to_json(self) -> Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// One of the targets wrk and the paced client load.
struct Target {
    name: &'static str,
    url: String,
    script: PathBuf,
    /// The key this target takes (the upstream's, direct).
    auth: String,
    /// The process whose CPU is this target's (with its children: nginx's workers).
    pid: u32,
}

impl Target {
    fn cpu(&self) -> f64 {
        peers::cpu_seconds_all(&peers::with_children(self.pid))
    }
}

/// A saturation phase: wrk's figures and CPU per request of the target and the upstream.
struct Saturated {
    round: usize,
    run: wrk::Run,
    cpu_us: f64,
    upstream_cpu_us: f64,
}

/// A paced phase.
struct Fixed {
    round: usize,
    run: pace::Paced,
    cpu_us: f64,
}

/// CPU microseconds per request of `pids`'s `used` seconds over `requests`.
fn per_request(used: f64, requests: u64) -> f64 {
    used * 1e6 / requests.max(1) as f64
}

/// The rounds' order: round `r` starts at target `r` (mod their count) and goes round.
pub fn rotated(count: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (i + round) % count)
}

pub fn run(quick: bool) -> Result<Value> {
    install_peers()?;
    pace::build_release()?;
    let binary = build::target_dir().join("release/proxyguard");
    let work = build::target_dir().join("bench/run");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;

    let (upstream_port, nginx_port) = (free_port()?, free_port()?);
    let upstream = nginx::upstream(&work.join("upstream"), upstream_port, peers::UPSTREAM_KEY)?;
    let nginx_guard = nginx::guard(
        &work.join("nginx-guard"),
        upstream_port,
        nginx_port,
        KEY,
        peers::UPSTREAM_KEY,
    )?;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let on_dir = work.join("proxyguard");
    fs::create_dir_all(&on_dir)?;
    let (guard, guard_port) = peers::proxyguard(&binary, &on_dir, upstream_port, &hash, "")?;
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

    let client_script = work.join("chat.lua");
    fs::write(&client_script, lua_script_for(KEY))?;
    let direct_script = work.join("direct.lua");
    fs::write(&direct_script, lua_script_for(peers::UPSTREAM_KEY))?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let target = |name, port, script: &Path, key: &str, pid| Target {
        name,
        url: url(port),
        script: script.to_owned(),
        auth: format!("Authorization: Bearer {key}"),
        pid,
    };
    // Saturation targets, in this order in round 0: direct, proxyguard, accounting off, nginx.
    let targets = [
        target(
            "direct",
            upstream_port,
            &direct_script,
            peers::UPSTREAM_KEY,
            upstream.pid(),
        ),
        target("proxyguard", guard_port, &client_script, KEY, guard.pid()),
        target(
            "proxyguard-accounting-off",
            off_port,
            &client_script,
            KEY,
            guard_off.pid(),
        ),
        target(
            "nginx-guard",
            nginx_port,
            &client_script,
            KEY,
            nginx_guard.pid(),
        ),
    ];
    let (direct_i, pg_i, off_i, ng_i) = (0, 1, 2, 3);

    let probes = probes(guard_port, nginx_port)?;

    let rounds = if quick { 3 } else { 5 };
    let phase = Duration::from_secs(if quick { 3 } else { 10 });
    for t in &targets {
        let warm = wrk::run(&t.url, &t.script, CONNECTIONS, Duration::from_secs(2))?;
        if warm.non_2xx > 0 {
            bail!(
                "{} answered {} of the warm-up's requests with a non-2xx status (see {})",
                t.name,
                warm.non_2xx,
                work.display()
            );
        }
    }
    println!(
        "bench: saturation, {rounds} interleaved rounds of {} s per target, {CONNECTIONS} connections",
        phase.as_secs()
    );
    let upstream_pid = upstream.pid();
    let mut saturated: Vec<Vec<Saturated>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for i in rotated(targets.len(), round) {
            let t = &targets[i];
            let (cpu0, up0) = (
                t.cpu(),
                peers::cpu_seconds_all(&peers::with_children(upstream_pid)),
            );
            let run = wrk::run(&t.url, &t.script, CONNECTIONS, phase)?;
            let (cpu1, up1) = (
                t.cpu(),
                peers::cpu_seconds_all(&peers::with_children(upstream_pid)),
            );
            println!(
                "  round {} {:<26} {:>9.0} req/s  {:>6.1} µs CPU/req  (upstream {:.1})  non-2xx {}",
                round + 1,
                t.name,
                run.rps,
                per_request(cpu1 - cpu0, run.requests),
                per_request(up1 - up0, run.requests),
                run.non_2xx
            );
            saturated[i].push(Saturated {
                round,
                run,
                cpu_us: per_request(cpu1 - cpu0, run.requests),
                upstream_cpu_us: per_request(up1 - up0, run.requests),
            });
        }
    }
    let rps = |i: usize| Spread::of(&saturated[i].iter().map(|s| s.run.rps).collect::<Vec<_>>());
    let cpu = |i: usize| Spread::of(&saturated[i].iter().map(|s| s.cpu_us).collect::<Vec<_>>());
    // Ratios per round (the same round's figures), then their median and spread.
    let paired = |a: usize, b: usize, f: &dyn Fn(&Saturated) -> f64| {
        let values: Vec<f64> = saturated[a]
            .iter()
            .zip(&saturated[b])
            .map(|(x, y)| f(x) / f(y))
            .collect();
        Spread::of(&values)
    };
    let throughput_ratio = paired(pg_i, ng_i, &|s| s.run.rps);
    let cpu_ratio = paired(pg_i, ng_i, &|s| s.cpu_us);
    let accounting_ratio = paired(pg_i, off_i, &|s| s.cpu_us);

    // Latency at a fixed offered rate: half of proxyguard's peak, which must be below every
    // target's peak (else that target's figure would be a queue, not a latency).
    let half_rate = rps(pg_i).median / 2.0;
    for (i, t) in targets.iter().enumerate() {
        if rps(i).min <= half_rate {
            println!(
                "bench: warning: {} peaked at {:.0} req/s in a round, not above the paced rate {half_rate:.0}",
                t.name,
                rps(i).min
            );
        }
    }
    let paced_targets = [direct_i, pg_i, off_i, ng_i];
    let warmup = if quick { 1.0 } else { 2.0 };
    println!(
        "bench: latency at {half_rate:.0} req/s (half of proxyguard's median peak), paced open loop, {rounds} interleaved rounds of {} s (+{warmup} s warm-up), {CONNECTIONS} connections",
        phase.as_secs()
    );
    let mut fixed: Vec<Vec<Fixed>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for j in rotated(paced_targets.len(), round) {
            let i = paced_targets[j];
            let t = &targets[i];
            let cpu0 = t.cpu();
            let run = pace::spawn(&pace::Args::chat(
                t.url.clone(),
                half_rate,
                CONNECTIONS,
                phase.as_secs_f64(),
                warmup,
                t.auth.clone(),
            ))?;
            let used = t.cpu() - cpu0;
            println!(
                "  round {} {:<26} {:>9.0} req/s  p50 {:.3}  p99 {:.3}  p99.9 {:.3} ms  non-2xx {}  errors {}",
                round + 1,
                t.name,
                run.achieved_rps,
                run.p50,
                run.p99,
                run.p999,
                run.non_2xx,
                run.errors
            );
            fixed[i].push(Fixed {
                round,
                // The CPU covers the warm-up's requests as well.
                cpu_us: per_request(used, run.answered_all),
                run,
            });
        }
    }
    let added = |i: usize, f: &dyn Fn(&pace::Paced) -> f64| {
        let values: Vec<f64> = fixed[i]
            .iter()
            .map(|x| {
                let direct = fixed[direct_i]
                    .iter()
                    .find(|d| d.round == x.round)
                    .expect("every round has direct");
                f(&x.run) - f(&direct.run)
            })
            .collect();
        Spread::of(&values)
    };
    let fixed_of = |i: usize, f: &dyn Fn(&Fixed) -> f64| {
        Spread::of(&fixed[i].iter().map(f).collect::<Vec<_>>())
    };
    // Accounting's CPU at one offered rate for both: the same requests per wake-up, so the ratio
    // is the work accounting adds. At saturation (`accounting_ratio`) it also holds the batching
    // the slower process loses, which the upstream's own CPU per request shows (the same answers,
    // up to 16% dearer per request behind the slower guard in one round).
    let accounting_paced = {
        let values: Vec<f64> = fixed[pg_i]
            .iter()
            .zip(&fixed[off_i])
            .map(|(on, off)| on.cpu_us / off.cpu_us)
            .collect();
        Spread::of(&values)
    };

    println!("bench: proxyguard at 1,000 connections");
    let many = wrk::run(&targets[pg_i].url, &client_script, 1000, phase)?;
    let rss = peers::peak_rss_mib(guard.pid())?;
    drop(guard_off);

    // The soak runs on a fresh proxyguard, so the 1,000-connection burst is not in its memory.
    let soak_for = Duration::from_secs(if quick { 60 } else { 600 });
    let soak = soak::run(
        &binary,
        &work,
        upstream_port,
        &hash,
        &lua_script_for(KEY),
        soak_for,
    )?;

    println!();
    println!("saturation (wrk, {CONNECTIONS} connections), median (min–max) of {rounds} rounds:");
    println!(
        "{:<26} {:>26} {:>24} {:>8}",
        "target", "req/s", "CPU µs/request", "non-2xx"
    );
    for (i, t) in targets.iter().enumerate() {
        println!(
            "{:<26} {:>26} {:>24} {:>8}",
            t.name,
            rps(i).show(0),
            cpu(i).show(1),
            saturated[i].iter().map(|s| s.run.non_2xx).sum::<u64>()
        );
    }
    println!();
    println!("at {half_rate:.0} req/s offered (paced, latency from the scheduled send):");
    println!(
        "{:<14} {:>22} {:>22} {:>22} {:>22} {:>18}",
        "target", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "CPU µs/request"
    );
    for i in paced_targets {
        println!(
            "{:<14} {:>22} {:>22} {:>22} {:>22} {:>18}",
            targets[i].name,
            fixed_of(i, &|f| f.run.p50).show(3),
            fixed_of(i, &|f| f.run.p99).show(3),
            added(i, &|p| p.p50).show(3),
            added(i, &|p| p.p99).show(3),
            fixed_of(i, &|f| f.cpu_us).show(1),
        );
    }
    println!();
    println!("targets (median of per-round figures; min–max in brackets):");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "  throughput, proxyguard / nginx-guard        {}  >= 1.2   {}",
        throughput_ratio.show(2),
        verdict(throughput_ratio.median >= 1.2)
    );
    println!(
        "  CPU per request, proxyguard / nginx-guard   {}  <= 1.0   {}",
        cpu_ratio.show(2),
        verdict(cpu_ratio.median <= 1.0)
    );
    let added_p99 = added(pg_i, &|p| p.p99);
    println!(
        "  added p99 at half peak, proxyguard (ms)     {}  <= 1     {}",
        added_p99.show(3),
        verdict(added_p99.median <= 1.0)
    );
    println!(
        "  RSS at 1,000 connections (MiB)              {rss:.1}  <= 64    {}  ({:.0} req/s, {} non-2xx)",
        verdict(rss <= 64.0),
        many.rps,
        many.non_2xx
    );
    println!(
        "  token accounting CPU, on / off, saturated   {}  <= 1.05  {}",
        accounting_ratio.show(3),
        verdict(accounting_ratio.median <= 1.05)
    );
    println!(
        "  token accounting CPU, on / off, paced       {}  <= 1.05  {}",
        accounting_paced.show(3),
        verdict(accounting_paced.median <= 1.05)
    );
    println!("{} (target: flat)", soak.summary());

    let saturated_json = |i: usize| -> Value {
        saturated[i]
            .iter()
            .map(|s| {
                json!({
                    "round": s.round + 1,
                    "run": s.run.to_json(),
                    "requests": s.run.requests,
                    "cpu_us_per_request": s.cpu_us,
                    "upstream_cpu_us_per_request": s.upstream_cpu_us,
                })
            })
            .collect()
    };
    let fixed_json = |i: usize| -> Value {
        fixed[i]
            .iter()
            .map(|f| json!({ "round": f.round + 1, "run": f.run.to_json(), "cpu_us_per_request": f.cpu_us }))
            .collect()
    };
    let mut saturation = serde_json::Map::new();
    for (i, t) in targets.iter().enumerate() {
        saturation.insert(
            t.name.into(),
            json!({
                "rps": rps(i).to_json(),
                "cpu_us_per_request": cpu(i).to_json(),
                "rounds": saturated_json(i),
            }),
        );
    }
    let mut half = serde_json::Map::new();
    for i in paced_targets {
        half.insert(
            targets[i].name.into(),
            json!({
                "p50_ms": fixed_of(i, &|f| f.run.p50).to_json(),
                "p99_ms": fixed_of(i, &|f| f.run.p99).to_json(),
                "added_p50_ms": added(i, &|p| p.p50).to_json(),
                "added_p99_ms": added(i, &|p| p.p99).to_json(),
                "cpu_us_per_request": fixed_of(i, &|f| f.cpu_us).to_json(),
                "rounds": fixed_json(i),
            }),
        );
    }
    Ok(json!({
        "quick": quick,
        "rounds": rounds,
        "seconds_per_phase": phase.as_secs(),
        "connections": CONNECTIONS,
        "probes": probes,
        "saturation": saturation,
        "half_peak": { "offered_rps": half_rate, "targets": half },
        "ratios": {
            "throughput_proxyguard_to_nginx_guard": throughput_ratio.to_json(),
            "cpu_per_request_proxyguard_to_nginx_guard": cpu_ratio.to_json(),
            "accounting_cpu_on_to_off": accounting_ratio.to_json(),
            "accounting_cpu_on_to_off_paced": accounting_paced.to_json(),
        },
        "proxyguard_1000_connections": { "run": many.to_json(), "peak_rss_mib": rss },
        "soak": soak.to_json(),
    }))
}

/// A probe: what it is, the method, path, headers and body, and whether it must be served.
struct Probe<'a>(&'a str, &'a str, &'a str, Vec<String>, &'a str, bool);

/// The same requests to both guards, each refused or served the same way: the evidence that
/// nginx-as-guard runs the checks the comparison says it runs. A guard that serves what it should
/// refuse (or refuses the plain request) stops the bench.
fn probes(guard_port: u16, nginx_port: u16) -> Result<Value> {
    let ok_headers = || {
        vec![
            "Content-Type: application/json".to_owned(),
            format!("Authorization: Bearer {KEY}"),
        ]
    };
    let with = |extra: &str| {
        let mut headers = ok_headers();
        headers.push(extra.to_owned());
        headers
    };
    let big = format!(
        "X-Big: {}",
        "a".repeat(nginx::MAX_HEADER_VALUE_BYTES as usize + 100)
    );
    let over = format!("Content-Length: {}", nginx::MAX_BODY_BYTES + 1);
    let chat = "/v1/chat/completions";
    let cases: Vec<Probe> = vec![
        Probe("the plain request", "POST", chat, ok_headers(), BODY, true),
        Probe(
            "under a rollout",
            "POST",
            "/rollout/r1/attempt/a1/v1/chat/completions",
            ok_headers(),
            BODY,
            true,
        ),
        Probe(
            "without /v1",
            "POST",
            "/chat/completions",
            ok_headers(),
            BODY,
            true,
        ),
        Probe(
            "no key",
            "POST",
            chat,
            vec!["Content-Type: application/json".into()],
            BODY,
            false,
        ),
        Probe(
            "a wrong key",
            "POST",
            chat,
            vec!["Authorization: Bearer pgk_wrong".into()],
            BODY,
            false,
        ),
        Probe(
            "x-rollout-id sent",
            "POST",
            chat,
            with("x-rollout-id: r1"),
            BODY,
            false,
        ),
        Probe(
            "x-sequence-id sent",
            "POST",
            chat,
            with("x-sequence-id: 1"),
            BODY,
            false,
        ),
        Probe(
            "an unknown route",
            "POST",
            "/v1/nope",
            ok_headers(),
            BODY,
            false,
        ),
        Probe(
            "LiteLLM's admin API",
            "GET",
            "/key/list",
            ok_headers(),
            "",
            false,
        ),
        Probe("the wrong method", "GET", chat, ok_headers(), "", false),
        Probe(
            "a query parameter",
            "POST",
            "/v1/chat/completions?model=x",
            ok_headers(),
            BODY,
            false,
        ),
        Probe(
            "a body over the limit",
            "POST",
            chat,
            with(&over),
            "",
            false,
        ),
        Probe("a header over 8 KiB", "POST", chat, with(&big), BODY, false),
    ];
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    println!("bench: probes (status from proxyguard / nginx-guard)");
    for Probe(what, method, path, headers, body, served) in cases {
        let status = |port: u16| {
            pace::once(
                &format!("http://127.0.0.1:{port}{path}"),
                method,
                &headers,
                body,
            )
            .map(i64::from)
            .unwrap_or(-1)
        };
        let (pg, ng) = (status(guard_port), status(nginx_port));
        println!("  {what:<24} {pg:>4} / {ng:>4}");
        for (name, got) in [("proxyguard", pg), ("nginx-guard", ng)] {
            let passed = (200..300).contains(&got);
            if passed != served {
                wrong.push(format!("{name} answered {got} to {what}"));
            }
        }
        rows.push(json!({ "probe": what, "proxyguard": pg, "nginx_guard": ng, "served": served }));
    }
    if !wrong.is_empty() {
        bail!(
            "the guards do not run the checks compared: {}",
            wrong.join("; ")
        );
    }
    Ok(Value::Array(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Spread::of(&[]).median.is_nan());
        assert_eq!(s.show(1), "2.0 (1.0–3.0)");
    }

    #[test]
    fn rounds_rotate() {
        assert_eq!(rotated(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotated(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotated(3, 4).collect::<Vec<_>>(), [1, 2, 0]);
    }
}
