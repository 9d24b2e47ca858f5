//! The environ watch: attaches one tier, `lsm/file_open` where BPF LSM works (deny and report),
//! else a kprobe on `environ_open` where the kernel has kprobes (report, every spelling), else the
//! `openat`/`openat2` tracepoints (report, path matching), and keeps the guarded task set, the
//! allowed executables' processes and the mode in the programs' maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use aya::{
    programs::{links::FdLink, KProbe, Lsm, TracePoint},
    Btf, Ebpf,
};
use guard_common::environ::{
    EnvironConfig, ExeId, KernelOffsets, MAP_ENVIRON_ALLOWED, MAP_ENVIRON_CONFIG,
    MAP_ENVIRON_GUARDED, MAP_ENVIRON_STATS, MAX_ALLOWED, MAX_GUARDED_TASKS, OPEN_PROBE_FUNCTION,
    PROG_ENVIRON_FILE_OPEN, PROG_ENVIRON_OPENAT, PROG_ENVIRON_OPENAT2, PROG_ENVIRON_OPEN_PROBE,
    STAT_ALLOWED_EXE, STAT_DENIED, STAT_EVENTS_LOST, STAT_OTHER_READS, STAT_SELF_READS,
    STAT_WOULD_DENY,
};
use serde::Serialize;

use super::{
    maps::{self, HashStep, SlotStep},
    pins::{PinDir, Pinned},
    AttachedProgram, KernelError,
};
use crate::config::WatchSection;

const TRACEPOINTS: [(&str, &str); 2] = [
    (PROG_ENVIRON_OPENAT, "sys_enter_openat"),
    (PROG_ENVIRON_OPENAT2, "sys_enter_openat2"),
];

/// What the watch last wrote to the maps, so a tick that changes nothing writes nothing.
#[derive(Debug, Default)]
pub struct Watch {
    /// The cgroup v2 mount, where the guarded cgroups are looked up.
    pub root: Option<PathBuf>,
    /// Kernel struct offsets from BTF; all zero where the kernel has no BTF (then the LSM program
    /// is not attached, and a dirfd-relative open is not resolved).
    pub offsets: KernelOffsets,
    /// Task id → tgid of every thread of every guarded process.
    pub tasks: BTreeMap<u32, u32>,
    pub allowed: BTreeSet<ExeId>,
}

/// Attaches the LSM program, pinned, or adopts the pinned one. Another object's pinned program
/// is replaced by attaching the new one first and then unpinning the old (tracing links cannot
/// swap their program), so some opens in between meet both.
pub fn attach_lsm(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    config: &WatchSection,
) -> Result<AttachedProgram, KernelError> {
    attach_file_open(ebpf, pins, PROG_ENVIRON_FILE_OPEN, config.mode.as_str())
}

/// Attaches the `lsm/file_open` program `name` (the environ watch's, or the created-files
/// record's), pinned, or adopts or replaces the pinned one as [`attach_lsm`] says.
pub fn attach_file_open(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    name: &'static str,
    mode: &'static str,
) -> Result<AttachedProgram, KernelError> {
    let target = "file_open";
    attach_pinned(pins, name, "lsm/file_open", target, mode, || {
        let btf = Btf::from_sys_fs().map_err(|source| KernelError::Btf { source })?;
        let program: &mut Lsm = super::program(ebpf, name)?;
        // Loaded already when a reload attaches the program again after detaching it.
        if program.fd().is_err() {
            program
                .load(target, &btf)
                .map_err(|source| KernelError::LoadProgram { name, source })?;
        }
        let id = program.attach().map_err(|source| KernelError::Attach {
            name,
            target: target.into(),
            source,
        })?;
        let link = program
            .take_link(id)
            .map_err(|source| KernelError::TakeLink { name, source })?;
        Ok((FdLink::from(link), program.info().ok().map(|i| i.id())))
    })
}

