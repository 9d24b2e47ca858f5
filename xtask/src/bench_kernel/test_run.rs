//! Program cost without the receive path: `BPF_PROG_TEST_RUN` of the limiter's builds and of
//! `xdp_pass` on one IPv4 SYN from a source over its limit, in interleaved rounds (each round
//! runs every program once, so load drifts across all of them alike). The kernel times the
//! repeats itself with one clock read per batch, so neither the run-stats clock nor a cold cache
//! is in these figures: they are what the instructions and helpers of the judgement cost, next
//! to the flood's run-stats figures, which carry both.
//!
//! The object is loaded here on its own (its own maps; nothing is attached). With `bpftool` on
//! the PATH, each limiter build's translated code goes to `target/bench/xlated-<name>.txt`, for
//! counting the path's instructions.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use guard_common::{
    mode,
    xdp::{
        XdpConfig, MAP_XDP_CONFIG, PROG_XDP_CLOCK_COARSE, PROG_XDP_CLOCK_FINE,
        PROG_XDP_CLOCK_JIFFIES, PROG_XDP_PASS, PROG_XDP_SYN_LIMIT, PROG_XDP_SYN_LIMIT_COARSE,
        PROG_XDP_SYN_LIMIT_JIFFIES,
    },
};
use serde_json::{json, Value};

use super::defence::{BURST, RATE_PER_SEC};

const PORT: u16 = 18080;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// Runs per program per round.
const REPEAT: u32 = 200_000;

/// One program's figures: ns per run in each round, and its translated size.
pub struct Program {
    pub name: &'static str,
    pub ns: Vec<f64>,
    pub insns: u32,
}

impl Program {
    pub fn median(&self) -> f64 {
        median(&self.ns)
    }
}

pub struct Rounds {
    pub programs: Vec<Program>,
    /// Per round: the limiter build the daemon loads first (jiffies) ÷ `xdp_pass`.
    pub ratios: Vec<f64>,
}

impl Rounds {
    pub fn json(&self) -> Value {
        json!({
            "repeat": REPEAT,
            "programs": self.programs.iter().map(|p| json!({
                "name": p.name,
                "ns_per_run": p.ns,
                "median_ns": p.median(),
                "xlated_insns": p.insns,
            })).collect::<Vec<_>>(),
            "ratio_per_round": self.ratios,
            "ratio_median": median(&self.ratios),
        })
    }

