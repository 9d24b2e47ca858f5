//! Temp files of the guarded process that others may read or write (threat 6): under its
//! `TMPDIR`, /tmp and /var/tmp (seen through `/proc/<pid>/root`, so a systemd PrivateTmp is what
//! is walked), and the files it holds open.
//!
//! Fixing touches only what the service owns, by evidence (`ownership`): a file it writes to,
//! one in its private temp dir, or (the daemon) one the kernel saw it create. Another file of
//! the same owner in a shared temp dir is reported, never changed.
//!
//! Fixing is race-safe: the file is opened with `O_NOFOLLOW`, checked again on the open fd (a
//! regular file, the service's uid, the same inode that was walked), and only then `fchmod`ed.
//! Symlinks are never followed and files of other uids are never touched.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::OsString,
    fs::{File, OpenOptions, Permissions},
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use procfs::process::{FDTarget, Process};

use super::{
    ownership::{Evidence, History, Ownership},
    Finding, Severity,
};

const MAX_DEPTH: u32 = 3;
const MAX_ENTRIES: usize = 5000;
/// Names whose contents are usually configuration, often with keys in it.
const CONFIG_EXTENSIONS: &[&str] = &[
    "yaml", "yml", "json", "toml", "conf", "cfg", "ini", "env", "pem", "key",
];
const KEY_MARKERS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "secret",
    "password",
    "token",
    "private key",
    "sk-",
];

/// A file as seen from the service's root: `root` is `/proc/<pid>/root`.
struct Scope<'a> {
    pid: u32,
    uid: u32,
    root: &'a Path,
    fix: bool,
    evidence: &'a Evidence,
}

pub fn check(
    process: &Process,
    environ: &HashMap<OsString, OsString>,
    temp_dirs: &[String],
    fix: bool,
    evidence: &Evidence,
    seen: &mut BTreeSet<(u64, u64)>,
) -> Vec<Finding> {
    let pid = process.pid as u32;
    let Ok(uid) = process.uid() else {
        return Vec::new();
    };
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let scope = Scope {
        pid,
        uid,
        root: &root,
        fix,
        evidence,
    };
    let mut out = Vec::new();
    for dir in dirs(environ, temp_dirs) {
        let mut budget = MAX_ENTRIES;
        walk(&scope, &dir, MAX_DEPTH, &mut budget, seen, &mut out);
    }
    if let Ok(fds) = process.fd() {
        for fd in fds.flatten() {
            let FDTarget::Path(path) = fd.target else {
                continue;
            };
            if !path.is_absolute()
                || ["/dev", "/proc", "/sys"]
                    .iter()
                    .any(|p| path.starts_with(p))
            {
                continue;
            }
            // The open file itself, through the fd: this works even for deleted files.
            let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{}", fd.fd)) else {
                continue;
            };
            // Held for writing: the service's own (its log, its temp file), whatever the walk
            // would say. Held only for reading, the other proofs still count.
            let held = super::ownership::held_as_its_own(pid, fd.fd)
                .then_some(Ownership::HeldOpen { pid });
            if let Some(finding) = judge(&scope, &path, &meta, "open_file", held, seen) {
                out.push(finding);
            }
        }
    }
    out
}

/// The directories to walk, as the service names them.
pub fn dirs(environ: &HashMap<OsString, OsString>, temp_dirs: &[String]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in temp_dirs {
        let path = if dir == "$TMPDIR" {
            match environ.get(&OsString::from("TMPDIR")) {
                Some(tmp) => PathBuf::from(tmp),
                None => continue,
            }
        } else {
            PathBuf::from(dir)
        };
        if path.is_absolute() && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

fn walk(
    scope: &Scope,
    dir: &Path,
    depth: u32,
    budget: &mut usize,
    seen: &mut BTreeSet<(u64, u64)>,
    out: &mut Vec<Finding>,
) {
    let Ok(entries) = std::fs::read_dir(inside(scope.root, dir)) else {
        return;
    };
    for entry in entries.flatten() {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = dir.join(entry.file_name());
        // lstat: a symlink is never followed, here or below.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.file_type().is_dir() && depth > 0 {
            walk(scope, &path, depth - 1, budget, seen, out);
        } else if let Some(finding) = judge(scope, &path, &meta, "temp_file", None, seen) {
            out.push(finding);
        }
    }
}

/// Checks one new file under the service's temp directories (the daemon's inotify path). The
/// evidence of ownership is gathered from `pids` (every process of the service) only for a file
/// that would be a finding at all.
pub fn check_one(
    pid: u32,
    uid: u32,
    path: &Path,
    fix: bool,
    pids: &BTreeSet<u32>,
    history: History,
) -> Option<Finding> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let meta = std::fs::symlink_metadata(inside(&root, path)).ok()?;
    if !loose(&meta, uid) {
        return None;
    }
    // The kernel's record first: a service making files fast then costs no /proc walk per file.
    let created = match history {
        History::Kernel => super::ownership::created_by_service(&meta),
        History::None => None,
    };
    let evidence = if created.is_some() {
        Evidence::empty(history)
    } else {
        Evidence::gather(pids, history)
    };
    let scope = Scope {
        pid,
        uid,
        root: &root,
        fix,
        evidence: &evidence,
    };
    judge(
        &scope,
        path,
        &meta,
        "temp_file",
        created,
        &mut BTreeSet::new(),
    )
}

