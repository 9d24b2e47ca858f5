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
    #[error("cannot load the embedded eBPF object: {source} (proxyguard needs root, or CAP_BPF with CAP_PERFMON and CAP_NET_ADMIN; use --no-kernel to run without)")]
    LoadObject {
        #[source]
        source: aya::EbpfError,
    },
    #[error("the eBPF object has no {kind} named `{name}`; the binary was built from mismatched sources")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("cannot load program `{name}`: {source}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach program `{name}` to {target}: {source}")]
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
