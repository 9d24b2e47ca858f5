//! The fleet's cost (issue 15): one proxyguard with its limits local, and the same with
//! `[fleet]` on a Redis on loopback (every request then makes its one Redis round trip: the
//! key's script and the address's, sent together). Peak throughput of each, interleaved over
//! three rounds (median), and the latency Redis adds at half of the local peak, from the paced
//! open-loop client (`xtask pace`) in interleaved rounds, as the L7 bench measures it. Target:
//! added p50 ≤ 0.3 ms.

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{free_port, lua_script, nginx, pace, peers, wrk, BODY, KEY};
use crate::build;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

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
    let _redis = peers::Process::new(redis);
    peers::wait_for(redis_port, "redis-server")?;

    let upstream_port = free_port()?;
    let _upstream = nginx::upstream(&work.join("upstream"), upstream_port, peers::UPSTREAM_KEY)?;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let local_dir = work.join("local");
    let shared_dir = work.join("shared");
    fs::create_dir_all(&local_dir)?;
    fs::create_dir_all(&shared_dir)?;
    let (_local, local_port) = peers::proxyguard(&binary, &local_dir, upstream_port, &hash, "")?;
    let fleet = format!(
        "[fleet]\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\ninstance = \"bench\"\nexpected_instances = 1\ntimeout_ms = 30\n"
    );
    let (_shared, shared_port) =
        peers::proxyguard(&binary, &shared_dir, upstream_port, &hash, &fleet)?;

    let script = work.join("chat.lua");
    fs::write(&script, lua_script())?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let connections = 64;
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    for port in [local_port, shared_port] {
        let warm = wrk::run(&url(port), &script, connections, Duration::from_secs(1))?;
        anyhow::ensure!(
            warm.non_2xx == 0,
            "port {port} refused {} warm-up requests (see {})",
            warm.non_2xx,
            work.display()
        );
    }
    let (mut local_rps, mut shared_rps) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        local_rps.push(wrk::run(&url(local_port), &script, connections, duration)?.rps);
        shared_rps.push(wrk::run(&url(shared_port), &script, connections, duration)?.rps);
    }
    let (local_peak, shared_peak) = (median(local_rps.clone()), median(shared_rps.clone()));

    let half_rate = local_peak / 2.0;
    let paced = |port: u16| {
        pace::spawn(&pace::Args {
            url: url(port),
            rate: half_rate,
            connections,
            secs: duration.as_secs_f64(),
            warmup_secs: 1.0,
            headers: vec![
                "Content-Type: application/json".into(),
                format!("Authorization: Bearer {KEY}"),
            ],
            body: BODY.into(),
            method: None,
            ca_file: None,
        })
    };
    // Interleaved, the order turned each round; the added figures are per-round differences.
    let (mut added_p50s, mut added_p99s) = (Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    for round in 0..3 {
        let (local_half, shared_half) = if round % 2 == 0 {
            let local = paced(local_port)?;
            (local, paced(shared_port)?)
        } else {
            let shared = paced(shared_port)?;
            (paced(local_port)?, shared)
        };
        added_p50s.push(shared_half.p50 - local_half.p50);
        added_p99s.push(shared_half.p99 - local_half.p99);
        rounds.push(json!({ "local": local_half.to_json(), "redis": shared_half.to_json() }));
    }
    let (added_p50, added_p99) = (median(added_p50s.clone()), median(added_p99s.clone()));
    println!(
        "fleet: peak req/s local {local_peak:.0} (rounds {local_rps:.0?}), with Redis {shared_peak:.0} (rounds {shared_rps:.0?}): {:.2}x",
        shared_peak / local_peak
    );
    println!(
        "fleet: at {half_rate:.0} req/s (paced), added by Redis: p50 {added_p50:.3} ms (target <= 0.3; rounds {added_p50s:.3?}), p99 {added_p99:.3} ms (rounds {added_p99s:.3?})"
    );
    Ok(json!({
        "quick": quick,
        "seconds_per_target": duration.as_secs(),
        "connections": connections,
        "peak_rps": { "local": local_rps, "redis": shared_rps,
                      "local_median": local_peak, "redis_median": shared_peak,
                      "ratio": shared_peak / local_peak },
        "half_peak": {
            "target_rps": half_rate,
            "rounds": rounds,
            "added_p50_ms": added_p50,
            "added_p99_ms": added_p99,
        },
    }))
}
