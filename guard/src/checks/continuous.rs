//! The daemon's side of the audits: the full set every `[watch] audit_interval_secs`, and each
//! new or changed file in the guarded process's temp directories as inotify reports it (checked,
//! and in fix mode fixed, within a second). Findings become audit events, each reported once
//! while it lasts, and a summary that `proxyguard status` shows.
//!
//! Fix mode changes only files proven to be the service's (`ownership`): here the kernel's
//! record of the files its tasks created counts too. A new file not proven yet is looked at once
//! more after [`RETRY_AFTER`], as the kernel's report of its creation may trail inotify's.
//!
//! All of it (the `/proc` reads, the environ reads, the `fchmod`s) runs on a thread of its own,
//! never on the request workers. inotify's notices reach it through a bounded channel: when the
//! audit falls behind, notices are dropped, counted (`proxyguard_inotify_overflow_total`), and a
//! full audit is run at the next tick, so a dropped notice is never a missed file.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::{created, ownership::History, ownership::Ownership, tempfiles, Finding};
use crate::{
    audit,
    config::{watch::TempFiles, Config},
    guarded_pids,
    kernel::cgroup,
};

/// What `proxyguard status` shows of the audits.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    /// Findings open at the last full audit, by check.
    pub open: BTreeMap<&'static str, u64>,
    /// Files set to 0600 since the daemon started.
    pub fixed: u64,
    pub audits: u64,
}

static SUMMARY: Mutex<Option<Summary>> = Mutex::new(None);

/// How long an unproven new file waits for the kernel's report of its creation.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// New files waiting for that at most; past it, a file is reported at once (the next full
/// audit judges it again).
const MAX_PENDING: usize = 1024;

/// inotify notices waiting for the audit; past it they are dropped and a full audit is due.
const NOTICES: usize = 4096;

/// inotify notices dropped since start.
pub fn overflows() -> &'static Counter {
    static OVERFLOWS: OnceLock<Counter> = OnceLock::new();
    OVERFLOWS.get_or_init(Counter::default)
}

pub fn summary() -> Summary {
    SUMMARY
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

fn update(f: impl FnOnce(&mut Summary)) {
    let mut guard = SUMMARY.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Summary::default));
}

/// Runs until the config channel closes, on a thread and runtime of its own: whatever runtime
/// awaits this only waits for it to end.
pub async fn run(config: watch::Receiver<Config>) {
    let (ended, end) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("audit-watch".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(watch_loop(config)),
                Err(err) => tracing::error!("cannot start the continuous audit: {err}"),
            }
            let _ = ended.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = end.await;
        }
        Err(err) => tracing::error!("cannot start the continuous audit's thread: {err}"),
    }
}

async fn watch_loop(mut config: watch::Receiver<Config>) {
    let (tx, mut files) = mpsc::channel::<PathBuf>(NOTICES);
    let rescan = Arc::new(AtomicBool::new(false));
    let overflowed = rescan.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_)) {
            for path in event.paths {
                notice(&tx, &overflowed, path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(err) => {
            tracing::warn!(
                "inotify unavailable ({err}); temp files are checked only on the audit interval"
            );
            None
        }
    };
    let root = cgroup::cgroup2_root().ok();
    // Watched directory (`/proc/<pid>/root/...`) → that pid, its uid, and the directory as the
    // service names it.
    let mut watched: BTreeMap<PathBuf, (u32, u32, PathBuf)> = BTreeMap::new();
    let mut pids = BTreeSet::new();
    let mut reported = BTreeSet::new();
    let mut pending: Vec<(Instant, PathBuf)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_audit: Option<Instant> = None;
    loop {
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                last_audit = None;
            }
            Some(path) = files.recv() => {
                let cfg = config.borrow().clone();
                if let Some(finding) = on_file(&cfg, &watched, &path, &pids) {
                    if awaits_proof(&cfg, &finding) && pending.len() < MAX_PENDING {
                        // Create, write and chmod arrive as several events: one retry each file.
                        if !pending.iter().any(|(_, p)| *p == path) {
                            pending.push((Instant::now() + RETRY_AFTER, path));
                        }
                    } else {
                        emit(&finding, &mut reported);
                    }
                }
            }
            _ = tick.tick() => {
                let cfg = config.borrow().clone();
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(at, _)| *at <= now);
                pending = later;
                for (_, path) in due {
                    if let Some(finding) = on_file(&cfg, &watched, &path, &pids) {
                        emit(&finding, &mut reported);
                    }
                }
                // Notices were dropped: the full audit looks at every file they could have named.
                if rescan.swap(false, Ordering::Relaxed) {
                    last_audit = None;
                }
                if !cfg.watch.enabled || !cfg.guarded.is_set() {
                    continue;
                }
                let now = guarded_pids::tgids(&cfg.guarded, root.as_deref());
                if now != pids || last_audit.is_none() {
                    pids = now;
                    if let Some(watcher) = watcher.as_mut() {
                        rewatch(watcher, &cfg, &pids, &mut watched);
                    }
                }
                let due = last_audit.is_none_or(|at| at.elapsed() >= Duration::from_secs(cfg.watch.audit_interval_secs));
                if due && !pids.is_empty() {
                    last_audit = Some(Instant::now());
                    let fix = cfg.watch.temp_files == TempFiles::Fix;
                    let audit_pids = pids.clone();
                    let findings = tokio::task::spawn_blocking(move || super::run(&cfg, &audit_pids, fix, History::Kernel))
                        .await
                        .unwrap_or_default();
                    report_audit(&findings, &mut reported);
                }
            }
        }
    }
}

