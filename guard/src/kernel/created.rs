//! The created-files record: attaches `lsm/file_open` where BPF LSM works, else a kprobe on
//! `security_file_open` where the kernel has kprobes, else the `openat`/`openat2` exit
//! tracepoints (pinned, or adopts pinned ones), writes their config, and feeds their reports
//! into `checks::created`, where the daemon's fix mode finds its proof that a file is the
//! service's. Fix mode (`[watch] temp_files = "fix"`) is its one consumer, so it runs only then:
//! a reload that turns fix mode on attaches it, one that turns it off detaches it. The guarded
//! task set is the environ watch's map, so this runs only alongside the watch.
//!
//! The LSM program comes first because it needs no perf event: Debian's kernels refuse
//! `perf_event_open(2)` without CAP_SYS_ADMIN (`perf_event_paranoid` 3), which the shipped unit
//! does not grant, so there the kprobe and the tracepoints cannot attach at all. The kprobe
//! comes before the tracepoints because it runs for opens only: once a syscall tracepoint has a
//! program, every syscall of every task takes the kernel's traced slow path.

use std::path::Path;

use aya::{maps::Array, Ebpf};
use guard_common::{
    created::{
        CreatedConfig, CreatedEvent, CREATED_PROBE_FUNCTION, FMODE_CREATED, MAP_CREATED_CONFIG,
        MAP_CREATED_EVENTS, MAP_CREATED_STATS, PROG_CREATED_FILE_OPEN, PROG_CREATED_OPENAT,
        PROG_CREATED_OPENAT2, PROG_CREATED_OPEN_PROBE, STAT_EVENTS_LOST, STAT_RECORDED,
    },
    environ::KernelOffsets,
};
use serde::Serialize;

use super::{
    btf_offsets, environ, events, maps, pins::PinDir, AttachedProgram, Feature, KernelError,
};
use crate::{checks::created, config::watch::Tier as TierCap};

const TRACEPOINTS: [(&str, &str); 2] = [
    (PROG_CREATED_OPENAT, "sys_exit_openat"),
    (PROG_CREATED_OPENAT2, "sys_exit_openat2"),
];

pub const FEATURE: &str = "created-files";

/// Every report feeds the daemon's record (no audit line: a creation by the service is not an
/// event, only evidence for the fix mode).
pub const EVENTS: events::Source = events::Source {
    what: "created-files events",
    map: MAP_CREATED_EVENTS,
    read: |ring| Box::pin(events::read_records(ring, MAP_CREATED_EVENTS, on_event)),
};

/// Which kernel programs keep the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `created_file_open` on `lsm/file_open`.
    Lsm,
    /// `created_open_probe`, a kprobe on `security_file_open`.
    Probe,
    /// `created_openat` and `created_openat2` on the `openat`/`openat2` exit tracepoints.
    Tracepoints,
}

/// What the kernel offers the record, as the start found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// BPF LSM is active (the environ watch's LSM program attached, or `bpf-lsm` probed).
    pub lsm: bool,
    /// Kprobe programs can attach (the `kprobes` feature).
    pub kprobes: bool,
}

