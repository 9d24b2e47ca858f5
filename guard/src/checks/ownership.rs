//! Whose file is it: the evidence fix mode needs before it changes a file. Owner alone is not
//! evidence, since many services run as root, and so do the tools whose files share /tmp with
//! them. A file is the guarded service's when one of its processes holds it open for writing,
//! when it lies in the service's private temp dir (its systemd PrivateTmp, or a mount only its
//! mount namespace has), or when the kernel saw one of its tasks create it (the daemon only).
//! Anything else is [`Ownership::Unproven`]: reported at most, never changed.
//!
//! Held open counts only for writing: a root service reading `/etc/passwd`, or a file another tool
//! left in /tmp, does not make that file its own; writing its log or its temp file does. Nor do
//! fds 0 to 2: stdin, stdout and stderr are what its launcher handed it (a shared log, say).

use std::{
    collections::{BTreeSet, HashMap},
    fs::Metadata,
    os::unix::fs::MetadataExt,
    path::Path,
};

use serde::Serialize;

use super::{
    created,
    private_tmp::{self, PrivateTmp},
};
use crate::{config::GuardedSection, guarded_pids, kernel::cgroup};

/// The proof that a file is the service's, or its absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "proof", rename_all = "snake_case")]
pub enum Ownership {
    /// Process `pid` of the service holds it open for writing.
    HeldOpen { pid: u32 },
    /// It is in the private temp dir of process `pid` of the service.
    PrivateTmp { pid: u32 },
    /// The kernel saw process `pid` of the service create it.
    CreatedByService { pid: u32 },
    /// None of the above: the same owner is all there is.
    Unproven,
}

impl Ownership {
    pub fn proven(self) -> bool {
        self != Ownership::Unproven
    }

    /// Why it counts as the service's (for a finding's detail).
    pub fn describe(self) -> String {
        match self {
            Ownership::HeldOpen { pid } => format!("held open for writing by pid {pid}"),
            Ownership::PrivateTmp { pid } => format!("in the private temp dir of pid {pid}"),
            Ownership::CreatedByService { pid } => format!("created by pid {pid}"),
            Ownership::Unproven => "not proven to be the service's".into(),
        }
    }
}

/// Whether the audit can consult a record of the files the service created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// `proxyguard check`: a one-shot has no record of what the service created before it ran,
    /// so only open files and private temp dirs prove ownership.
    None,
    /// The daemon: the kernel's record of files its guarded tasks created (`created`), when the
    /// created-files programs are attached.
    Kernel,
}

/// What is known of the service's processes, gathered once per audit.
#[derive(Debug)]
pub struct Evidence {
    /// `(dev, ino)` of every regular file a process of the service holds open for writing → that
    /// process.
    held: HashMap<(u64, u64), u32>,
    private: PrivateTmp,
    history: History,
}

impl Evidence {
    /// Reads the open files, mounts and units of `pids` (the service's processes). Open files
    /// count for every process of their systemd services too: a file a worker writes is the
    /// service's, whichever process the audit was pointed at.
    pub fn gather(pids: &BTreeSet<u32>, history: History) -> Evidence {
        let mut evidence = Evidence::empty(history);
        for pid in with_unit_peers(pids) {
            evidence
                .held
                .extend(held_open(pid).into_iter().map(|key| (key, pid)));
        }
        evidence.private = PrivateTmp::gather(pids);
        evidence
    }

    /// No evidence gathered (the kernel's record, when `history` has it, still counts).
    pub fn empty(history: History) -> Evidence {
        Evidence {
            held: HashMap::new(),
            private: PrivateTmp::default(),
            history,
        }
    }

    pub fn history(&self) -> History {
        self.history
    }

    /// Whose the file is. `path` is as process `pid` names it (walked through its root),
    /// `meta` the file's own metadata (not a symlink's target).
    pub fn of(&self, pid: u32, path: &Path, meta: &Metadata) -> Ownership {
        let key = (meta.dev(), meta.ino());
        if let Some(&holder) = self.held.get(&key) {
            return Ownership::HeldOpen { pid: holder };
        }
        if self.private.contains(pid, path) {
            return Ownership::PrivateTmp { pid };
        }
        if self.history == History::Kernel {
            if let Some(created) = created_by_service(meta) {
                return created;
            }
        }
        Ownership::Unproven
    }
}

