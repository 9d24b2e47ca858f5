//! The guarded service's private temp dirs, where everything is its own: a mount systemd made
//! for the unit's PrivateTmp (its root is the unit's `systemd-private-*-UNIT-*` dir), that dir
//! seen from outside (when it is systemd's: root's and closed to others), or, for a service in
//! another mount namespace, a filesystem mounted nowhere in ours or init's (no one here reaches
//! it but through `/proc/<pid>/root`).

use std::{
    collections::{BTreeSet, HashMap},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// One mount as a process sees it, and whether what is below it is that process's alone.
#[derive(Debug, Clone)]
struct Mount {
    point: PathBuf,
    private: bool,
}

/// Per process of the service: its mounts (deepest first) and its systemd unit.
#[derive(Debug, Default)]
pub struct PrivateTmp {
    mounts: HashMap<u32, Vec<Mount>>,
    /// Whose `systemd-private-*-UNIT-*` dirs are its own.
    units: HashMap<u32, String>,
}

impl PrivateTmp {
    pub fn gather(pids: &BTreeSet<u32>) -> PrivateTmp {
        let ours = own_mounts();
        let mut out = PrivateTmp::default();
        for &pid in pids {
            if let Some(unit) = unit_of(pid) {
                out.units.insert(pid, unit);
            }
            out.mounts
                .insert(pid, mounts_of(pid, &ours, out.units.get(&pid)));
        }
        out
    }

    /// Whether `path` (as process `pid` names it) lies in that process's private temp dir.
    pub fn contains(&self, pid: u32, path: &Path) -> bool {
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

/// The systemd unit of process `pid`, from its cgroup path (`.../litellm.service`).
fn unit_of(pid: u32) -> Option<String> {
    unit_cgroup(pid).map(|(unit, _)| unit)
}

/// Process `pid`'s systemd service and that service's cgroup (relative to the cgroup root).
pub fn unit_cgroup(pid: u32) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_in_cgroup(&text)
}

/// The innermost `.service` in a `/proc/<pid>/cgroup` text, and its cgroup path. A user manager
/// (`user@UID.service`) is not a service of its own: its processes are the user's.
fn unit_in_cgroup(text: &str) -> Option<(String, String)> {
    let line = text
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| text.lines().find(|l| l.contains(":name=systemd:")))?;
    let path = line.splitn(3, ':').nth(2)?;
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts.iter().rposition(|c| c.ends_with(".service"))?;
    if parts[at].starts_with("user@") {
        return None;
    }
    Some((parts[at].to_owned(), parts[..=at].join("/")))
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
/// The mount namespaces of this process and of init, and every device mounted in either. Both,
/// because the daemon may run in a namespace of its own (its unit's PrivateTmp, ProtectHome):
/// a filesystem the host has mounted is shared, whatever the daemon's view lacks.
struct OwnMounts {
    namespaces: BTreeSet<u64>,
    devices: BTreeSet<String>,
}

fn own_mounts() -> OwnMounts {
    let mut out = OwnMounts {
        namespaces: BTreeSet::new(),
        devices: BTreeSet::new(),
    };
    for pid in ["self", "1"] {
        out.namespaces.extend(namespace_of(pid));
        let path = format!("/proc/{pid}/mountinfo");
        if let Ok(mounts) = procfs::FromRead::from_file(path) {
            let mounts: procfs::process::MountInfos = mounts;
            out.devices.extend(mounts.into_iter().map(|m| m.majmin));
        }
    }
    out
}

fn namespace_of(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// Process `pid`'s mounts, deepest first. A mount is private when systemd made it for the
/// unit's PrivateTmp (its root is the unit's `systemd-private-*` dir), or when the process is in
/// another mount namespace and the filesystem is mounted nowhere in ours or init's (no one there
/// reaches it but through `/proc/<pid>/root`).
fn mounts_of(pid: u32, ours: &OwnMounts, unit: Option<&String>) -> Vec<Mount> {
    let Ok(infos) = procfs::process::Process::new(pid as i32).and_then(|p| p.mountinfo()) else {
        return Vec::new();
    };
    let other_namespace =
        namespace_of(&pid.to_string()).is_some_and(|ns| !ours.namespaces.contains(&ns));
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
        let unit = |text: &str| unit_in_cgroup(text);
        assert_eq!(
            unit("0::/system.slice/litellm.service\n"),
            Some((
                "litellm.service".into(),
                "/system.slice/litellm.service".into()
            ))
        );
        assert_eq!(
            unit("0::/system.slice/litellm.service/worker-2\n"),
            Some((
                "litellm.service".into(),
                "/system.slice/litellm.service".into()
            ))
        );
        assert_eq!(
            unit("1:name=systemd:/system.slice/a.service/worker\n0::/\n"),
            None,
            "the unified line wins, and names no unit"
        );
        assert_eq!(unit("0::/user.slice/session-1.scope\n"), None);
        assert_eq!(
            unit("0::/user.slice/user-0.slice/user@0.service/init.scope\n"),
            None,
            "a user manager is not a service"
        );
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
        let mut dirs = PrivateTmp::gather(&BTreeSet::from([me]));
        dirs.units.insert(me, "litellm.service".into());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!dirs.contains(me, &file));
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Ours is systemd's kind only when this test runs as root.
        assert_eq!(dirs.contains(me, &file), nix::unistd::geteuid().is_root());
    }
}
