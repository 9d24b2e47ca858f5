//! The short fuzz run: every cargo-fuzz target in `fuzz/` for a fixed time each, starting from
//! the checked-in seeds. A crash fails the run and names the input libFuzzer saved.
//!
//! libFuzzer writes what it learns to `fuzz/corpus/{target}` (ignored by git), so later runs
//! start where earlier ones stopped; the seeds in `fuzz/seeds/{target}` are only read. The config
//! target also gets the embedded default config, copied into its corpus on each run.

use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context, Result};

use crate::{cmd, counts::Counts, setup};

/// What one target's run showed, from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Run {
    execs: u64,
    execs_per_sec: u64,
    cov: u64,
    features: u64,
    artifact: Option<String>,
}

impl Run {
    /// Takes what it needs from one line of libFuzzer's output; says whether to echo the line.
    fn scan(&mut self, line: &str) -> bool {
        if let Some(n) = stat(line, "stat::number_of_executed_units:") {
            self.execs = n;
        } else if let Some(n) = stat(line, "stat::average_exec_per_sec:") {
            self.execs_per_sec = n;
        } else if let Some(path) = line.split("Test unit written to ").nth(1) {
            self.artifact = Some(path.trim().to_owned());
        }
        let status = line.starts_with('#');
        if status {
            // "#4096 pulse  cov: 812 ft: 2310 corp: 95/4Kb ...": the latest figures win.
            self.cov = field(line, "cov:").unwrap_or(self.cov);
            self.features = field(line, "ft:").unwrap_or(self.features);
        }
        // Progress lines come by the thousand, and the closing dictionary by the dozen; the
        // summary at the end has the figures.
        if status {
            line.contains("DONE") || line.contains("INITED")
        } else {
            !line.contains("# Uses:")
                && !line.starts_with("###### ")
                && !line.trim_start().starts_with("NEW_FUNC")
        }
    }
}

fn stat(line: &str, prefix: &str) -> Option<u64> {
    line.trim().strip_prefix(prefix)?.trim().parse().ok()
}

fn field(line: &str, name: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()?.parse().ok()
}

fn fuzz_dir() -> PathBuf {
    cmd::workspace_root().join("fuzz")
}

/// The targets: one file each in `fuzz/fuzz_targets`, sorted by name.
fn targets() -> Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let stem = path.file_stem()?.to_string_lossy().into_owned();
            (path.extension()? == "rs").then_some(stem)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The fuzz build's own target dir (instrumented, nightly), in the cache and not in the work
/// tree: a fresh clone on a machine that has built the targets once (CI's case) rebuilds only the
/// workspace's own crates, not every dependency with coverage instrumentation (about 16 minutes).
fn fuzz_target_dir() -> PathBuf {
    crate::setup::cache_dir().join("fuzz-target")
}

/// `cargo fuzz SUBCOMMAND` on nightly, as aya-build runs the kernel build: without the outer
/// cargo's compiler settings, with the cached cargo-fuzz, into the fuzz target dir.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz", subcommand])
        .args(["--sanitizer", SANITIZER, "--target-dir"])
        .arg(fuzz_target_dir())
        .env("PATH", setup::cargo_fuzz_path())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .current_dir(cmd::workspace_root());
    command
}

/// Safe Rust: a panic is the bug being hunted, and debug assertions (overflow checks) stay on.
/// AddressSanitizer would halve the runs for nothing in code that forbids `unsafe`.
const SANITIZER: &str = "none";

/// The fuzz stage's outcome: one count per target, and a line for the summary.
pub struct Summary {
    pub counts: Counts,
    pub detail: String,
}

