//! Knowing the guarded service: its cgroups, found from the `[guarded]` config and recomputed on
//! a short timer, so a restart (which gives the service a new cgroup) is followed within a tick.

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::config::GuardedSection;

/// A cgroup v2 directory of the guarded service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GuardedCgroup {
    /// The directory's inode number: what `bpf_get_current_cgroup_id` returns.
    pub id: u64,
    /// Depth below the hierarchy's root (the root is 0).
    pub level: u32,
    pub path: PathBuf,
}

/// The service's cgroups right now. Empty when nothing is configured or it is not running.
pub fn cgroups(section: &GuardedSection, root: &Path) -> Vec<GuardedCgroup> {
    let mut dirs = BTreeSet::new();
    if let Some(unit) = &section.unit {
        dirs.extend(find_unit(root, unit));
    }
    if let Some(cgroup) = &section.cgroup {
        dirs.insert(root.join(cgroup.trim_start_matches('/')));
    }
    if let Some(exe) = &section.exe {
        dirs.extend(
            cgroups_running(Path::new(exe))
                .into_iter()
                .map(|rel| root.join(rel.trim_start_matches('/'))),
        );
    }
    dirs.into_iter()
        .filter_map(|dir| {
            let meta = std::fs::metadata(&dir).ok().filter(|m| m.is_dir())?;
            let level = dir.strip_prefix(root).ok()?.components().count() as u32;
            Some(GuardedCgroup {
                id: meta.ino(),
                level,
                path: dir,
            })
        })
        .collect()
}

/// A unit's cgroup: systemd puts system units under system.slice; anything else is found by a
/// bounded walk (user and custom slices).
fn find_unit(root: &Path, unit: &str) -> Option<PathBuf> {
    let usual = root.join("system.slice").join(unit);
    if usual.is_dir() {
        return Some(usual);
    }
    walk_for(root, unit, 4)
}

fn walk_for(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == name {
            return Some(entry.path());
        }
        subdirs.push(entry.path());
    }
    subdirs
        .into_iter()
        .find_map(|sub| walk_for(&sub, name, depth - 1))
}

/// cgroup v2 paths (relative to the root) of every process whose executable is `exe`.
fn cgroups_running(exe: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(processes) = procfs::process::all_processes() else {
        return out;
    };
    for process in processes.flatten() {
        if process.exe().ok().as_deref() != Some(exe) {
            continue;
        }
        if let Ok(groups) = process.cgroups() {
            out.extend(
                groups
                    .0
                    .into_iter()
                    .filter(|g| g.hierarchy == 0)
                    .map(|g| g.pathname),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_units_and_paths_with_their_levels() {
        let root = tempfile::tempdir().unwrap();
        let unit = root.path().join("system.slice/litellm.service");
        let nested = root.path().join("user.slice/user-1000.slice/app.service");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::create_dir_all(&nested).unwrap();

        let by_unit = GuardedSection {
            unit: Some("litellm.service".into()),
            ..Default::default()
        };
        let found = cgroups(&by_unit, root.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, unit);
        assert_eq!(found[0].level, 2);
        assert_eq!(found[0].id, std::fs::metadata(&unit).unwrap().ino());

        let walked = GuardedSection {
            unit: Some("app.service".into()),
            ..Default::default()
        };
        assert_eq!(cgroups(&walked, root.path())[0].level, 3);

        let by_path = GuardedSection {
            cgroup: Some("/user.slice".into()),
            ..Default::default()
        };
        assert_eq!(cgroups(&by_path, root.path())[0].level, 1);

        let missing = GuardedSection {
            unit: Some("gone.service".into()),
            ..Default::default()
        };
        assert!(cgroups(&missing, root.path()).is_empty());
    }
}
