//! What the running kernel offers, checked at start. A missing feature becomes one plain line (what,
//! why, and the fallback in use), never a bare errno.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// Where it is, or why it is missing and what proxyguard does instead.
    pub detail: String,
}

/// Checks every feature. Mounts tracefs and bpffs when they are missing, as the daemon needs both.
pub fn detect() -> Vec<Feature> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    vec![
        btf(),
        cgroup2(&mounts),
        bpffs(&mounts),
        tracefs(&mounts),
        bpf_lsm(&mounts),
        kprobes(Path::new(KPROBE_PMU)),
    ]
}

/// The perf event source kprobe programs attach through; the kernel has it when built with
/// `CONFIG_KPROBE_EVENTS` (which needs `CONFIG_KPROBES`).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Whether kprobe programs can attach: the environ watch's open probe needs them.
fn kprobes(pmu: &Path) -> Feature {
    let available = pmu.exists();
    Feature {
        name: "kprobes",
        available,
        detail: if available {
            format!("kprobe event source at {}", pmu.display())
        } else {
            format!(
                "absent from this kernel (no {}; CONFIG_KPROBES is off); the environ watch matches paths at openat instead of watching the open itself",
                pmu.display()
            )
        },
    }
}

fn btf() -> Feature {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let available = path.exists();
    Feature {
        name: "btf",
        available,
        detail: if available {
            path.display().to_string()
        } else {
            "kernel built without CONFIG_DEBUG_INFO_BTF; programs that need kernel struct offsets stay off".into()
        },
    }
}

fn cgroup2(mounts: &str) -> Feature {
    match super::cgroup::cgroup2_mount_in(mounts) {
        Some(path) => Feature {
            name: "cgroup2",
            available: true,
            detail: path.display().to_string(),
        },
        None => Feature {
            name: "cgroup2",
            available: false,
            detail: "no cgroup2 mount; bind rules and the egress allow-list cannot attach".into(),
        },
    }
}

fn bpffs(mounts: &str) -> Feature {
    ensure_mounted(
        mounts,
        "bpf",
        "/sys/fs/bpf",
        "bpffs",
        "kernel state cannot be pinned; it lasts only as long as the daemon",
    )
}

fn tracefs(mounts: &str) -> Feature {
    ensure_mounted(
        mounts,
        "tracefs",
        "/sys/kernel/tracing",
        "tracefs",
        "tracepoint programs stay off",
    )
}

fn ensure_mounted(
    mounts: &str,
    fstype: &str,
    target: &str,
    name: &'static str,
    fallback: &str,
) -> Feature {
    let mounted = mounts
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some(fstype));
    if mounted {
        return Feature {
            name,
            available: true,
            detail: format!("mounted ({fstype})"),
        };
    }
    let result = nix::mount::mount(
        Some(fstype),
        target,
        Some(fstype),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    match result {
        Ok(()) => Feature {
            name,
            available: true,
            detail: format!("was not mounted; mounted {fstype} at {target}"),
        },
        Err(errno) => Feature {
            name,
            available: false,
            detail: format!(
                "not mounted, and mounting it at {target} failed ({}); {fallback}",
                errno.desc()
            ),
        },
    }
}

fn bpf_lsm(mounts: &str) -> Feature {
    let securityfs = ensure_mounted(
        mounts,
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        "",
    );
    if !securityfs.available {
        return Feature {
            name: "bpf-lsm",
            available: false,
            detail: format!(
                "cannot read the active LSM list: {}; environ reads are detected, not denied",
                securityfs.detail
            ),
        };
    }
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let listed = lsms.trim().split(',').any(|lsm| lsm == "bpf");
    Feature {
        name: "bpf-lsm",
        available: listed,
        detail: if listed {
            format!("active LSMs: {}", lsms.trim())
        } else {
            "`bpf` is not in the active LSM list (boot with lsm=...,bpf); environ reads are detected, not denied".into()
        },
    }
}

/// Folds the result of actually loading an LSM program into the `bpf-lsm` entry: being listed as
/// active is necessary, not sufficient.
pub fn record_lsm_probe(features: &mut [Feature], probe: Result<(), String>) {
    let Some(lsm) = features.iter_mut().find(|f| f.name == "bpf-lsm") else {
        return;
    };
    match probe {
        Ok(()) if lsm.available => lsm.detail = format!("{}; LSM programs load", lsm.detail),
        Ok(()) => {}
        Err(reason) if lsm.available => {
            lsm.available = false;
            lsm.detail = format!(
                "{reason}, although `bpf` is an active LSM; environ reads are detected, not denied"
            );
        }
        Err(_) => {}
    }
}

/// The XDP mode per interface: available when every interface runs native (driver) XDP.
pub fn xdp_modes(modes: &[String]) -> Feature {
    let native = modes.iter().all(|m| !m.contains(": generic"));
    let detail = modes.join("; ");
    Feature {
        name: "xdp-native",
        available: native,
        detail: if native {
            detail
        } else {
            format!("{detail}; generic XDP runs later in the stack and costs more per packet")
        },
    }
}
