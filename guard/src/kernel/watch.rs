//! The environ watch as a program family: while `[watch]` is on and a guarded service is
//! configured, it chooses its tier (LSM deny, else the open probe, else the path tracepoints,
//! within `[watch] tier`), starts the created-files record beside it when fix mode is on (which
//! reads the watch's guarded task set; a reload attaches or detaches it as fix mode turns on or
//! off), and keeps the guarded tasks and the allowed executables in the maps. A watch that cannot
//! attach leaves the other families running. The programs and maps are in `environ.rs` and
//! `created.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::Ebpf;
use guard_common::environ::{ExeId, KernelOffsets, MAP_ENVIRON_EVENTS};

use super::{
    btf_offsets, cgroup, created,
    environ::{self, Tier, Watch},
    events,
    family::{Family, Host, Reattach, Refresh, Start, Started},
    maps,
    pins::PinDir,
    AttachedProgram, Counters, Feature, KernelError,
};
use crate::{
    config::{
        watch::{TempFiles, Tier as TierCap},
        Config, GuardedSection, WatchSection,
    },
    guarded_pids,
};

#[derive(Default)]
pub struct EnvironWatch {
    /// What the watch last wrote, when it is attached.
    watch: Option<Watch>,
    /// What the created-files record needs to attach later (a reload into fix mode), when the
    /// watch is attached.
    record: Option<Record>,
}

/// The created-files record's side of the watch.
struct Record {
    /// The kernel offsets as the start read them (or why there are none).
    offsets: Result<KernelOffsets, String>,
    /// The hooks to try, best first (`created::Mechanism::order`).
    order: Vec<created::Mechanism>,
    /// Whether its programs are attached.
    attached: bool,
}

/// What the watch reads: its section and the guarded service.
pub struct Section<'a> {
    pub watch: &'a WatchSection,
    pub guarded: &'a GuardedSection,
}

impl EnvironWatch {
    /// The guarded service's processes (tgids) as last written to the kernel.
    pub fn guarded_pids(&self) -> BTreeSet<u32> {
        self.watch
            .as_ref()
            .map(|w| w.tasks.values().copied().collect())
            .unwrap_or_default()
    }
}

/// The guarded tasks and allowed executables a reload plans, kept once written.
type Sets = (BTreeMap<u32, u32>, BTreeSet<ExeId>);

impl Family for EnvironWatch {
    type Section<'a> = Section<'a>;
    type Pending = Option<Sets>;

    fn section(config: &Config) -> Section<'_> {
        Section {
            watch: &config.watch,
            guarded: &config.guarded,
        }
    }

    fn start(&mut self, section: &Section<'_>, cx: &mut Start<'_>) -> Started {
        if !(section.watch.enabled && section.guarded.is_set()) {
            if section.watch.enabled {
                tracing::info!("watch: no [guarded] service configured; the environ watch is off");
            }
            return Ok(Vec::new());
        }
        match start_watch(cx.ebpf, cx.pins, section, cx.features) {
            Ok((attached, watch, record)) => {
                self.watch = Some(watch);
                self.record = Some(record);
                Ok(attached)
            }
            Err(err) => {
                tracing::error!("the environ watch is off: {err}");
                Ok(Vec::new())
            }
        }
    }

    fn events(&self) -> Vec<events::Source> {
        let mut out = Vec::new();
        if self.watch.is_some() {
            out.push(events::audited!(
                "environ events",
                MAP_ENVIRON_EVENTS,
                events::environ_record
            ));
            // Read while the watch runs, whether the record is attached now or only after a
            // reload into fix mode (the ring can be taken once only); idle while it is off.
            out.push(created::EVENTS);
        }
        out
    }

    fn plan(&self, section: &Section<'_>, _host: &Host<'_>) -> (maps::Plan, Option<Sets>) {
        let Some(watch) = &self.watch else {
            return (Vec::new(), None);
        };
        let (tasks, allowed) = watch_sets(section, watch.root.as_deref());
        let tasks = if section.watch.enabled {
            tasks
        } else {
            Default::default()
        };
        let plan = environ::plan(section.watch, watch.offsets, &tasks, &allowed);
        (plan, Some((tasks, allowed)))
    }

    fn commit(&mut self, pending: Option<Sets>) {
        if let (Some(watch), Some((tasks, allowed))) = (self.watch.as_mut(), pending) {
            watch.tasks = tasks;
            watch.allowed = allowed;
        }
    }

    /// No task is guarded yet; the allowed executables are those that exist now.
    fn config_plan(section: &Section<'_>) -> maps::Plan {
        environ::plan(
            section.watch,
            Default::default(),
            &Default::default(),
            &allowed_exes(section.watch),
        )
    }

    /// Attaches the created-files record when the new config turns fix mode on, detaches it
    /// when it turns fix mode off. A record the kernel refuses leaves the reload in force (fix
    /// mode then proves ownership by open files and private temp dirs only), as at start; the
    /// `created-files` feature line says which.
    fn reattach(&mut self, section: &Section<'_>, cx: &mut Reattach<'_>) {
        let (Some(_), Some(record)) = (&self.watch, self.record.as_mut()) else {
            return;
        };
        let wanted = section.watch.temp_files == TempFiles::Fix;
        if wanted == record.attached {
            return;
        }
        let line = if wanted {
            let (programs, line) =
                created::start(cx.ebpf, cx.pins, record.offsets.clone(), &record.order);
            record.attached = !programs.is_empty();
            cx.programs.extend(programs);
            line
        } else {
            created::stop(cx.pins, cx.programs);
            record.attached = false;
            created::off_feature()
        };
        tracing::info!("created-files: {}", line.detail);
        set_feature(cx.features, line);
    }

    /// Re-reads the guarded tasks and the allowed executables' identities into the maps.
    fn refresh(&mut self, section: &Section<'_>, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        let (tasks, allowed) = watch_sets(section, watch.root.as_deref());
        environ::apply(cx.ebpf, section.watch, watch, tasks, allowed)
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        out.add("environ", environ::stats(ebpf)?);
        out.add("created_files", created::stats(ebpf)?);
        Ok(())
    }
}

