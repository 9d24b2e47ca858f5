//! The environ watch's cost on every open: an open/close loop (its thread's CPU time) without
//! proxyguard's programs and with them attached and pinned (the daemon itself stopped, so its
//! rescans do not compete for the CPU), interleaved in one run so both see the same machine. The tier is the
//! one the kernel allows within `[watch] tier` (`cargo xtask bench-watch --tier`), as the
//! daemon's `environ-watch` feature line names it: the path tracepoints (this host: target
//! under 10%), the open probe (a kprobe at `environ_open`, which an ordinary open never reaches:
//! target under 3%), or the LSM program (`lsm/file_open` runs for every open: under 3%).
//!
//! Where the tier uses tracepoints, a third condition is timed in the same rounds: the object's
//! empty `tracepoint_floor` program attached to the same tracepoints. Once any syscall tracepoint
//! has a program, every syscall of every task takes the kernel's traced slow path, whatever the
//! program does; the floor is that cost, and what our programs add is the rest. The figure is
//! reported as the total, and split into the floor and ours over the floor.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::{programs::TracePoint, Ebpf};
use guard_common::environ::PROG_TRACEPOINT_FLOOR;
use serde_json::{json, Value};

/// Rounds per condition; the fastest round of each counts, which filters out a noisy neighbour.
const ROUNDS: usize = 3;

/// Runs the benchmark at the strongest tier the kernel allows, with the default config's
/// `temp_files = "report"` ([`run_tier`] with `auto` and `report`).
pub fn run(proxyguard: &Path, iterations: u64) -> Result<Value> {
    run_tier(proxyguard, iterations, "auto", "report")
}