/// Builds every target, then runs each for `secs` seconds. One count per target: passed, or
/// failed with the crashing input's path.
pub fn run(secs: u64, only: &[String]) -> Result<Summary> {
    setup::cargo_fuzz()?;
    let all = targets()?;
    if let Some(unknown) = only.iter().find(|name| !all.contains(name)) {
        bail!(
            "no fuzz target {unknown}; the targets are {}",
            all.join(", ")
        );
    }
    let chosen: Vec<&String> = all
        .iter()
        .filter(|name| only.is_empty() || only.contains(name))
        .collect();
    let started = Instant::now();
    cmd::run(&mut cargo_fuzz("build"))?;
    println!("fuzz: built in {:.0}s", started.elapsed().as_secs_f64());

    let mut counts = Counts::default();
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for name in chosen {
        let corpus = fuzz_dir().join("corpus").join(name);
        fs::create_dir_all(&corpus)?;
        if name == "config" {
            // The embedded default is the config fuzzer's best seed; taken from its one source
            // each run, so no checked-in copy can go stale.
            fs::copy(
                cmd::workspace_root().join("guard/src/config/default.toml"),
                corpus.join("embedded-default.toml"),
            )?;
        }
        let mut run = Run::default();
        let mut command = cargo_fuzz("run");
        command
            .arg(name)
            .arg(&corpus)
            .arg(fuzz_dir().join("seeds").join(name))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            // An input that takes this long is a hang, and a failure.
            .arg("-timeout=10")
            .arg("-print_final_stats=1");
        let clean = cmd::stream_filtered(&mut command, |line| run.scan(line))?;
        let result = match (&run.artifact, clean) {
            (None, true) => {
                counts.passed += 1;
                "ok".to_owned()
            }
            (Some(path), _) => {
                counts.failed += 1;
                let input = preview(&cmd::workspace_root().join(path));
                failures.push(format!("{name} crashed on {path}: {input}"));
                format!("CRASH, input saved to {path}: {input}")
            }
            (None, false) => {
                counts.failed += 1;
                failures.push(format!("{name} failed"));
                "FAILED (libFuzzer exited non-zero; see its output above)".to_owned()
            }
        };
        lines.push(format!(
            "fuzz: {name:<13} {:>10} runs {:>7}/s  cov {:>5}  ft {:>6}  {result}",
            run.execs, run.execs_per_sec, run.cov, run.features
        ));
    }
    println!();
    for line in &lines {
        println!("{line}");
    }
    let detail = if failures.is_empty() {
        format!("{} targets, {secs}s each, no crash", counts.passed)
    } else {
        failures.join("; ")
    };
    Ok(Summary { counts, detail })
}

/// The crashing input as an escaped string (the first 512 bytes), for the CI log.
fn preview(path: &std::path::Path) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let shown: String = bytes
                .iter()
                .take(512)
                .flat_map(|b| b.escape_ascii())
                .map(char::from)
                .collect();
            let more = if bytes.len() > 512 {
                format!(" ... ({} bytes)", bytes.len())
            } else {
                String::new()
            };
            format!("\"{shown}\"{more}")
        }
        Err(err) => format!("(cannot read it: {err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_figures_and_artifacts() {
        let mut run = Run::default();
        assert!(run.scan("INFO: Seed: 123"));
        assert!(!run.scan("#1024\tNEW    cov: 80 ft: 200 corp: 9/1Kb lim: 4 exec/s: 0 rss: 40Mb"));
        assert!(!run.scan("\"%5c\" # Uses: 1406"));
        assert!(!run.scan("\tNEW_FUNC[1/3]: 0x55cca71e08d1"));
        assert!(run
            .scan("#88211\tDONE   cov: 95 ft: 310 corp: 40/2Kb lim: 4096 exec/s: 1470 rss: 52Mb"));
        run.scan("stat::number_of_executed_units: 88211");
        run.scan("stat::average_exec_per_sec:     1470");
        run.scan("artifact_prefix='fuzz/artifacts/path/'; Test unit written to fuzz/artifacts/path/crash-ab12");
        assert_eq!(
            run,
            Run {
                execs: 88211,
                execs_per_sec: 1470,
                cov: 95,
                features: 310,
                artifact: Some("fuzz/artifacts/path/crash-ab12".into()),
            }
        );
    }

    #[test]
    fn a_crash_input_is_shown_escaped() {
        let dir = std::env::temp_dir().join(format!("xtask-preview-{}", std::process::id()));
        fs::write(&dir, "[log]\nlevel = \"\tב[\"\n").unwrap();
        let shown = preview(&dir);
        fs::remove_file(&dir).unwrap();
        assert_eq!(shown, r#""[log]\nlevel = \"\t\xd7\x91[\"\n""#);
    }
}