impl Mechanism {
    /// As `status` and the `created-files` feature line name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Lsm => "lsm/file_open",
            Mechanism::Probe => "kprobe/security_file_open",
            Mechanism::Tracepoints => "tracepoints",
        }
    }

    /// The mechanisms to try, best first: the LSM hook, the kprobe, the tracepoints, each only
    /// where the kernel has it. `[watch] tier` says where the list starts, as it does for the
    /// watch: `probe` starts at the kprobe and `tracepoints` at the tracepoints, with the
    /// stronger hooks kept as fallbacks after them (the record's programs refuse nothing, so a
    /// cap never has to leave the record off).
    pub fn order(hooks: Hooks, cap: TierCap) -> Vec<Mechanism> {
        let all = [
            (Mechanism::Lsm, hooks.lsm),
            (Mechanism::Probe, hooks.kprobes),
            (Mechanism::Tracepoints, true),
        ];
        let first = match cap {
            TierCap::Auto => 0,
            TierCap::Probe => 1,
            TierCap::Tracepoints => 2,
        };
        all[first..]
            .iter()
            .chain(&all[..first])
            .filter(|(_, available)| *available)
            .map(|(mechanism, _)| *mechanism)
            .collect()
    }

    /// The mechanism the attached `programs` keep the record with, if any: the one truth that the
    /// feature line, `status` and the event reader all go by.
    pub fn of(programs: &[AttachedProgram]) -> Option<Mechanism> {
        let has = |name: &str| programs.iter().any(|p| p.name == name);
        if has(PROG_CREATED_FILE_OPEN) {
            Some(Mechanism::Lsm)
        } else if has(PROG_CREATED_OPEN_PROBE) {
            Some(Mechanism::Probe)
        } else if has(PROG_CREATED_OPENAT) && has(PROG_CREATED_OPENAT2) {
            Some(Mechanism::Tracepoints)
        } else {
            None
        }
    }

    fn attach(self, ebpf: &mut Ebpf, pins: &PinDir) -> Result<Vec<AttachedProgram>, KernelError> {
        match self {
            Mechanism::Lsm => {
                environ::attach_file_open(ebpf, pins, PROG_CREATED_FILE_OPEN, "detect")
                    .map(|p| vec![p])
            }
            Mechanism::Probe => {
                environ::attach_kprobe(ebpf, pins, PROG_CREATED_OPEN_PROBE, CREATED_PROBE_FUNCTION)
                    .map(|p| vec![p])
            }
            Mechanism::Tracepoints => environ::attach_tracepoint_list(ebpf, pins, &TRACEPOINTS),
        }
    }
}

/// Whether `name` is one of the record's programs.
pub fn is_record_program(name: &str) -> bool {
    [
        PROG_CREATED_FILE_OPEN,
        PROG_CREATED_OPEN_PROBE,
        PROG_CREATED_OPENAT,
        PROG_CREATED_OPENAT2,
    ]
    .contains(&name)
}

/// The `created-files` feature line for a record kept by `mechanism`.
pub fn feature(mechanism: Mechanism) -> Feature {
    Feature {
        name: FEATURE,
        available: true,
        detail: format!(
            "files the guarded service creates are recorded by {}",
            mechanism.as_str()
        ),
    }
}

/// The `created-files` feature line while fix mode is off: nothing is attached, and nothing is
/// missing either (so it is not among `status`'s unavailable features).
pub fn off_feature() -> Feature {
    Feature {
        name: FEATURE,
        available: true,
        detail: OFF_DETAIL.into(),
    }
}

/// What `status` says of a record that is off because fix mode is.
pub const OFF_DETAIL: &str =
    "not attached: [watch] temp_files = \"report\" does not use it (fix mode \
     alone does, and a reload into fix mode attaches it)";

/// Writes the config and attaches the programs of the first mechanism of
/// [`Mechanism::order`] that the kernel takes. Without BTF offsets, or when every mechanism is
/// refused, the record stays off (fix mode then proves ownership by open files and private temp
/// dirs only), and the returned `created-files` feature says why.
pub fn start(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    offsets: Result<KernelOffsets, String>,
    order: &[Mechanism],
) -> (Vec<AttachedProgram>, Feature) {
    let result = offsets
        .and_then(|offsets| {
            let file_mode = btf_offsets::file_mode_offset(Path::new("/sys/kernel/btf/vmlinux"))?;
            Ok((offsets, file_mode))
        })
        .and_then(|(offsets, file_mode)| {
            apply(ebpf, offsets, file_mode).map_err(|e| e.to_string())?;
            let mut refused = Vec::new();
            for &mechanism in order {
                match mechanism.attach(ebpf, pins) {
                    Ok(programs) => return Ok(programs),
                    Err(err) => {
                        tracing::warn!("created-files: {} refused ({err})", mechanism.as_str());
                        refused.push(format!("{}: {err}", mechanism.as_str()));
                    }
                }
            }
            Err(refused.join("; "))
        });
    // Whatever attached, nothing else of the record's stays on a hook.
    unpin_except(pins, result.as_deref().unwrap_or_default());
    match result {
        Ok(programs) => {
            created::set_active(true);
            let mechanism = Mechanism::of(&programs);
            // `attach` returns every program of one mechanism, so `of` names it.
            let line = mechanism.map(feature).unwrap_or_else(off_feature);
            (programs, line)
        }
        Err(why) => {
            created::set_active(false);
            let detail = format!(
                "{why}; fix mode proves a file the service's by its open files and private temp dirs only"
            );
            tracing::warn!("created-files: {detail}");
            (
                Vec::new(),
                Feature {
                    name: FEATURE,
                    available: false,
                    detail,
                },
            )
        }
    }
}