/// The life every tracing program here shares (LSM, kprobe, tracepoint): adopts the link an
/// earlier daemon of this object pinned for `name` on `target`; else runs `attach` (load the
/// program, attach it, take its link and the program's id) and pins the new link, over another
/// object's pinned one when there is one. Only then may the old link go: tracing links cannot
/// swap their program, so some events in between meet both.
fn attach_pinned(
    pins: &PinDir,
    name: &'static str,
    hook: &'static str,
    target: &str,
    mode: &'static str,
    attach: impl FnOnce() -> Result<(FdLink, Option<u32>), KernelError>,
) -> Result<AttachedProgram, KernelError> {
    let pinned = pins.pinned(name, target);
    let mut out = AttachedProgram {
        name,
        hook,
        target: target.into(),
        mode,
        adopted: false,
        replaced: matches!(pinned, Pinned::Replace { .. }),
        program_id: None,
    };
    if let Pinned::Adopt { program_id } = pinned {
        out.adopted = true;
        out.program_id = Some(program_id);
        return Ok(out);
    }
    let (link, program_id) = attach()?;
    if out.replaced {
        pins.pin_over(link, name, target)?;
    } else {
        pins.pin(link, name, target)?;
    }
    drop(pinned);
    out.program_id = program_id;
    Ok(out)
}

/// A perf or kprobe link as the fd link it is pinned as.
fn pinnable<L>(link: L, name: &'static str) -> Result<FdLink, KernelError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    FdLink::try_from(link).map_err(|source| KernelError::LinkNotPinnable { name, source })
}

/// The tier the watch runs at, as `status` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    LsmDeny,
    OpenProbe,
    PathTracepoints,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::LsmDeny => "LSM deny",
            Tier::OpenProbe => "open probe",
            Tier::PathTracepoints => "path tracepoints",
        }
    }
}

/// The `environ-watch` feature line: the tier in use, what it does, and why no stronger one
/// runs (`why_not` holds one reason per tier passed over).
pub fn tier_feature(tier: Tier, why_not: &[String]) -> super::Feature {
    let what = match tier {
        Tier::LsmDeny => "lsm/file_open judges the opened file (every spelling of its path) and refuses it in enforce mode",
        Tier::OpenProbe => "a kprobe on environ_open sees every open of a /proc/<pid>/environ file, whatever path, syscall or io_uring led there; it reports, it cannot refuse",
        Tier::PathTracepoints => "openat/openat2 tracepoints match the path text; the gaps docs/threats.md lists apply (other spellings, symlinks, open(2), io_uring)",
    };
    let mut detail = format!("{}: {what}", tier.name());
    for reason in why_not {
        detail.push_str("; ");
        detail.push_str(reason);
    }
    super::Feature {
        name: "environ-watch",
        available: tier != Tier::PathTracepoints,
        detail,
    }
}

/// Attaches the kprobe on `environ_open` (detection only), pinned, or adopts the pinned one.
/// Another object's is replaced as the tracepoints are.
pub fn attach_open_probe(ebpf: &mut Ebpf, pins: &PinDir) -> Result<AttachedProgram, KernelError> {
    attach_kprobe(ebpf, pins, PROG_ENVIRON_OPEN_PROBE, OPEN_PROBE_FUNCTION)
}

/// Attaches the kprobe program `name` on the kernel function `target` (detection only), pinned,
/// or adopts or replaces the pinned one as [`attach_open_probe`] says.
pub fn attach_kprobe(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    name: &'static str,
    target: &'static str,
) -> Result<AttachedProgram, KernelError> {
    attach_pinned(pins, name, "kprobe", target, "detect", || {
        let program: &mut KProbe = super::program(ebpf, name)?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| KernelError::LoadProgram { name, source })?;
        }
        let id = program
            .attach(target, 0)
            .map_err(|source| KernelError::Attach {
                name,
                target: target.into(),
                source,
            })?;
        let link = program
            .take_link(id)
            .map_err(|source| KernelError::TakeLink { name, source })?;
        Ok((pinnable(link, name)?, program.info().ok().map(|i| i.id())))
    })
}

/// Attaches the two `openat` tracepoints (detection only), pinned, or adopts pinned ones.
/// Another object's are replaced as the LSM program is: the new one attached, then the old one
/// unpinned (a perf link cannot swap its program).
pub fn attach_tracepoints(
    ebpf: &mut Ebpf,
    pins: &PinDir,
) -> Result<Vec<AttachedProgram>, KernelError> {
    attach_tracepoint_list(ebpf, pins, &TRACEPOINTS)
}

