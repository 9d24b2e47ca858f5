//! Errors of the kernel half, each saying what failed and what the operator can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/mounts); mount one with `mount -t cgroup2 none /sys/fs/cgroup` or run with --no-kernel")]
    NoCgroup2,
    #[error("cannot open cgroup {}: {source}", path.display())]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The hint (what can refuse bpf(2) on this process) is read when the error is shown.
    #[error(
        "cannot load the embedded eBPF object: {source} ({}; use --no-kernel to run without)",
        load_refused_hint()
    )]
    LoadObject {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the eBPF object has no {kind} named `{name}`; the binary was built from mismatched sources")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("cannot load program `{name}`: {}", chain(source))]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "cannot attach program `{name}` to {target}: {}{}",
        chain(source),
        perf_paranoid_hint(source)
    )]
    Attach {
        name: &'static str,
        target: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot update map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot create the pin directory {}: {source} (is bpffs mounted at /sys/fs/bpf?)", path.display())]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pin the link of `{name}`: {source}")]
    Pin {
        name: &'static str,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot take the link of `{name}` for pinning: {source}")]
    TakeLink {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the link of `{name}` cannot be pinned: {source}")]
    LinkNotPinnable {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot start reading `{name}`: {source}")]
    Reader {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read kernel BTF from /sys/kernel/btf/vmlinux: {source}")]
    Btf {
        #[source]
        source: aya::BtfError,
    },
    #[error(
        "`{field}` needs {entries} entries in map `{map}`, which holds at most {capacity}; {}",
        super::capacity::advice(field)
    )]
    Capacity {
        map: &'static str,
        field: &'static str,
        entries: usize,
        capacity: usize,
    },
    #[error("{cause}; and putting back the old content of {maps:?} failed too, so those maps may hold a mix of old and new rules: restart the daemon")]
    RollbackFailed {
        cause: Box<KernelError>,
        maps: Vec<&'static str>,
    },
    #[error("cannot read the maps of the embedded eBPF object: {source}")]
    Object {
        #[source]
        source: super::manifest::ManifestError,
    },
    #[error("cannot swap the program of the pinned link {}: {source}", path.display())]
    Replace {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot update the pinned state at {}: {source} (is bpffs mounted and writable? The next start replaces the pinned programs again)", path.display())]
    PinState {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An error with its sources, `outer: inner: errno`: aya's program errors keep the system call's
/// errno (the part an operator needs, EACCES against EPERM, say) one level down.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

/// Debian's kernels carry a patch that makes `kernel.perf_event_paranoid = 3` (their default)
/// refuse perf_event_open(2) to everyone without CAP_SYS_ADMIN, CAP_PERFMON or not, with EACCES.
/// Tracepoint programs attach through a perf event, so under the shipped unit (no CAP_SYS_ADMIN)
/// they fail there; say so, and what lifts it.
fn perf_paranoid_hint(err: &dyn std::error::Error) -> String {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok());
    paranoid_hint(&chain(err), paranoid)
}

fn paranoid_hint(chained: &str, paranoid: Option<i32>) -> String {
    match paranoid {
        Some(level) if level >= 3 && chained.contains("(os error 13)") => format!(
            " (kernel.perf_event_paranoid is {level}: this kernel then refuses perf events to processes without CAP_SYS_ADMIN, which the shipped unit does not grant; `sysctl kernel.perf_event_paranoid=2` lets proxyguard attach tracepoints with CAP_PERFMON)"
        ),
        _ => String::new(),
    }
}

/// Why bpf(2) may be refused here. EPERM comes from missing capabilities or from a seccomp filter
/// (systemd's `SystemCallFilter=`), and the two look the same to the caller, so the hint names
/// both, and says whether this process runs under a filter (`Seccomp: 2` in /proc/self/status).
pub fn load_refused_hint() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    seccomp_hint(&status)
}

fn seccomp_hint(proc_status: &str) -> String {
    let filtered = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .is_some_and(|mode| mode.trim() == "2");
    let caps = "proxyguard needs root, or CAP_BPF with CAP_PERFMON and CAP_NET_ADMIN";
    if filtered {
        format!("{caps}; this process also runs under a seccomp filter, which gives the same EPERM if it leaves out bpf(2) or perf_event_open(2): with systemd, allow them on a SystemCallFilter= line after the deny lines, as `proxyguard systemd unit` does")
    } else {
        format!("{caps}; a seccomp filter that leaves out bpf(2) gives the same EPERM")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eacces_under_paranoid_3_names_the_sysctl() {
        let refused = "`perf_event_open_trace_point` failed: Permission denied (os error 13)";
        assert!(paranoid_hint(refused, Some(3)).contains("kernel.perf_event_paranoid=2"));
        assert_eq!(paranoid_hint(refused, Some(2)), "");
        assert_eq!(
            paranoid_hint("Operation not permitted (os error 1)", Some(3)),
            ""
        );
        assert_eq!(paranoid_hint(refused, None), "");
    }

    #[test]
    fn the_hint_names_seccomp_and_capabilities() {
        let filtered = seccomp_hint("Name:\tproxyguard\nSeccomp:\t2\nSeccomp_filters:\t1\n");
        assert!(filtered.contains("CAP_BPF"), "{filtered}");
        assert!(
            filtered.contains("runs under a seccomp filter"),
            "{filtered}"
        );
        assert!(filtered.contains("SystemCallFilter="), "{filtered}");
        let plain = seccomp_hint("Seccomp:\t0\n");
        assert!(
            plain.contains("CAP_BPF") && plain.contains("seccomp"),
            "{plain}"
        );
        assert!(!plain.contains("runs under"), "{plain}");
    }
}