/// Detaches the record: unpins its links (their pins are the only references, so the programs
/// leave the hooks) and drops them from `programs`. The record already kept stays, but it is no
/// longer evidence: files made from now on are not in it.
pub fn stop(pins: &PinDir, programs: &mut Vec<AttachedProgram>) {
    programs.retain(|p| !is_record_program(p.name));
    unpin_except(pins, &[]);
    created::set_active(false);
}

/// Removes every pin the record's programs may have on any of their hooks, but those of `keep`:
/// after [`stop`], and after a mechanism that failed half-way (the first tracepoint attached,
/// the second refused) so that no stray program is left on a hook.
fn unpin_except(pins: &PinDir, keep: &[AttachedProgram]) {
    let hooks = [
        (PROG_CREATED_FILE_OPEN, "file_open".to_owned()),
        (PROG_CREATED_OPEN_PROBE, CREATED_PROBE_FUNCTION.to_owned()),
    ]
    .into_iter()
    .chain(
        TRACEPOINTS
            .iter()
            .map(|(name, event)| (*name, format!("syscalls/{event}"))),
    );
    for (name, target) in hooks {
        if keep.iter().any(|p| p.name == name && p.target == target) {
            continue;
        }
        let path = pins.link_path(name, &target);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(program = name, "created-files: detached"),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), "created-files: cannot unpin: {err}")
            }
        }
    }
}

fn apply(ebpf: &mut Ebpf, offsets: KernelOffsets, file_mode: u32) -> Result<(), KernelError> {
    let name = MAP_CREATED_CONFIG;
    let mut array: Array<_, CreatedConfig> = maps::typed(ebpf, name)?;
    array
        .set(
            0,
            CreatedConfig {
                offsets,
                file_mode,
                fmode_created: FMODE_CREATED,
            },
            0,
        )
        .map_err(|source| KernelError::Map { name, source })
}