/// Attaches each `(program, syscalls event)` pair (detection only), pinned, or adopts pinned ones.
pub fn attach_tracepoint_list(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    list: &[(&'static str, &str)],
) -> Result<Vec<AttachedProgram>, KernelError> {
    let mut attached = Vec::new();
    for &(name, event) in list {
        let target = format!("syscalls/{event}");
        attached.push(attach_pinned(
            pins,
            name,
            "tracepoint",
            &target,
            "detect",
            || {
                let program: &mut TracePoint = super::program(ebpf, name)?;
                if program.fd().is_err() {
                    program
                        .load()
                        .map_err(|source| KernelError::LoadProgram { name, source })?;
                }
                let id =
                    program
                        .attach("syscalls", event)
                        .map_err(|source| KernelError::Attach {
                            name,
                            target: target.clone(),
                            source,
                        })?;
                let link = program
                    .take_link(id)
                    .map_err(|source| KernelError::TakeLink { name, source })?;
                Ok((pinnable(link, name)?, program.info().ok().map(|i| i.id())))
            },
        )?);
    }
    Ok(attached)
}

/// Writes the mode and offsets, then the task sets (only those that changed since `last`), all
/// or nothing; `last` follows only when the write succeeded.
pub fn apply(
    ebpf: &mut Ebpf,
    config: &WatchSection,
    last: &mut Watch,
    tasks: BTreeMap<u32, u32>,
    allowed: BTreeSet<ExeId>,
) -> Result<(), KernelError> {
    let tasks = if config.enabled {
        tasks
    } else {
        BTreeMap::new()
    };
    let mut wanted = plan(config, last.offsets, &tasks, &allowed);
    wanted.retain(|step| match step.map() {
        MAP_ENVIRON_GUARDED => tasks != last.tasks,
        MAP_ENVIRON_ALLOWED => allowed != last.allowed,
        _ => true,
    });
    maps::apply(ebpf, &wanted)?;
    last.tasks = tasks;
    last.allowed = allowed;
    Ok(())
}

/// What the environ maps should hold: the mode and offsets, the guarded tasks (task id → tgid),
/// and the executables allowed to read their environ.
pub fn plan(
    config: &WatchSection,
    offsets: KernelOffsets,
    tasks: &BTreeMap<u32, u32>,
    allowed: &BTreeSet<ExeId>,
) -> maps::Plan {
    let settings = EnvironConfig {
        mode: config.mode.kernel_value(),
        daemon_tgid: std::process::id(),
        offsets,
    };
    vec![
        SlotStep::boxed(MAP_ENVIRON_CONFIG, "watch.mode", settings),
        HashStep::boxed(
            MAP_ENVIRON_GUARDED,
            "guarded",
            MAX_GUARDED_TASKS,
            tasks.iter().map(|(t, g)| (*t, *g)).collect(),
        ),
        HashStep::boxed(
            MAP_ENVIRON_ALLOWED,
            "watch.allow_exe",
            MAX_ALLOWED,
            allowed.iter().map(|exe| (*exe, 1u32)).collect(),
        ),
    ]
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct EnvironStats {
    /// Opens of a guarded environ by another process (denied, allowed or only seen).
    pub other_reads: u64,
    pub self_reads: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub allowed_exe: u64,
    pub events_lost: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<EnvironStats, KernelError> {
    let [other_reads, self_reads, denied, would_deny, allowed_exe, events_lost] =
        maps::percpu_sums(
            ebpf,
            MAP_ENVIRON_STATS,
            [
                STAT_OTHER_READS,
                STAT_SELF_READS,
                STAT_DENIED,
                STAT_WOULD_DENY,
                STAT_ALLOWED_EXE,
                STAT_EVENTS_LOST,
            ],
        )?;
    Ok(EnvironStats {
        other_reads,
        self_reads,
        denied,
        would_deny,
        allowed_exe,
        events_lost,
    })
}

/// The kernel's identity of each executable in `paths` that exists: inode and `MKDEV` device.
pub fn exe_ids(paths: &[PathBuf]) -> BTreeSet<ExeId> {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|meta| {
            let dev = meta.dev();
            let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
            ExeId {
                ino: meta.ino(),
                dev: ((major << 20) | minor) as u32,
                _pad: 0,
            }
        })
        .collect()
}
