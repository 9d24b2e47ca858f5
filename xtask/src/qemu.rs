//! QEMU under TCG, as both VM stages boot it: the machine's shape, and its serial console as a
//! channel of lines that a stage reads with a deadline.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
};

use anyhow::{Context, Result};

/// `qemu-system-x86_64` with the machine both stages use (TCG, 2 CPUs, 2 GiB, serial console on
/// stdout, no reboot); the caller adds the kernel, disks and command line.
pub fn command() -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot"]);
    qemu
}

/// Starts `qemu` and returns it with its console lines, read on a thread of their own; the
/// channel closes when QEMU exits and its output is drained.
pub fn spawn(qemu: &mut Command) -> Result<(Child, Receiver<String>)> {
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start qemu-system-x86_64; run `cargo xtask setup` (it installs qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((child, rx))
}
