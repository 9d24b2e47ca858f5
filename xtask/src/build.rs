//! Cargo builds that other tasks share, and where their outputs are (the binary, the eBPF object).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cmd;

pub fn workspace(release: bool) -> Result<()> {
    let mut build = cmd::cargo();
    build.arg("build");
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

/// Builds the release `proxyguard` alone (not the test crates), as the package ships it, and
/// returns `target/release/proxyguard`. After `cargo xtask deb` it is already built.
pub fn release_binary() -> Result<PathBuf> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    Ok(target_dir().join("release/proxyguard"))
}

/// `target/debug/proxyguard` (built by [`workspace`]).
pub fn proxyguard_binary() -> PathBuf {
    target_dir().join("debug/proxyguard")
}

/// The eBPF object that `guard/build.rs` embeds into proxyguard, for the build profile whose
/// directory is `profile_dir` (`target/release`, `target/debug`): the newest one under its
/// OUT_DIRs.
pub fn ebpf_object(profile_dir: &Path) -> Result<PathBuf> {
    let build = profile_dir.join("build");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(&build)
        .with_context(|| format!("cannot read {}", build.display()))?
        .flatten()
    {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("proxyguard-")
        {
            continue;
        }
        let candidate = entry.path().join("out/proxyguard");
        if let Ok(modified) = candidate.metadata().and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                newest = Some((modified, candidate));
            }
        }
    }
    newest
        .map(|(_, path)| path)
        .with_context(|| format!("no eBPF object under {}/proxyguard-*/out", build.display()))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target"))
}

/// Privileged tests (they load eBPF programs, so they run as root natively and again in the VM)
/// are the integration-test targets whose names start with this. Other end-to-end tests (the L7
/// proxy against LiteLLM, say) need peers the VM does not carry, and run natively only.
pub const PRIVILEGED_TEST_PREFIX: &str = "kernel_";

/// Builds the privileged test binaries of `proxyguard-tests` and returns (name, path) for each.
pub fn privileged_test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let out = cmd::output(cmd::cargo().args([
        "test",
        "-p",
        "proxyguard-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]))?;
    let mut binaries = Vec::new();
    for line in out.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Integration-test targets only; the harness library's own (empty) unit-test binary is skipped.
        let is_integration_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if message["reason"] != "compiler-artifact"
            || message["profile"]["test"] != true
            || !is_integration_test
        {
            continue;
        }
        if let (Some(name), Some(path)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            if name.starts_with(PRIVILEGED_TEST_PREFIX) {
                binaries.push((name.to_owned(), PathBuf::from(path)));
            }
        }
    }
    binaries.sort();
    binaries.dedup();
    if binaries.is_empty() {
        anyhow::bail!("cargo built no test binaries for proxyguard-tests");
    }
    Ok(binaries)
}