/// A regular file of `uid` that others may read or write.
fn loose(meta: &std::fs::Metadata, uid: u32) -> bool {
    meta.file_type().is_file() && meta.uid() == uid && meta.mode() & 0o077 != 0
}

/// `path` (as the service sees it) below `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn judge(
    scope: &Scope,
    path: &Path,
    meta: &std::fs::Metadata,
    check: &'static str,
    ownership: Option<Ownership>,
    seen: &mut BTreeSet<(u64, u64)>,
) -> Option<Finding> {
    if !loose(meta, scope.uid) {
        return None;
    }
    if !seen.insert((meta.dev(), meta.ino())) {
        return None;
    }
    let mode = meta.mode() & 0o7777;
    let real = inside(scope.root, path);
    let high = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| CONFIG_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        || key_like(&real);
    let ownership = ownership.unwrap_or_else(|| scope.evidence.of(scope.pid, path, meta));
    let mut detail = format!(
        "mode {mode:04o}: readable or writable by other users; it should be 0600{}",
        if high {
            " (config or key-like contents)"
        } else {
            ""
        }
    );
    let mut fixed = false;
    if !ownership.proven() {
        detail.push_str(&format!(
            "; reported, not changed: not proven to be the service's (not held open for writing by it, not in \
             its private temp dir, {})",
            match scope.evidence.history() {
                History::Kernel if super::created::active() => "not recorded as created by it",
                History::Kernel => "and the created-files record is off (`status` says why)",
                History::None => "and a one-shot check has no record of the files it created",
            }
        ));
    } else if scope.fix {
        match fix_file(&real, scope.uid, meta.dev(), meta.ino()) {
            Ok(()) => {
                fixed = true;
                detail = format!(
                    "mode was {mode:04o}; set to 0600 ({})",
                    ownership.describe()
                );
            }
            Err(why) => detail.push_str(&format!("; {}; not fixed: {why}", ownership.describe())),
        }
    } else {
        detail.push_str(&format!(
            "; {}; `proxyguard check --fix` sets it",
            ownership.describe()
        ));
    }
    // A file only of the same owner may well be another tool's: one step less severe.
    let severity = match (high, ownership.proven()) {
        (true, true) => Severity::High,
        (true, false) | (false, true) => Severity::Medium,
        (false, false) => Severity::Low,
    };
    Some(Finding {
        check,
        severity,
        pid: scope.pid,
        subject: path.display().to_string(),
        detail,
        fixed,
        ownership: Some(ownership),
    })
}

/// Opens without following a symlink and without blocking on a FIFO.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Whether the first 4 KiB look like they hold a key. The contents go no further than this.
fn key_like(path: &Path) -> bool {
    let Ok(file) = open_nofollow(path) else {
        return false;
    };
    if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return false;
    }
    let mut head = Vec::with_capacity(4096);
    if file.take(4096).read_to_end(&mut head).is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    KEY_MARKERS.iter().any(|m| text.contains(m))
}

/// `fchmod 0600` on the file at `path`, if it still is the regular file `(dev, ino)` of `uid`.
pub fn fix_file(path: &Path, uid: u32, dev: u64, ino: u64) -> Result<(), String> {
    let file = open_nofollow(path)
        .map_err(|err| format!("cannot open it without following links ({err})"))?;
    let meta = file
        .metadata()
        .map_err(|err| format!("cannot stat it ({err})"))?;
    if !meta.file_type().is_file() || meta.uid() != uid || meta.dev() != dev || meta.ino() != ino {
        return Err("it changed since it was checked; left alone".into());
    }
    file.set_permissions(Permissions::from_mode(0o600))
        .map_err(|err| format!("fchmod failed ({err})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ids(path: &Path) -> (u32, u64, u64) {
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.uid(), m.dev(), m.ino())
    }

    #[test]
    fn fixes_a_regular_file_and_never_a_symlink_target() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.yaml");
        std::fs::write(&file, "api_key: x\n").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        let (uid, dev, ino) = ids(&file);
        assert!(key_like(&file));
        fix_file(&file, uid, dev, ino).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);

        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();
        let (uid, dev, ino) = ids(&target);
        assert!(fix_file(&link, uid, dev, ino).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_swapped_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a");
        std::fs::write(&first, "").unwrap();
        let (uid, dev, ino) = ids(&first);
        std::fs::remove_file(&first).unwrap();
        std::fs::write(&first, "").unwrap();
        std::fs::set_permissions(&first, Permissions::from_mode(0o644)).unwrap();
        let (_, _, new_ino) = ids(&first);
        if new_ino != ino {
            assert!(fix_file(&first, uid, dev, ino).is_err());
            assert_eq!(std::fs::metadata(&first).unwrap().mode() & 0o777, 0o644);
        }
    }
}
