//! `cargo xtask test`: every check CI runs, in order, ending with one summary line per stage.
//!
//! Stages after a failure still run (a fmt slip should not hide a test failure), except that
//! nothing runs without a working set-up and build.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    cmd,
    counts::{Counts, Scanner},
    setup, vm,
};

struct Stage {
    name: &'static str,
    ok: bool,
    detail: String,
    took: Duration,
}

/// Which optional stages run.
pub struct Options {
    /// The VM stage (CI runs it).
    pub vm: bool,
    /// The fuzz stage (CI runs it), with this many seconds per target.
    pub fuzz: bool,
    pub fuzz_secs: u64,
}

pub fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    let mut stages = Vec::new();
    let mut total = Counts::default();

    let gate = timed("setup", || setup::run().map(|()| "ok".to_owned()));
    let ready = gate.ok;
    stages.push(gate);
    if ready {
        let build = timed("build", || {
            cmd::run(cmd::cargo().arg("build")).map(|()| "ok".to_owned())
        });
        let built = build.ok;
        stages.push(build);
        if built {
            stages.push(timed("fmt", || {
                cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
                // The fuzz targets are a workspace of their own.
                cmd::run(cmd::cargo().args([
                    "fmt",
                    "--manifest-path",
                    "fuzz/Cargo.toml",
                    "--check",
                ]))?;
                Ok("ok".to_owned())
            }));
            stages.push(timed("clippy", clippy));
            stages.push(counted("unit", &mut total, unit_tests));
            stages.push(counted("native", &mut total, native_privileged_tests));
            stages.push(timed("deb", || {
                let deb = crate::deb::run()?;
                crate::deb::inspect(&deb)
            }));
            if options.vm {
                stages.push(counted("vm", &mut total, vm_tests));
                stages.push(counted("system", &mut total, system_vm_journey));
            } else {
                for name in ["vm", "system"] {
                    stages.push(Stage {
                        name,
                        ok: false,
                        detail: "not run (--no-vm); CI runs it".into(),
                        took: Duration::ZERO,
                    });
                }
            }
            if options.fuzz {
                stages.push(fuzz_stage(options.fuzz_secs, &mut total));
            } else {
                stages.push(Stage {
                    name: "fuzz",
                    ok: false,
                    detail: "not run (--no-fuzz); CI runs it".into(),
                    took: Duration::ZERO,
                });
            }
        }
    }

    println!();
    for stage in &stages {
        let mark = if stage.ok { "ok  " } else { "FAIL" };
        println!(
            "==> {mark} {:<7} {:>6.1}s  {}",
            stage.name,
            stage.took.as_secs_f64(),
            stage.detail
        );
    }
    println!("==> total {:.1}s", started.elapsed().as_secs_f64());
    // CI reads this as the closing line: "N passed, N failed", then ", N skipped".
    println!(
        "test: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if stages.iter().all(|s| s.ok) && ready {
        Ok(())
    } else {
        bail!("some stages failed")
    }
}

fn timed(name: &'static str, f: impl FnOnce() -> Result<String>) -> Stage {
    println!("\n==> {name}");
    let started = Instant::now();
    let (ok, detail) = match f() {
        Ok(detail) => (true, detail),
        Err(err) => (false, format!("{err:#}")),
    };
    Stage {
        name,
        ok,
        detail,
        took: started.elapsed(),
    }
}

fn counted(name: &'static str, total: &mut Counts, f: impl FnOnce() -> Result<Counts>) -> Stage {
    let mut counts = Counts::default();
    let stage = timed(name, || {
        counts = f()?;
        if counts.passed + counts.skipped == 0 {
            bail!("no test ran");
        }
        let line = format!(
            "{} passed, {} failed, {} skipped, {} ignored",
            counts.passed, counts.failed, counts.skipped, counts.ignored
        );
        if counts.failed > 0 {
            bail!(line);
        }
        Ok(line)
    });
    total.add(counts);
    stage
}

/// Each fuzz target counts as one test: passed, or failed with the input that crashed it.
fn fuzz_stage(secs: u64, total: &mut Counts) -> Stage {
    let mut counts = Counts::default();
    let stage = timed("fuzz", || {
        let summary = crate::fuzz::run(secs, &[])?;
        counts = summary.counts;
        if counts.failed > 0 {
            bail!(summary.detail);
        }
        Ok(summary.detail)
    });
    total.add(counts);
    stage
}

fn clippy() -> Result<String> {
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel crate is no_std: lint it for the host as aya-template does, with panic=abort,
    // in its own target dir so the flags do not invalidate the main build.
    let target_dir = crate::build::target_dir().join("clippy-ebpf");
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "guard-ebpf",
                "--target-dir",
            ])
            .arg(&target_dir)
            .args(["--", "-D", "warnings"])
            .env("RUSTFLAGS", "-C panic=abort")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(cmd::workspace_root()),
    )?;
    Ok("ok (host crates and guard-ebpf)".into())
}

fn cargo_test(args: &[&str]) -> Result<Counts> {
    let mut scanner = Scanner::default();
    // The L7 tests find their Python peers here (they fall back to the same default path).
    let mut command = cmd::cargo();
    command.env("PROXYGUARD_VENV", setup::venv_dir());
    command.env("PROXYGUARD_AGL03_VENV", crate::peers::agl03_venv_dir());
    command.env("PROXYGUARD_AGL10_VENV", crate::peers::agl10_venv_dir());
    let success = cmd::stream(command.arg("test").args(args), |line| scanner.scan(line))?;
    let counts = scanner.counts();
    if !success && counts.failed == 0 {
        bail!("cargo test failed before reporting results");
    }
    Ok(counts)
}

fn unit_tests() -> Result<Counts> {
    cargo_test(&["-p", "proxyguard", "-p", "guard-common", "-p", "xtask"])
}

fn native_privileged_tests() -> Result<Counts> {
    if !nix_is_root() {
        bail!("the privileged tests need root (CI runs as root); re-run as root, or rely on the VM stage");
    }
    // Every binary runs even after one fails, so a failure never hides the ones after it.
    cargo_test(&[
        "-p",
        "proxyguard-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ])
}

fn vm_tests() -> Result<Counts> {
    let summary = vm::run(None, Duration::from_secs(1200), &vm::Selection::default())?;
    let counts = summary.counts;
    if let Some(problem) = &summary.problem {
        bail!("{problem}");
    }
    if !summary.failed_binaries.is_empty() {
        bail!("failed binaries: {}", summary.failed_binaries.join(", "));
    }
    Ok(counts)
}

/// The operator's journey on Debian 12 with systemd as PID 1; each step counts as one test.
fn system_vm_journey() -> Result<Counts> {
    let packages = crate::system_vm::packages()?;
    let summary = crate::system_vm::run(&packages, Duration::from_secs(1500))?;
    if let Some(problem) = &summary.problem {
        bail!("{problem}");
    }
    Ok(summary.counts)
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}