/// `pids` and every process of the systemd services they belong to (sub-cgroups included).
fn with_unit_peers(pids: &BTreeSet<u32>) -> BTreeSet<u32> {
    let mut all = pids.clone();
    let root = cgroup::cgroup2_root().ok();
    let mut units = BTreeSet::new();
    for &pid in pids {
        if let Some((_, cgroup)) = private_tmp::unit_cgroup(pid) {
            units.insert(cgroup);
        }
    }
    for cgroup in units {
        let section = GuardedSection {
            cgroup: Some(cgroup),
            ..Default::default()
        };
        all.extend(guarded_pids::tgids(&section, root.as_deref()));
    }
    all
}

/// The daemon's record as proof, alone: cheap, so a new file is judged by it before the rest of
/// the evidence is gathered.
pub fn created_by_service(meta: &Metadata) -> Option<Ownership> {
    let record = created::lookup(meta.dev(), meta.ino())?;
    // A file born after the report is another file on a reused inode number.
    let same = meta.created().map_or(true, |born| born <= record.seen);
    same.then_some(Ownership::CreatedByService { pid: record.tgid })
}

/// `(dev, ino)` of the regular files process `pid` holds open for writing.
fn held_open(pid: u32) -> Vec<(u64, u64)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| {
            fd.file_name()
                .to_str()
                .and_then(|n| n.parse().ok())
                .is_some_and(|n| held_as_its_own(pid, n))
        })
        // Through the fd itself: a deleted or renamed file is still the one held.
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .filter(|meta| meta.file_type().is_file())
        .map(|meta| (meta.dev(), meta.ino()))
        .collect()
}

/// Whether process `pid`'s `fd` proves the file its own: open for writing (the access mode in its
/// fdinfo `flags:`), and not one of the stdio fds its launcher set up.
pub fn held_as_its_own(pid: u32, fd: i32) -> bool {
    if fd <= 2 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test process: the file it holds open for writing is proven; one it only reads, or
    /// merely owns, is not; and without a history nothing is "created by" it.
    #[test]
    fn a_file_open_for_writing_is_proven_and_a_read_or_owned_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let held_path = dir.path().join("held");
        let held = std::fs::File::create(&held_path).unwrap();
        let read_path = dir.path().join("read");
        std::fs::write(&read_path, "").unwrap();
        let read = std::fs::File::open(&read_path).unwrap();
        let owned = dir.path().join("owned");
        std::fs::write(&owned, "").unwrap();
        let me = std::process::id();
        let evidence = Evidence::gather(&BTreeSet::from([me]), History::None);
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(
            evidence.of(me, &held_path, &meta(&held_path)),
            Ownership::HeldOpen { pid: me }
        );
        assert_eq!(
            evidence.of(me, &read_path, &meta(&read_path)),
            Ownership::Unproven
        );
        assert_eq!(evidence.of(me, &owned, &meta(&owned)), Ownership::Unproven);
        // Whatever the test harness made of stdout, it is not this process's file.
        assert!(!held_as_its_own(me, 1));
        drop((held, read));
    }

    /// In the daemon, a file the kernel reported as created is proven; a later file on the same
    /// inode number (born after the report) is not.
    #[test]
    fn a_created_record_proves_only_the_file_it_saw() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("made");
        std::fs::write(&file, "").unwrap();
        let meta = std::fs::symlink_metadata(&file).unwrap();
        let evidence = Evidence::gather(&BTreeSet::new(), History::Kernel);
        assert_eq!(evidence.of(1, &file, &meta), Ownership::Unproven);
        created::record(meta.dev(), meta.ino(), 4242);
        assert_eq!(
            evidence.of(1, &file, &meta),
            Ownership::CreatedByService { pid: 4242 }
        );
        let one_shot = Evidence::gather(&BTreeSet::new(), History::None);
        assert_eq!(one_shot.of(1, &file, &meta), Ownership::Unproven);
        if meta.created().is_ok() {
            std::fs::remove_file(&file).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            std::fs::write(&file, "").unwrap();
            let reborn = std::fs::symlink_metadata(&file).unwrap();
            if reborn.ino() == meta.ino() {
                assert_eq!(evidence.of(1, &file, &reborn), Ownership::Unproven);
            }
        }
    }
}
