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
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::created;

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

/// One mount as a process sees it, and whether what is below it is that process's alone.
#[derive(Debug, Clone)]
struct Mount {
    point: PathBuf,
    private: bool,
}

/// What is known of the service's processes, gathered once per audit.
#[derive(Debug)]
pub struct Evidence {
    /// `(dev, ino)` of every regular file a process of the service holds open for writing → that
    /// process.
    held: HashMap<(u64, u64), u32>,
    /// Per process: its mounts, deepest mount point first.
    mounts: HashMap<u32, Vec<Mount>>,
    /// Per process: its systemd unit, whose `systemd-private-*-UNIT-*` dirs are its own.
    units: HashMap<u32, String>,
    history: History,
}

impl Evidence {
    /// Reads the open files, mounts and units of `pids` (every process of the service).
    pub fn gather(pids: &BTreeSet<u32>, history: History) -> Evidence {
        let ours = own_mounts();
        let mut evidence = Evidence::empty(history);
        for &pid in pids {
            evidence
                .held
                .extend(held_open(pid).into_iter().map(|key| (key, pid)));
            if let Some(unit) = unit_of(pid) {
                evidence.units.insert(pid, unit);
            }
            evidence
                .mounts
                .insert(pid, mounts_of(pid, &ours, evidence.units.get(&pid)));
        }
        evidence
    }

    /// No evidence gathered (the kernel's record, when `history` has it, still counts).
    pub fn empty(history: History) -> Evidence {
        Evidence {
            held: HashMap::new(),
            mounts: HashMap::new(),
            units: HashMap::new(),
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
        if self.in_private_tmp(pid, path) {
            return Ownership::PrivateTmp { pid };
        }
        if self.history == History::Kernel {
            if let Some(created) = created_by_service(meta) {
                return created;
            }
        }
        Ownership::Unproven
    }

    fn in_private_tmp(&self, pid: u32, path: &Path) -> bool {
        // Seen from outside (the same mount namespace): the unit's own systemd-private dir. Only
        // systemd's: root's and closed to others, so no one else can have made it with that name.
        if let Some(unit) = self.units.get(&pid) {
            let mut prefix = PathBuf::from("/");
            for component in path.components().skip(1) {
                prefix.push(component);
                let named = component
                    .as_os_str()
                    .to_str()
                    .is_some_and(|name| is_private_dir_of(name, unit));
                if named && systemds_dir(&inside_root(pid, &prefix)) {
                    return true;
                }
            }
        }
        // Seen from inside: the deepest mount over the path decides.
        self.mounts
            .get(&pid)
            .and_then(|mounts| mounts.iter().find(|m| path.starts_with(&m.point)))
            .is_some_and(|m| m.private)
    }
}

/// The daemon's record as proof, alone: cheap, so a new file is judged by it before the rest of
/// the evidence is gathered.
pub fn created_by_service(meta: &Metadata) -> Option<Ownership> {
    let record = created::lookup(meta.dev(), meta.ino())?;
    // A file born after the report is another file on a reused inode number.
    let same = meta.created().map_or(true, |born| born <= record.seen);
    same.then_some(Ownership::CreatedByService { pid: record.tgid })
}

/// `path` (as process `pid` names it) through its root.
fn inside_root(pid: u32, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
}

/// A directory (not a link to one) of root, with no access for group or others, as systemd makes
/// its `systemd-private-*` dirs.
fn systemds_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == 0 && m.mode() & 0o077 == 0)
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

/// The systemd unit of process `pid`, from its cgroup path (`.../litellm.service`).
fn unit_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_in_cgroup(&text)
}

fn unit_in_cgroup(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().find(|l| l.contains(":name=systemd:")))?;
    let path = line.splitn(3, ':').nth(2)?;
    path.rsplit('/')
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

/// Whether `name` is a directory systemd made for `unit`'s PrivateTmp:
/// `systemd-private-<32 hex boot id>-<unit>-<random>`.
fn is_private_dir_of(name: &str, unit: &str) -> bool {
    let Some(rest) = name.strip_prefix("systemd-private-") else {
        return false;
    };
    let Some((boot, rest)) = rest.split_once('-') else {
        return false;
    };
    boot.len() == 32
        && boot.bytes().all(|b| b.is_ascii_hexdigit())
        && rest
            .strip_prefix(unit)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|random| !random.is_empty() && !random.contains('/'))
}

