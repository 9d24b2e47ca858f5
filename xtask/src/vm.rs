//! `cargo xtask vm-test`: boots Debian's kernel under QEMU (TCG, BPF LSM on) with an initramfs of
//! the privileged tests, streams the serial console, and judges the run.

use std::{
    path::Path,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    build,
    counts::{Counts, Scanner},
    initramfs::{self, BIN_MARK, END_SENTINEL},
    qemu, setup,
};

/// LSM order as Debian's, plus `bpf`, so BPF LSM programs load in the guest.
const KERNEL_ARGS: &str =
    "console=ttyS0 quiet panic=-1 lsm=lockdown,capability,landlock,yama,apparmor,bpf";

#[derive(Debug)]
pub struct Summary {
    pub counts: Counts,
    /// Test binaries that exited non-zero, with their status.
    pub failed_binaries: Vec<String>,
    pub binaries_run: usize,
    pub problem: Option<String>,
    pub boot_to_result: Duration,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.failed_binaries.is_empty() && self.counts.failed == 0
    }

    pub fn into_result(self) -> Result<()> {
        if self.ok() {
            Ok(())
        } else {
            bail!("vm-test failed")
        }
    }
}

/// What a VM run boots: which test binaries, and whether their benchmarks run too.
#[derive(Default)]
pub struct Selection<'a> {
    /// Only these test binaries; every privileged one when empty.
    pub only: &'a [String],
    /// The tests' timed loops at full length (`PROXYGUARD_BENCHES=1` in the guest), for the
    /// figures this host's kernel cannot give (the open probe tier's cost, say). Otherwise they
    /// run one short round: enough for their assertions, not for a figure.
    pub benches: bool,
}

/// Boots the VM with the privileged test binaries `selection` names.
pub fn run(
    kernel_override: Option<&Path>,
    timeout: Duration,
    selection: &Selection<'_>,
) -> Result<Summary> {
    let only = selection.only;
    setup::run()?;
    // The test binaries, and (below) the release proxyguard they run in the guest
    // (`PROXYGUARD_BIN`): no debug build of the workspace is packed.
    let mut tests = build::privileged_test_binaries()?;
    if !only.is_empty() {
        if let Some(unknown) = only
            .iter()
            .find(|name| !tests.iter().any(|(t, _)| t == *name))
        {
            let known: Vec<&str> = tests.iter().map(|(t, _)| t.as_str()).collect();
            bail!("vm-test --only {unknown}: no such test binary (there are: {known:?})");
        }
        tests.retain(|(name, _)| only.contains(name));
    }
    let cached = setup::vm_kernel()?;
    let vmlinuz = kernel_override.unwrap_or(&cached.vmlinuz);
    if !vmlinuz.is_file() {
        bail!("kernel image {} does not exist", vmlinuz.display());
    }
    let dir = build::target_dir().join("vm");
    std::fs::create_dir_all(&dir)?;
    let initrd = initramfs::build(
        &dir,
        &initramfs::Contents {
            // The binary the package ships, not the debug build: under TCG every daemon start,
            // reload and `status` the tests make runs several times slower in a debug build,
            // and the native stage has already run the tests on the debug one.
            proxyguard: &build::release_binary()?,
            tests: &tests,
            modules: &cached.modules,
            benches: selection.benches,
        },
    )?;
    let size_mib = std::fs::metadata(&initrd)?.len() / (1 << 20);
    println!(
        "vm-test: booting {} with {} test binaries ({size_mib} MiB initramfs)",
        vmlinuz.display(),
        tests.len()
    );
    let summary = boot(vmlinuz, &initrd, tests.len(), timeout)?;
    print_summary(&summary);
    Ok(summary)
}

fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    expected_binaries: usize,
    timeout: Duration,
) -> Result<Summary> {
    let started = Instant::now();
    let (mut child, rx) = qemu::spawn(
        qemu::command()
            .arg("-kernel")
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", KERNEL_ARGS]),
    )?;

    let mut summary = Summary {
        counts: Counts::default(),
        failed_binaries: Vec::new(),
        binaries_run: 0,
        problem: None,
        boot_to_result: Duration::ZERO,
    };
    let deadline = started + timeout;
    let mut ended = false;
    let mut scanner = Scanner::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                println!("{line}");
                scanner.scan(line);
                if let Some(rest) = line.strip_prefix(BIN_MARK) {
                    summary.binaries_run += 1;
                    if !rest.trim_end().ends_with("rc=0") {
                        summary.failed_binaries.push(rest.trim().to_owned());
                    }
                } else if line.trim() == END_SENTINEL {
                    summary.boot_to_result = started.elapsed();
                    ended = true;
                } else if line.contains("Kernel panic") {
                    summary.problem = Some(format!("kernel panic: {line}"));
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                summary.problem = Some(format!("timed out after {}s", timeout.as_secs()));
                break;
            }
            // QEMU exited (poweroff) and its output is drained.
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if summary.problem.is_some() {
        let _ = child.kill();
    }
    let _ = child.wait();
    summary.counts = scanner.counts();
    if summary.problem.is_none() && !ended {
        summary.problem = Some("the guest stopped before the end sentinel".into());
    }
    if summary.problem.is_none() && summary.binaries_run != expected_binaries {
        summary.problem = Some(format!(
            "{} of {expected_binaries} test binaries reported",
            summary.binaries_run
        ));
    }
    Ok(summary)
}

fn print_summary(summary: &Summary) {
    for failed in &summary.failed_binaries {
        println!("vm-test: test binary failed: {failed}");
    }
    if let Some(problem) = &summary.problem {
        println!("vm-test: {problem}");
    }
    println!(
        "vm-test: boot to result {:.1}s; {} binaries; {} ignored",
        summary.boot_to_result.as_secs_f64(),
        summary.binaries_run,
        summary.counts.ignored
    );
    println!(
        "vm-test: {} passed, {} failed, {} skipped",
        summary.counts.passed, summary.counts.failed, summary.counts.skipped
    );
}
