//! Ctrl-C (SIGINT) and SIGTERM during a benchmark: instead of dying with namespaces, pins and
//! children left behind, the run notices, stops at the next check, and its guards tear down.
//!
//! The signals are blocked in the calling thread before any other thread starts (so every thread
//! inherits the mask) and taken by one watcher thread with sigwait. Child processes start with
//! an empty mask (std resets it), so they still react to Ctrl-C themselves.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WATCHING: AtomicBool = AtomicBool::new(false);
static FINISHED: AtomicBool = AtomicBool::new(false);

fn set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Starts watching (once per process). Call before spawning any thread.
pub fn watch() -> Result<()> {
    FINISHED.store(false, Ordering::SeqCst);
    INTERRUPTED.store(false, Ordering::SeqCst);
    if WATCHING.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set()), None)?;
    std::thread::spawn(|| loop {
        if let Ok(signal) = set().wait() {
            eprintln!("bench-kernel: {signal:?}: stopping and tearing down");
            INTERRUPTED.store(true, Ordering::SeqCst);
            if FINISHED.load(Ordering::SeqCst) {
                // No benchmark is running to notice: behave like the default action.
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// The benchmark is over; a later signal ends the process as usual.
pub fn finished() {
    FINISHED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once interrupted, so `?` unwinds through the guards.
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `duration`, waking early (with an error) when interrupted.
pub fn sleep(duration: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + duration;
    while std::time::Instant::now() < deadline {
        check()?;
        std::thread::sleep(
            deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(std::time::Duration::from_millis(100)),
        );
    }
    check()
}