/// The environ watch, then (in fix mode, its one consumer) the created-files record, which reads
/// the watch's guarded task set.
fn start_watch(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    section: &Section<'_>,
    features: &mut Vec<Feature>,
) -> Result<(Vec<AttachedProgram>, Watch, Record), KernelError> {
    // The offsets serve every layer: the LSM program, the tracepoints' dirfd resolution, and the
    // created-files programs' fd-table reads.
    let offsets = btf_offsets::environ_offsets(Path::new("/sys/kernel/btf/vmlinux"));
    let (mut programs, watch) = start_environ(ebpf, pins, section, features, offsets.clone())?;
    // After the environ watch, which turns `bpf-lsm` off when its own LSM program is refused.
    let available = |name: &str| features.iter().any(|f| f.name == name && f.available);
    let hooks = created::Hooks {
        lsm: available("bpf-lsm"),
        kprobes: available("kprobes"),
    };
    let mut record = Record {
        offsets,
        order: created::Mechanism::order(hooks, section.watch.tier),
        attached: false,
    };
    let line = if section.watch.temp_files == TempFiles::Fix {
        let (attached, line) = created::start(ebpf, pins, record.offsets.clone(), &record.order);
        record.attached = !attached.is_empty();
        programs.extend(attached);
        line
    } else {
        // A pinned record of an earlier daemon in fix mode goes with the other stale links.
        created::off_feature()
    };
    features.push(line);
    Ok((programs, watch, record))
}

/// Puts `line` in place of the feature line of the same name, or adds it.
fn set_feature(features: &mut Vec<Feature>, line: Feature) {
    match features.iter_mut().find(|f| f.name == line.name) {
        Some(old) => *old = line,
        None => features.push(line),
    }
}