/// Runs the benchmark with the `proxyguard` binary at `proxyguard`, `[watch] tier = tier` and
/// `temp_files = temp_files` (`fix` adds the created-files record's programs, which only fix
/// mode attaches), and returns its JSON report: iterations, the best time per condition, the
/// slowdown ratio against the tier's target, and what was attached.
pub fn run_tier(proxyguard: &Path, iterations: u64, tier: &str, temp_files: &str) -> Result<Value> {
    let scratch = std::env::temp_dir().join(format!("pg-bench-watch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("create the benchmark's scratch directory")?;
    let target = scratch.join("opened");
    std::fs::write(&target, b"x")?;
    let config = write_config(&scratch, tier, temp_files)?;

    let object = crate::build::ebpf_object(proxyguard.parent().unwrap_or(Path::new(".")))?;
    let result = (|| {
        let (mut without, mut floor, mut with) = (Vec::new(), Vec::new(), Vec::new());
        let (mut programs, mut tracepoints) = (Vec::new(), Vec::new());
        let mut in_use = String::new();
        for round in 0..ROUNDS {
            without.push(open_loop(&target, iterations)?);
            // The first round learns which tracepoints the tier uses; the floor is timed from
            // then on, in every round after the daemon's.
            if round > 0 && !tracepoints.is_empty() {
                let attached = Floor::attach(&object, &tracepoints)?;
                floor.push(open_loop(&target, iterations)?);
                drop(attached);
            }
            // The daemon attaches and pins the programs, then goes away: what is timed is the
            // programs on the open path, not the daemon's own rescans competing for the CPU.
            let mut daemon = Daemon::start(proxyguard, &config)?;
            daemon.stop();
            programs = daemon.programs;
            tracepoints = daemon.tracepoints;
            in_use = daemon.tier;
            std::thread::sleep(Duration::from_millis(200));
            with.push(open_loop(&target, iterations)?);
            detach(proxyguard, &config)?;
        }
        if programs.is_empty() {
            bail!("proxyguard attached no environ program");
        }
        if !tracepoints.is_empty() {
            let attached = Floor::attach(&object, &tracepoints)?;
            floor.push(open_loop(&target, iterations)?);
            drop(attached);
        }
        Ok((without, floor, with, programs, tracepoints, in_use))
    })();
    // Whatever happened, nothing stays attached.
    let detached = detach(proxyguard, &config);
    let _ = std::fs::remove_dir_all(&scratch);
    let (without, floor, with, programs, tracepoints, in_use) = result?;
    detached?;

    let best = |runs: &[Duration]| runs.iter().min().copied().unwrap_or_default();
    let (base, watched) = (best(&without), best(&with));
    let ratio = watched.as_secs_f64() / base.as_secs_f64();
    let per_open = |d: Duration| d.as_nanos() as f64 / iterations as f64;
    // Shares of the loop without programs, so floor + ours = the total.
    let split = (!floor.is_empty()).then(|| {
        let rounds = floor.len();
        let floor = best(&floor);
        let floor_share = (floor.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
        json!({
            "floor_ns_per_open": per_open(floor),
            "floor_percent": floor_share,
            "ours_over_floor_percent": (ratio - 1.0) * 100.0 - floor_share,
            "floor_rounds": rounds,
        })
    });
    let target_percent = if in_use.starts_with("path tracepoints") {
        10.0
    } else {
        3.0
    };
    Ok(json!({
        "benchmark": "environ_watch_openat_overhead",
        "tier": in_use.split(':').next().unwrap_or_default(),
        "tier_detail": in_use,
        "temp_files": temp_files,
        "iterations": iterations,
        "rounds": ROUNDS,
        "without_ns_per_open": per_open(base),
        "with_ns_per_open": per_open(watched),
        "ratio": ratio,
        "slowdown_percent": (ratio - 1.0) * 100.0,
        "target_percent": target_percent,
        "within_target": (ratio - 1.0) * 100.0 < target_percent,
        "empty_programs_floor": split,
        "attached": programs,
        "tracepoints": tracepoints,
    }))
}

/// The object's empty tracepoint program attached to the given `category/name` tracepoints;
/// detached on drop (the object, and with it every link, is dropped).
struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    fn attach(object: &Path, tracepoints: &[String]) -> Result<Floor> {
        let mut ebpf =
            Ebpf::load_file(object).with_context(|| format!("load {}", object.display()))?;
        let program: &mut TracePoint = ebpf
            .program_mut(PROG_TRACEPOINT_FLOOR)
            .with_context(|| format!("no program {PROG_TRACEPOINT_FLOOR} in the object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel refused {PROG_TRACEPOINT_FLOOR}"))?;
        for tracepoint in tracepoints {
            let (category, name) = tracepoint
                .split_once('/')
                .with_context(|| format!("tracepoint {tracepoint} has no category"))?;
            program
                .attach(category, name)
                .with_context(|| format!("attach {PROG_TRACEPOINT_FLOOR} to {tracepoint}"))?;
        }
        Ok(Floor { _ebpf: ebpf })
    }
}

/// `run --detach-kernel`: unpins (and so detaches) the programs and removes the maps.
fn detach(proxyguard: &Path, config: &Path) -> Result<()> {
    let status = Command::new(proxyguard)
        .args(["run", "--detach-kernel", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run proxyguard run --detach-kernel")?;
    if !status.success() {
        bail!("proxyguard run --detach-kernel failed: {status}");
    }
    Ok(())
}

/// `iterations` open/close pairs of `path` (each open is an `openat` syscall), timed as the CPU
/// time of this thread (user and kernel): time the machine's other tenants hold the CPU is not
/// counted, as a wall clock would count it.
fn open_loop(path: &Path, iterations: u64) -> Result<Duration> {
    let started = thread_cpu()?;
    for _ in 0..iterations {
        drop(std::fs::File::open(path).context("open in the benchmark loop")?);
    }
    Ok(thread_cpu()?.saturating_sub(started))
}

/// This thread's time on the CPU, from the scheduler (ns precision).
fn thread_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("read /proc/thread-self/schedstat")?;
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()
        .context("schedstat's run time")?;
    Ok(Duration::from_nanos(ns))
}

/// A config with only the environ watch on. The guarded executable does not run: every open is
/// judged and none matches, which is the common case the overhead is about.
fn write_config(dir: &Path, tier: &str, temp_files: &str) -> Result<PathBuf> {
    let path = dir.join("proxyguard.toml");
    let text = format!(
        "[kernel]\npin_dir = \"/sys/fs/bpf/pg-bench-watch-{pid}\"\n\n\
         [control]\nsocket = \"{sock}\"\n\n\
         [guarded]\nexe = \"/nonexistent/pg-bench-guarded\"\n\n\
         [bind]\nenabled = false\n\n[xdp]\nenabled = false\n\n[egress]\nenabled = false\n\n\
         [watch]\nmode = \"monitor\"\ntier = \"{tier}\"\ntemp_dirs = []\ntemp_files = \"{temp_files}\"\n\n\
         [log]\nformat = \"json\"\n",
        pid = std::process::id(),
        sock = dir.join("control.sock").display(),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

struct Daemon {
    child: Child,
    /// Hooks of the environ watch's and the created-files record's programs it attached.
    programs: Vec<String>,
    /// Every tracepoint its programs attached to (the environ watch's and the created-files
    /// record's), as `category/name`: where the floor is attached.
    tracepoints: Vec<String>,
    /// Its `environ-watch` feature line: the tier in use, and why.
    tier: String,
}

impl Daemon {
    fn start(proxyguard: &Path, config: &Path) -> Result<Daemon> {
        let mut child = Command::new(proxyguard)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", proxyguard.display()))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads the `ready` record, then keeps draining so the daemon never blocks on stdout.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(record) = serde_json::from_str::<Value>(&line) {
                    if record["kind"] == "ready" {
                        let _ = tx.send(record);
                    }
                }
            }
        });
        let Ok(ready) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("proxyguard did not become ready within 60 s");
        };
        let programs = ready["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("environ_") || n.starts_with("created_"))
            })
            .filter_map(|p| {
                p["hook"]
                    .as_str()
                    .map(|h| format!("{h} {}", p["target"].as_str().unwrap_or("")))
            })
            .collect();
        let tracepoints = ready["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["hook"] == "tracepoint")
            .filter_map(|p| p["target"].as_str().map(str::to_owned))
            .collect();
        let tier = ready["features"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == "environ-watch")
            .and_then(|f| f["detail"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(Daemon {
            child,
            programs,
            tracepoints,
            tier,
        })
    }

    /// SIGKILL: the links stay pinned (attached) until `run --detach-kernel`.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