/// Our own mount namespace, and the devices mounted in it.
struct OwnMounts {
    namespace: Option<u64>,
    devices: BTreeSet<String>,
}

fn own_mounts() -> OwnMounts {
    let devices = procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .map(|mounts| mounts.into_iter().map(|m| m.majmin).collect())
        .unwrap_or_default();
    OwnMounts {
        namespace: namespace_of("self"),
        devices,
    }
}

fn namespace_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// Process `pid`'s mounts, deepest first. A mount is private when systemd made it for the
/// unit's PrivateTmp (its root is the unit's `systemd-private-*` dir), or when the process is in
/// another mount namespace and the filesystem is mounted nowhere in ours (no one here reaches it
/// but through `/proc/<pid>/root`).
fn mounts_of(pid: u32, ours: &OwnMounts, unit: Option<&String>) -> Vec<Mount> {
    let Ok(infos) = procfs::process::Process::new(pid as i32).and_then(|p| p.mountinfo()) else {
        return Vec::new();
    };
    let other_namespace =
        namespace_of(&pid.to_string()).is_some_and(|ns| Some(ns) != ours.namespace);
    let mut mounts: Vec<Mount> = infos
        .into_iter()
        .map(|info| {
            let systemd = unit.is_some_and(|unit| {
                Path::new(&info.root).components().any(|c| {
                    c.as_os_str()
                        .to_str()
                        .is_some_and(|name| is_private_dir_of(name, unit))
                })
            });
            let unreachable = other_namespace && !ours.devices.contains(&info.majmin);
            Mount {
                point: info.mount_point,
                private: systemd || unreachable,
            }
        })
        .collect();
    // Deepest first; among equal points the last mounted (on top) first.
    mounts.reverse();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.point.components().count()));
    mounts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_a_units_systemd_private_dir_and_no_other() {
        let boot = "0123456789abcdef0123456789abcdef";
        let ours = format!("systemd-private-{boot}-litellm.service-Ab3dEf");
        assert!(is_private_dir_of(&ours, "litellm.service"));
        for other in [
            format!("systemd-private-{boot}-nginx.service-Ab3dEf"),
            format!("systemd-private-{boot}-litellm.service-"),
            format!("systemd-private-{boot}-litellm.serviceX-Ab3dEf"),
            "systemd-private-short-litellm.service-Ab3dEf".to_owned(),
            "litellm.service".to_owned(),
        ] {
            assert!(!is_private_dir_of(&other, "litellm.service"), "{other}");
        }
    }

    #[test]
    fn reads_the_unit_from_the_cgroup_path() {
        assert_eq!(
            unit_in_cgroup("0::/system.slice/litellm.service\n").as_deref(),
            Some("litellm.service")
        );
        assert_eq!(
            unit_in_cgroup("1:name=systemd:/system.slice/a.service/worker\n0::/\n").as_deref(),
            None,
            "the unified line wins, and names no unit"
        );
        assert_eq!(unit_in_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

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

    /// A directory named like the unit's systemd-private dir proves nothing unless it is
    /// systemd's: root's, closed to others.
    #[test]
    fn a_lookalike_private_dir_proves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let name = "systemd-private-0123456789abcdef0123456789abcdef-litellm.service-Xy";
        let private = dir.path().join(name);
        std::fs::create_dir(&private).unwrap();
        let file = private.join("f");
        std::fs::write(&file, "").unwrap();
        let me = std::process::id();
        let mut evidence = Evidence::gather(&BTreeSet::from([me]), History::None);
        evidence.units.insert(me, "litellm.service".into());
        let meta = std::fs::symlink_metadata(&file).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(evidence.of(me, &file, &meta), Ownership::Unproven);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let systemds = nix::unistd::geteuid().is_root();
        assert_eq!(
            evidence.of(me, &file, &meta),
            if systemds {
                Ownership::PrivateTmp { pid: me }
            } else {
                Ownership::Unproven
            }
        );
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