/// Fills the environ maps, then attaches one tier: the LSM program where BPF LSM works (deny),
/// else the open probe where kprobes work (every spelling, report), else the path tracepoints,
/// within what `[watch] tier` allows. A refused LSM is folded into the `bpf-lsm` feature entry;
/// the tier in use, and why no stronger one, is the `environ-watch` entry.
fn start_environ(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    section: &Section<'_>,
    features: &mut Vec<Feature>,
    offsets: Result<KernelOffsets, String>,
) -> Result<(Vec<AttachedProgram>, Watch), KernelError> {
    let mut watch = Watch {
        root: cgroup::cgroup2_root().ok(),
        ..Default::default()
    };
    let cap = section.watch.tier;
    let mut why_not = Vec::new();
    let lsm = features.iter_mut().find(|f| f.name == "bpf-lsm");
    let lsm_offsets = match (lsm, &offsets) {
        (Some(lsm), Ok(offsets)) if lsm.available => Some(*offsets),
        (Some(lsm), Err(reason)) if lsm.available => {
            lsm.available = false;
            lsm.detail = format!("{reason}; environ reads are detected, not denied");
            tracing::warn!("bpf-lsm: {}", lsm.detail);
            None
        }
        _ => None,
    };
    if let Err(reason) = &offsets {
        tracing::warn!("{reason}; an environ open relative to a /proc/<pid> dirfd is not resolved");
    }
    let (tasks, allowed) = watch_sets(section, watch.root.as_deref());
    // The stronger tiers, each tried in turn: its offsets (or why it cannot run), then the maps
    // (the offsets and the task set are in the map before the program can run), then its program.
    for tier in [Tier::LsmDeny, Tier::OpenProbe] {
        let tier_offsets = match tier {
            Tier::LsmDeny if !cap.allows_lsm() => Err(format!(
                "LSM deny: not used ([watch] tier = \"{}\")",
                tier_name(cap)
            )),
            Tier::LsmDeny => lsm_offsets
                .ok_or_else(|| format!("LSM deny: {}", feature_detail(features, "bpf-lsm"))),
            _ if !cap.allows_probe() => {
                Err("open probe: not used ([watch] tier = \"tracepoints\")".into())
            }
            _ => open_probe_offsets(features, &offsets).map_err(|r| format!("open probe: {r}")),
        };
        match tier_offsets {
            Ok(tier_offsets) => watch.offsets = tier_offsets,
            Err(why) => {
                why_not.push(why);
                continue;
            }
        }
        environ::apply(
            ebpf,
            section.watch,
            &mut watch,
            tasks.clone(),
            allowed.clone(),
        )?;
        let attached = match tier {
            Tier::LsmDeny => environ::attach_lsm(ebpf, pins, section.watch),
            _ => environ::attach_open_probe(ebpf, pins),
        };
        match attached {
            Ok(program) => {
                features.push(environ::tier_feature(tier, &why_not));
                return Ok((vec![program], watch));
            }
            Err(err) => why_not.push(refused(tier, &err, features)),
        }
    }
    watch.offsets = offsets.unwrap_or_default();
    environ::apply(ebpf, section.watch, &mut watch, tasks, allowed)?;
    let programs = environ::attach_tracepoints(ebpf, pins)?;
    features.push(environ::tier_feature(Tier::PathTracepoints, &why_not));
    Ok((programs, watch))
}

/// Says that `tier`'s program was refused (a refused LSM program turns `bpf-lsm` off), and
/// returns the reason for the `environ-watch` line.
fn refused(tier: Tier, err: &KernelError, features: &mut [Feature]) -> String {
    if tier == Tier::LsmDeny {
        tracing::warn!(
            "environ LSM program refused ({err}); environ reads are detected, not denied"
        );
        if let Some(lsm) = features.iter_mut().find(|f| f.name == "bpf-lsm") {
            lsm.available = false;
            lsm.detail = format!(
                "the environ LSM program was refused ({err}); environ reads are detected, not denied"
            );
        }
        format!("LSM deny: the program was refused ({err})")
    } else {
        tracing::warn!("environ open probe refused ({err}); matching paths at openat");
        format!("open probe: refused ({err})")
    }
}

fn tier_name(tier: TierCap) -> &'static str {
    match tier {
        TierCap::Auto => "auto",
        TierCap::Probe => "probe",
        TierCap::Tracepoints => "tracepoints",
    }
}

fn feature_detail(features: &[Feature], name: &str) -> String {
    features
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.detail.clone())
        .unwrap_or_else(|| format!("{name} was not checked"))
}

/// The offsets the open probe needs, or why it cannot run: kprobes, and BTF for `proc_inode`.
fn open_probe_offsets(
    features: &[Feature],
    offsets: &Result<KernelOffsets, String>,
) -> Result<KernelOffsets, String> {
    if !features.iter().any(|f| f.name == "kprobes" && f.available) {
        return Err(format!("kprobes: {}", feature_detail(features, "kprobes")));
    }
    let offsets = offsets.clone()?;
    if offsets.proc_vfs_inode == 0 {
        return Err(
            "kernel BTF lacks struct proc_inode's vfs_inode and pid, or struct pid's numbers"
                .into(),
        );
    }
    Ok(offsets)
}

/// The guarded service's tasks (task id → tgid), and the executables allowed to read its environ:
/// the configured ones, and proxyguard itself (its audits read the environ). A replaced binary
/// (an upgrade) gets a new inode, picked up on the next tick.
fn watch_sets(section: &Section<'_>, root: Option<&Path>) -> Sets {
    let tasks = guarded_pids::tasks(&guarded_pids::tgids(section.guarded, root));
    (tasks, allowed_exes(section.watch))
}

/// The configured executables and proxyguard itself, those that exist.
fn allowed_exes(config: &WatchSection) -> BTreeSet<ExeId> {
    let mut exes = config.allow_exe.clone();
    if let Ok(own) = std::env::current_exe() {
        exes.push(own);
    }
    environ::exe_ids(&exes)
}
