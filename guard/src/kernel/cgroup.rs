//! Finds the cgroup v2 hierarchy from /proc/mounts: it is /sys/fs/cgroup on unified hosts,
//! /sys/fs/cgroup/unified on hybrid ones, and anywhere at all in a VM's init, so it is never
//! hard-coded.

use std::path::PathBuf;

use super::KernelError;

/// The first mount point of type `cgroup2` in `mounts` (the text of /proc/mounts).
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(target)))
    })
}

pub fn cgroup2_root() -> Result<PathBuf, KernelError> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    cgroup2_mount_in(&mounts).ok_or(KernelError::NoCgroup2)
}

/// /proc/mounts escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|oct| u8::from_str_radix(oct, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some("/sys/fs/cgroup/unified".into())
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_mount_in(unified), Some("/sys/fs/cgroup".into()));
        assert_eq!(cgroup2_mount_in("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal_sequences() {
        let mounts = "none /mnt/my\\040cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mount_in(mounts), Some("/mnt/my cgroup".into()));
    }
}