    pub fn print(&self) {
        println!(
            "program cost (BPF_PROG_TEST_RUN, one IPv4 SYN over its limit, {} rounds of {REPEAT} runs, interleaved)",
            self.ratios.len()
        );
        for p in &self.programs {
            let (lo, hi) =
                p.ns.iter()
                    .fold((f64::MAX, 0f64), |(lo, hi), ns| (lo.min(*ns), hi.max(*ns)));
            println!(
                "  {:<32} median {:>5.1} ns/run (rounds {lo:.0}..{hi:.0}; {} insns)",
                p.name,
                p.median(),
                p.insns
            );
        }
        println!(
            "  {PROG_XDP_SYN_LIMIT_JIFFIES} / xdp_pass, median of the rounds' ratios: {:.2}",
            median(&self.ratios)
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The programs in the order each round runs them; the first is the baseline.
const PROGRAMS: [&str; 7] = [
    PROG_XDP_PASS,
    PROG_XDP_SYN_LIMIT_JIFFIES,
    PROG_XDP_SYN_LIMIT_COARSE,
    PROG_XDP_SYN_LIMIT,
    PROG_XDP_CLOCK_JIFFIES,
    PROG_XDP_CLOCK_COARSE,
    PROG_XDP_CLOCK_FINE,
];

/// The limiter's tunables as the daemon would write them for the bench's limit, protecting
/// [`PORT`]. The jiffies scale is a plausible `HZ` (250): the run's own clock only has to agree
/// with itself, as every bucket here is made and spent by these runs.
fn config() -> XdpConfig {
    let interval = 1_000_000_000 / u64::from(RATE_PER_SEC);
    let mut config = XdpConfig {
        mode: mode::ENFORCE,
        source_interval_ns: interval,
        source_tolerance_ns: interval * u64::from(BURST - 1),
        v6_source_mask: u64::MAX,
        v4_prefix_mask: (u32::MAX << 8).to_be(),
        ns_per_jiffy: 4_000_000,
        new_interval_ns: 100_000_000,
        new_tolerance_ns: 31 * 100_000_000,
        v6_prefix_mask: u64::MAX,
        events_per_sec: 100,
        v4_prefix_len: 24,
        v6_prefix_len: 48,
        v6_source_len: 64,
        ..XdpConfig::default()
    };
    config.set_ports(&[PORT]);
    config
}

fn run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// Loads `object`'s XDP programs, spends the test source's bucket, and runs `rounds` rounds.
pub fn measure(object: &Path, rounds: usize, xlated_dir: &Path) -> Result<Rounds> {
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("cannot load {}", object.display()))?;
    {
        let mut map: Array<_, XdpConfig> = Array::try_from(
            ebpf.map_mut(MAP_XDP_CONFIG)
                .context("no XDP_CONFIG map in the object")?,
        )?;
        map.set(0, config(), 0)?;
    }
    let mut loaded = Vec::new();
    for name in PROGRAMS {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()?;
        match program.load() {
            Ok(()) => loaded.push(name),
            Err(err) if name == PROG_XDP_PASS || name == PROG_XDP_SYN_LIMIT_JIFFIES => {
                bail!("the kernel refused {name}: {err}")
            }
            Err(err) => eprintln!("bench-kernel: test run without {name}: {err}"),
        }
    }
    let frame = proxyguard_tests::syn_frames::syn_frame(
        [0x02, 0, 0, 0, 0, 2],
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 9)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
        40000,
        PORT,
    );
    let mut programs = Vec::new();
    for name in &loaded {
        let program: &Xdp = ebpf.program(name).context("loaded above")?.try_into()?;
        let info = program.info()?;
        if name.starts_with("syn_") {
            // The bucket: made by the first run, spent by the burst, then over the limit.
            let (verdict, _) = run(program, &frame, BURST + 10)?;
            if verdict != XDP_DROP {
                bail!("{name} did not drop the test SYN once its bucket was spent ({verdict})");
            }
            dump_xlated(info.id(), name, xlated_dir);
        } else if run(program, &frame, 1)?.0 != XDP_PASS {
            bail!("{name} did not pass the test SYN");
        }
        programs.push(Program {
            name,
            ns: Vec::new(),
            insns: info.size_translated().unwrap_or(0) / 8,
        });
    }
    let mut ratios = Vec::new();
    for _ in 0..rounds {
        super::signals::check()?;
        for (i, name) in loaded.iter().enumerate() {
            let program: &Xdp = ebpf.program(name).context("loaded above")?.try_into()?;
            let (_, ns) = run(program, &frame, REPEAT)?;
            programs[i].ns.push(ns);
        }
        let pass = programs[0].ns.last().copied().unwrap_or(f64::NAN);
        ratios.push(programs[1].ns.last().copied().unwrap_or(f64::NAN) / pass);
    }
    Ok(Rounds { programs, ratios })
}

/// Loads each limiter build `object` has (its own maps, nothing written or attached) and saves
/// its translated code into `dir`: for counting a path's instructions in an older build too.
pub fn dump_limiters(object: &Path, dir: &Path) -> Result<()> {
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("cannot load {}", object.display()))?;
    for name in &PROGRAMS[1..4] {
        let Some(program) = ebpf.program_mut(name) else {
            eprintln!("bench-kernel: no {name} in {}", object.display());
            continue;
        };
        let program: &mut Xdp = program.try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel refused {name}"))?;
        let info = program.info()?;
        println!(
            "{name}: {} insns translated",
            info.size_translated().unwrap_or(0) / 8
        );
        dump_xlated(info.id(), name, dir);
    }
    Ok(())
}

/// `bpftool prog dump xlated` of program `id` into `dir`, when bpftool is there.
fn dump_xlated(id: u32, name: &str, dir: &Path) {
    let out = std::process::Command::new("bpftool")
        .args(["prog", "dump", "xlated", "id", &id.to_string()])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let path = dir.join(format!("xlated-{name}.txt"));
            if std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, &out.stdout))
                .is_ok()
            {
                eprintln!(
                    "bench-kernel: {name}'s translated code in {}",
                    path.display()
                );
            }
        }
        _ => eprintln!("bench-kernel: no bpftool here: no translated code of {name} saved"),
    }
}
