//! Builds the kernel programs (`guard-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, so `cargo build` yields one binary with the eBPF object embedded.
//!
//! This is the nested build aya-build 0.2 runs (`rustup run nightly cargo build --target
//! bpfel-unknown-none -Z build-std=core`, same flags, same target directory), with its output
//! captured. aya-build forwards every line of it as a `cargo:warning`, which cargo prints as a
//! screen of `warning: proxyguard@…: Compiling …` on every build, fresh or not. Here a success
//! says one line on the terminal while it runs and leaves nothing in cargo's output but the kernel
//! crate's own compiler warnings; a failure prints everything the nested build printed.

use std::{
    env,
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{anyhow, bail, Context};

/// The kernel crate, and its one binary: the object `guard/src/kernel/mod.rs` embeds.
const PACKAGE: &str = "guard-ebpf";
const TOOLCHAIN: &str = "nightly";
const SKIP: &str = "AYA_BUILD_SKIP";

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-ebpf");
    // The kernel crate's binary is not a dependency cargo tracks; watch its sources, and
    // guard-common's, which it compiles too.
    println!("cargo:rerun-if-changed={root_dir}");
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-common/src")
    );
    // A stamp makes a differing object from the same sources (for the upgrade test); the kernel
    // crate reads it with option_env!, and the nested build below inherits it from here.
    println!("cargo:rerun-if-env-changed=PROXYGUARD_OBJECT_STAMP");
    println!("cargo:rerun-if-env-changed={SKIP}");
    if env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        println!("cargo:warning={SKIP} is set; the kernel programs are not built");
        return Ok(());
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let target = bpf_target()?;
    let arch = bpf_target_arch()?;
    let rustup = find_on_path("rustup");
    let tool = |program: &str| match &rustup {
        Some(rustup) => {
            let mut cmd = Command::new(rustup);
            cmd.args(["run", TOOLCHAIN, program]);
            cmd
        }
        None => Command::new(program),
    };
    if rustup.is_none() {
        println!("cargo:warning=rustup is not on PATH; building the kernel programs with the current toolchain");
    }

    let target_dir = out_dir.join("aya-build").join("target").join(PACKAGE);
    let mut cargo = tool("cargo");
    cargo.args([
        "build",
        "--package",
        PACKAGE,
        "--bins",
        "--message-format=json",
        "--release",
        "--target",
        &target,
    ]);
    if build_std(&mut tool("rustc")) {
        cargo.args(["-Z", "build-std=core"]);
    }
    cargo.arg("--target-dir").arg(&target_dir);
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }
    cargo.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler (stable, or a wrapper) must not leak into the nightly build.
    cargo
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");

    announce(&format!(
        "the kernel programs ({PACKAGE} for {target}, on {TOOLCHAIN})…"
    ));
    let output = cargo
        .output()
        .with_context(|| format!("cannot start {cargo:?}"))?;
    let report = Report::parse(&output);
    if !output.status.success() {
        for line in report.everything() {
            println!("cargo:warning={line}");
        }
        bail!("{cargo:?} failed ({}): its output is above", output.status);
    }
    for line in &report.warnings {
        println!("cargo:warning={line}");
    }
    if report.executables.is_empty() {
        bail!("{cargo:?} built no binary for {PACKAGE}");
    }
    for (name, path) in &report.executables {
        let dst = out_dir.join(name);
        std::fs::copy(path, &dst)
            .with_context(|| format!("cannot copy {} to {}", path.display(), dst.display()))?;
    }
    Ok(())
}

/// What the nested build printed: its artifacts, the kernel crate's rendered compiler messages
/// (warnings and errors), and every other line, in order.
struct Report {
    executables: Vec<(String, PathBuf)>,
    warnings: Vec<String>,
    lines: Vec<String>,
}

impl Report {
    fn parse(output: &Output) -> Report {
        let mut report = Report {
            executables: Vec::new(),
            warnings: Vec::new(),
            lines: Vec::new(),
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
                report.lines.push(line.to_owned());
                continue;
            };
            match message["reason"].as_str() {
                Some("compiler-artifact") => {
                    if let (Some(name), Some(path)) = (
                        message["target"]["name"].as_str(),
                        message["executable"].as_str(),
                    ) {
                        report.executables.push((name.to_owned(), path.into()));
                    }
                }
                Some("compiler-message") => {
                    if let Some(rendered) = message["message"]["rendered"].as_str() {
                        report.warnings.extend(rendered.lines().map(str::to_owned));
                    }
                }
                _ => {}
            }
        }
        report.lines.extend(
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .map(str::to_owned),
        );
        report
    }

    /// Compiler messages first (they hold the error), then cargo's own lines.
    fn everything(&self) -> impl Iterator<Item = &String> {
        self.warnings.iter().chain(&self.lines)
    }
}

/// One line on the terminal the build runs in, if it has one. Cargo shows a build script's output
/// only after the script ends, and replays `cargo:warning`s on every later build, so the line goes
/// to the terminal directly; a build without one (CI, a package build) stays silent.
fn announce(line: &str) {
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        // Over cargo's progress bar, the way cargo prints its own status lines.
        let _ = write!(tty, "\r\x1b[K{:>12} {line}\n", "Building");
    }
}

fn bpf_target() -> anyhow::Result<String> {
    match env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() {
        Ok("little") => Ok("bpfel-unknown-none".to_owned()),
        Ok("big") => Ok("bpfeb-unknown-none".to_owned()),
        other => Err(anyhow!("unsupported target endianness {other:?}")),
    }
}

/// The host architecture, as the kernel crate's `bpf_target_arch` cfg names it.
fn bpf_target_arch() -> anyhow::Result<String> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    Ok(if arch.starts_with("riscv64") {
        "riscv64".to_owned()
    } else {
        arch
    })
}

/// Whether `-Z build-std=core` is available: on a nightly compiler, unless `RUSTC_BOOTSTRAP`
/// says otherwise (as aya-build decides).
fn build_std(rustc: &mut Command) -> bool {
    match env::var("RUSTC_BOOTSTRAP").as_deref() {
        Ok("1") | Ok(PACKAGE) => return true,
        Ok("-1") => return false,
        _ => {}
    }
    rustc
        .arg("-V")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("-nightly"))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