/// Hands one inotify notice to the audit, or counts it dropped and asks for a full audit. Runs
/// on notify's thread, which must not wait for the audit.
fn notice(tx: &mpsc::Sender<PathBuf>, overflowed: &AtomicBool, path: PathBuf) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(path) {
        overflows().inc();
        overflowed.store(true, Ordering::Relaxed);
    }
}

/// Watches each guarded process's temp directories, through its root (its PrivateTmp).
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    config: &Config,
    pids: &BTreeSet<u32>,
    watched: &mut BTreeMap<PathBuf, (u32, u32, PathBuf)>,
) {
    use std::os::unix::fs::MetadataExt;
    let mut wanted = BTreeMap::new();
    let mut inodes = BTreeSet::new();
    for &pid in pids {
        let Ok(process) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        let (Ok(uid), Ok(environ)) = (process.uid(), process.environ()) else {
            continue;
        };
        for dir in tempfiles::dirs(&environ, &config.watch.temp_dirs) {
            // Through the process's root, so inotify lands on its PrivateTmp when it has one.
            let seen = PathBuf::from(format!("/proc/{pid}/root"))
                .join(dir.strip_prefix("/").unwrap_or(&dir));
            // The same directory seen through several workers' roots is watched once.
            let Ok(meta) = std::fs::metadata(&seen) else {
                continue;
            };
            if meta.is_dir() && inodes.insert((meta.dev(), meta.ino())) {
                wanted.insert(seen, (pid, uid, dir));
            }
        }
    }
    for dir in watched.keys().filter(|d| !wanted.contains_key(*d)) {
        let _ = watcher.unwatch(dir);
    }
    for dir in wanted.keys().filter(|d| !watched.contains_key(*d)) {
        if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), "cannot watch a temp directory: {err}");
        }
    }
    *watched = wanted;
}

/// One new or changed file in a watched directory, judged against every process of the
/// service (`pids`).
fn on_file(
    config: &Config,
    watched: &BTreeMap<PathBuf, (u32, u32, PathBuf)>,
    path: &std::path::Path,
    pids: &BTreeSet<u32>,
) -> Option<Finding> {
    let (dir, name) = (path.parent()?, path.file_name()?);
    let (pid, uid, service_dir) = watched.get(dir)?;
    let fix = config.watch.temp_files == TempFiles::Fix;
    tempfiles::check_one(
        *pid,
        *uid,
        &service_dir.join(name),
        fix,
        pids,
        History::Kernel,
    )
}

/// Whether a new file's finding should wait for the kernel's report of its creation.
fn awaits_proof(config: &Config, finding: &Finding) -> bool {
    config.watch.temp_files == TempFiles::Fix
        && finding.ownership == Some(Ownership::Unproven)
        && created::active()
}

fn report_audit(findings: &[Finding], reported: &mut BTreeSet<(String, u32, String)>) {
    let mut open: BTreeMap<&'static str, u64> = BTreeMap::new();
    for finding in findings {
        if !finding.fixed {
            *open.entry(finding.check).or_default() += 1;
        }
        emit(finding, reported);
    }
    // A finding that went away may be reported again if it comes back.
    let now: BTreeSet<_> = findings
        .iter()
        .map(|f| (f.check.to_owned(), f.pid, f.subject.clone()))
        .collect();
    reported.retain(|key| now.contains(key));
    update(|s| {
        s.open = open;
        s.audits += 1;
    });
}

fn emit(finding: &Finding, reported: &mut BTreeSet<(String, u32, String)>) {
    if finding.fixed {
        update(|s| s.fixed += 1);
        audit::emit(
            "temp_file_fixed",
            audit::fields(json!({
                "severity": finding.severity.as_str(),
                "pid": finding.pid,
                "path": finding.subject,
                "detail": finding.detail,
            })),
        );
        return;
    }
    if !reported.insert((
        finding.check.to_owned(),
        finding.pid,
        finding.subject.clone(),
    )) {
        return;
    }
    audit::emit(
        "finding",
        audit::fields(json!({
            "severity": finding.severity.as_str(),
            "check": finding.check,
            "pid": finding.pid,
            "subject": finding.subject,
            "detail": finding.detail,
        })),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_past_the_bound_is_counted_and_asks_for_a_full_audit() {
        let (tx, mut rx) = mpsc::channel(2);
        let rescan = AtomicBool::new(false);
        let before = overflows().get();
        for n in 0..5 {
            notice(&tx, &rescan, PathBuf::from(format!("/tmp/f{n}")));
        }
        assert_eq!(overflows().get() - before, 3);
        assert!(rescan.load(Ordering::Relaxed));
        assert_eq!(rx.try_recv().unwrap(), PathBuf::from("/tmp/f0"));
        assert_eq!(rx.try_recv().unwrap(), PathBuf::from("/tmp/f1"));
        assert!(rx.try_recv().is_err());
    }
}
