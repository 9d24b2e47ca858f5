//! The guarded service's live processes: every tgid in its cgroups (`cgroup.procs`, sub-cgroups
//! included, so workers count), or every process running its executable, and each one's threads.
//! Re-read on the daemon's 250 ms tick, so restarts and new workers are followed within it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{config::GuardedSection, guarded};

/// Deepest sub-cgroup searched below a guarded cgroup.
const MAX_DEPTH: u32 = 8;

/// The guarded service's tgids right now. `root` is the cgroup v2 mount, when there is one.
pub fn tgids(section: &GuardedSection, root: Option<&Path>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if let Some(exe) = &section.exe {
        out.extend(running(&[PathBuf::from(exe)]));
        return out;
    }
    if let Some(root) = root {
        for cgroup in guarded::cgroups(section, root) {
            procs_below(&cgroup.path, MAX_DEPTH, &mut out);
        }
    }
    out
}

/// Every tgid in `dir` and its sub-cgroups.
fn procs_below(dir: &Path, depth: u32, out: &mut BTreeSet<u32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            procs_below(&entry.path(), depth - 1, out);
        }
    }
}

/// Task id → tgid for every thread of `tgids`: `/proc/<tid>/environ` names a thread's process too.
pub fn tasks(tgids: &BTreeSet<u32>) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for &tgid in tgids {
        out.insert(tgid, tgid);
        let Ok(process) = procfs::process::Process::new(tgid as i32) else {
            continue;
        };
        if let Ok(tasks) = process.tasks() {
            for task in tasks.flatten() {
                out.insert(task.tid as u32, tgid);
            }
        }
    }
    out
}

/// Tgids of every process whose executable is one of `exes`.
pub fn running(exes: &[PathBuf]) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    if exes.is_empty() {
        return out;
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return out;
    };
    for process in processes.flatten() {
        if process.exe().is_ok_and(|exe| exes.contains(&exe)) {
            out.insert(process.pid as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_by_exe_with_its_threads() {
        let exe = std::env::current_exe().unwrap();
        let me = std::process::id();
        let section = GuardedSection {
            exe: Some(exe.display().to_string()),
            ..Default::default()
        };
        let found = tgids(&section, None);
        assert!(found.contains(&me), "{found:?}");
        let handle =
            std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(300)));
        let tasks = tasks(&BTreeSet::from([me]));
        assert!(tasks.len() >= 2, "{tasks:?}");
        assert!(tasks.values().all(|tgid| *tgid == me));
        handle.join().unwrap();
    }
}
