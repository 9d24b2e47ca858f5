//! Ctrl-C (SIGINT) and SIGTERM during a benchmark: instead of dying with namespaces, pins and
//! children left behind, the run notices, stops at its next check, and its guards tear down.
//!
//! A watcher thread takes both signals through tokio's handlers (no unsafe code here, and no
//! blocked signal mask for child processes to inherit: the daemon must still see SIGTERM).
//! Children in the terminal's process group get Ctrl-C themselves and stop on their own.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use tokio::signal::unix::{signal, SignalKind};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WATCHING: AtomicBool = AtomicBool::new(false);
static FINISHED: AtomicBool = AtomicBool::new(false);

/// Starts watching (the watcher lives for the rest of the process).
pub fn watch() -> Result<()> {
    FINISHED.store(false, Ordering::SeqCst);
    INTERRUPTED.store(false, Ordering::SeqCst);
    if WATCHING.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => return drop(ready_tx.send(Err(err))),
        };
        runtime.block_on(async move {
            let (mut int, mut term) = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(int), Ok(term)) => (int, term),
                (Err(err), _) | (_, Err(err)) => return drop(ready_tx.send(Err(err))),
            };
            let _ = ready_tx.send(Ok(()));
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                if FINISHED.load(Ordering::SeqCst) {
                    // No benchmark is running to notice: end the process as the default would.
                    std::process::exit(130);
                }
                eprintln!("bench-kernel: interrupted; stopping and tearing down");
                INTERRUPTED.store(true, Ordering::SeqCst);
            }
        });
    });
    ready_rx
        .recv()
        .map_err(|_| anyhow!("the signal watcher died"))??;
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
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}
