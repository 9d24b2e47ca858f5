//! Harness for proxyguard's end-to-end tests: the real binary, started and always stopped by RAII
//! guards, plus the rules for privileged tests (root required; features this host refuses are
//! skipped here with the reason, and must work in the VM).

pub mod agl;
pub mod bpf;
pub mod bpf_map;
pub mod cgroup;
pub mod corpus;
pub mod daemon;
pub mod faulty_upstream;
pub mod guarded;
pub mod https_provider;
pub mod l7;
pub mod net;
pub mod netns;
pub mod open_files;
pub mod otlp;
pub mod recorder;
pub mod redis;
pub mod syn_frames;
pub mod upstream;
pub mod wire;

use std::{io::Write, path::PathBuf};

pub use daemon::Daemon;

/// The `proxyguard` binary: `$PROXYGUARD_BIN` (set in the VM), else the one cargo built next to
/// the test binary (`target/debug/proxyguard`).
pub fn proxyguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PROXYGUARD_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> → target/debug/proxyguard
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("proxyguard");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p proxyguard`, or run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// True inside the VM that `cargo xtask vm-test` boots.
pub fn in_vm() -> bool {
    std::env::var_os("PROXYGUARD_IN_VM").is_some()
}

/// Fails the test unless it runs as root: privileged tests load eBPF programs.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads eBPF programs and must run as root (cargo xtask test does; so does the VM)"
    );
}

/// Whether a test that needs `feature` can go on. Where the feature is missing it prints why and
/// returns false natively; inside the VM, where every feature must be present, it fails the test.
///
/// A skip prints a marker line, `SKIPPED: <test>: <why>; covered by <where>`, which `cargo xtask
/// test` counts as skipped instead of passed (xtask/src/counts.rs). `<test>` is libtest's name for
/// the running test (its thread's name), so the counter can match the marker to the outcome.
pub fn feature_or_skip(test: &str, feature: &str, available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_vm(),
        "{test}: {feature} must be available in the VM, but: {why}"
    );
    let current = std::thread::current();
    let name = current.name().unwrap_or(test);
    // Written to stdout past libtest's output capture, on a line of its own (libtest has printed
    // `test NAME ... ` and waits for the outcome): the marker then always comes before the
    // test's outcome and its binary's summary on the same stream.
    let _ = write!(
        std::io::stdout(),
        "\n{}",
        skip_marker(
            name,
            &format!("needs {feature}, which this host refuses ({why})")
        )
    );
    let _ = std::io::stdout().flush();
    false
}

/// The skip marker line xtask's counter reads (its prefix is `xtask::counts::SKIP_MARK`).
fn skip_marker(name: &str, why: &str) -> String {
    // The counter splits the name off at the first ": "; a reason on one line keeps the marker one.
    let why = why.replace('\n', " ");
    format!("SKIPPED: {name}: {why}; covered by the VM stage (cargo xtask vm-test)\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_skip_marker_names_the_test_why_and_where() {
        assert_eq!(
            super::skip_marker("kernel::lsm", "needs BPF LSM (not in\nlsm=)"),
            "SKIPPED: kernel::lsm: needs BPF LSM (not in lsm=); covered by the VM stage (cargo xtask vm-test)\n"
        );
    }
}