/// One report from the kernel, into the record.
pub fn on_event(event: &CreatedEvent) {
    // The kernel's MKDEV (major << 20 | minor) to user space's `st_dev`.
    let (major, minor) = (u64::from(event.dev >> 20), u64::from(event.dev & 0xf_ffff));
    created::record(nix::sys::stat::makedev(major, minor), event.ino, event.tgid);
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CreatedStats {
    /// Creations by guarded tasks the kernel reported.
    pub recorded: u64,
    /// Creations lost because the ring buffer was full.
    pub events_lost: u64,
    /// Files in the daemon's bounded record now, and records dropped to keep it bounded.
    pub tracked: u64,
    pub evicted: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<CreatedStats, KernelError> {
    let [recorded, events_lost] =
        maps::percpu_sums(ebpf, MAP_CREATED_STATS, [STAT_RECORDED, STAT_EVENTS_LOST])?;
    let record = created::stats();
    Ok(CreatedStats {
        recorded,
        events_lost,
        tracked: record.tracked,
        evicted: record.evicted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(name: &'static str) -> AttachedProgram {
        AttachedProgram {
            name,
            hook: "test",
            target: String::new(),
            mode: "detect",
            adopted: false,
            replaced: false,
            program_id: None,
        }
    }

    #[test]
    fn each_hook_is_tried_only_where_the_kernel_has_it_best_first() {
        use Mechanism::*;
        let hooks = |lsm, kprobes| Hooks { lsm, kprobes };
        assert_eq!(
            Mechanism::order(hooks(true, true), TierCap::Auto),
            [Lsm, Probe, Tracepoints]
        );
        assert_eq!(
            Mechanism::order(hooks(true, false), TierCap::Auto),
            [Lsm, Tracepoints]
        );
        // No BPF LSM but kprobes (a Debian kernel booted without `lsm=...,bpf`): the kprobe,
        // which only opens pay, before the syscall tracepoints, which every syscall pays.
        assert_eq!(
            Mechanism::order(hooks(false, true), TierCap::Auto),
            [Probe, Tracepoints]
        );
        // This host: neither.
        assert_eq!(
            Mechanism::order(hooks(false, false), TierCap::Auto),
            [Tracepoints]
        );
    }

    #[test]
    fn the_tier_cap_says_where_the_order_starts_and_keeps_the_rest_as_fallbacks() {
        use Mechanism::*;
        let both = Hooks {
            lsm: true,
            kprobes: true,
        };
        assert_eq!(
            Mechanism::order(both, TierCap::Probe),
            [Probe, Tracepoints, Lsm]
        );
        assert_eq!(
            Mechanism::order(both, TierCap::Tracepoints),
            [Tracepoints, Lsm, Probe]
        );
        let lsm_only = Hooks {
            lsm: true,
            kprobes: false,
        };
        assert_eq!(
            Mechanism::order(lsm_only, TierCap::Probe),
            [Tracepoints, Lsm]
        );
    }

    #[test]
    fn the_mechanism_is_read_from_the_attached_programs() {
        let lsm = [
            attached("environ_file_open"),
            attached(PROG_CREATED_FILE_OPEN),
        ];
        assert_eq!(Mechanism::of(&lsm), Some(Mechanism::Lsm));
        let tracepoints = [
            attached("environ_openat"),
            attached(PROG_CREATED_OPENAT),
            attached(PROG_CREATED_OPENAT2),
        ];
        assert_eq!(Mechanism::of(&tracepoints), Some(Mechanism::Tracepoints));
        let probe = [
            attached("environ_open_probe"),
            attached(PROG_CREATED_OPEN_PROBE),
        ];
        assert_eq!(Mechanism::of(&probe), Some(Mechanism::Probe));
        // Half of the tracepoints, or only the environ watch's programs: no record.
        assert_eq!(Mechanism::of(&tracepoints[..2]), None);
        assert_eq!(Mechanism::of(&[attached("environ_file_open")]), None);
    }

    #[test]
    fn the_feature_line_names_the_mechanism() {
        let line = feature(Mechanism::Lsm);
        assert!(line.available);
        assert!(
            line.detail.ends_with("recorded by lsm/file_open"),
            "{line:?}"
        );
        assert!(feature(Mechanism::Tracepoints)
            .detail
            .ends_with("recorded by tracepoints"));
        assert!(feature(Mechanism::Probe)
            .detail
            .ends_with("recorded by kprobe/security_file_open"));
        // Off by config is not a missing kernel feature.
        assert!(off_feature().available);
        assert!(off_feature().detail.contains("temp_files = \"report\""));
    }

    #[test]
    fn only_the_records_programs_are_its_own() {
        for name in [
            PROG_CREATED_FILE_OPEN,
            PROG_CREATED_OPEN_PROBE,
            PROG_CREATED_OPENAT,
            PROG_CREATED_OPENAT2,
        ] {
            assert!(is_record_program(name), "{name}");
        }
        assert!(!is_record_program("environ_openat"));
        assert!(!is_record_program("environ_open_probe"));
    }

    #[test]
    fn a_kernel_report_is_found_by_st_dev() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata("/").unwrap();
        let (major, minor) = (
            nix::sys::stat::major(meta.dev()),
            nix::sys::stat::minor(meta.dev()),
        );
        // An inode number no real file on `/` has here, so other tests cannot collide with it.
        let ino = u64::MAX - 11;
        on_event(&CreatedEvent {
            tgid: 7,
            pid: 8,
            ino,
            dev: ((major << 20) | minor) as u32,
            _pad: 0,
        });
        assert_eq!(created::lookup(meta.dev(), ino).map(|r| r.tgid), Some(7));
    }
}
