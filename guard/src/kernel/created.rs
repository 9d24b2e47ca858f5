//! The created-files record: attaches `lsm/file_open` where BPF LSM works, else the
//! `openat`/`openat2` exit tracepoints (pinned, or adopts pinned ones), writes their config, and
//! feeds their reports into `checks::created`, where the daemon's fix mode finds its proof that a
//! file is the service's. The guarded task set is the environ watch's map, so this runs only
//! alongside the watch.
//!
//! The LSM program comes first because it needs no perf event: Debian's kernels refuse
//! `perf_event_open(2)` without CAP_SYS_ADMIN (`perf_event_paranoid` 3), which the shipped unit
//! does not grant, so there the tracepoints cannot attach at all.

use std::path::Path;

use aya::{maps::Array, Ebpf};
use guard_common::{
    created::{
        CreatedConfig, CreatedEvent, FMODE_CREATED, MAP_CREATED_CONFIG, MAP_CREATED_EVENTS,
        MAP_CREATED_STATS, PROG_CREATED_FILE_OPEN, PROG_CREATED_OPENAT, PROG_CREATED_OPENAT2,
        STAT_EVENTS_LOST, STAT_RECORDED,
    },
    environ::KernelOffsets,
};
use serde::Serialize;

use super::{
    btf_offsets, environ, events, maps, pins::PinDir, AttachedProgram, Feature, KernelError,
};
use crate::checks::created;

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
    /// `created_openat` and `created_openat2` on the `openat`/`openat2` exit tracepoints.
    Tracepoints,
}

impl Mechanism {
    /// As `status` and the `created-files` feature line name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Lsm => "lsm/file_open",
            Mechanism::Tracepoints => "tracepoints",
        }
    }

    /// The mechanisms to try, best first: the LSM hook only where BPF LSM is active (the environ
    /// watch's LSM program attached, or `bpf-lsm` probed available), the tracepoints always.
    pub fn order(lsm_active: bool) -> &'static [Mechanism] {
        if lsm_active {
            &[Mechanism::Lsm, Mechanism::Tracepoints]
        } else {
            &[Mechanism::Tracepoints]
        }
    }

    /// The mechanism the attached `programs` keep the record with, if any: the one truth that the
    /// feature line, `status` and the event reader all go by.
    pub fn of(programs: &[AttachedProgram]) -> Option<Mechanism> {
        let has = |name: &str| programs.iter().any(|p| p.name == name);
        if has(PROG_CREATED_FILE_OPEN) {
            Some(Mechanism::Lsm)
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
            Mechanism::Tracepoints => environ::attach_tracepoint_list(ebpf, pins, &TRACEPOINTS),
        }
    }
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

/// Writes the config and attaches the programs of the first mechanism of
/// [`Mechanism::order`] that the kernel takes. Without BTF offsets, or when every mechanism is
/// refused, the record stays off (fix mode then proves ownership by open files and private temp
/// dirs only), and the `created-files` feature says why.
pub fn start(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    offsets: Result<KernelOffsets, String>,
    lsm_active: bool,
    features: &mut Vec<Feature>,
) -> Vec<AttachedProgram> {
    let result = offsets
        .and_then(|offsets| {
            let file_mode = btf_offsets::file_mode_offset(Path::new("/sys/kernel/btf/vmlinux"))?;
            Ok((offsets, file_mode))
        })
        .and_then(|(offsets, file_mode)| {
            apply(ebpf, offsets, file_mode).map_err(|e| e.to_string())?;
            let mut refused = Vec::new();
            for &mechanism in Mechanism::order(lsm_active) {
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
    match result {
        Ok(programs) => {
            created::activate();
            if let Some(mechanism) = Mechanism::of(&programs) {
                features.push(feature(mechanism));
            }
            programs
        }
        Err(why) => {
            let detail = format!(
                "{why}; fix mode proves a file the service's by its open files and private temp dirs only"
            );
            tracing::warn!("created-files: {detail}");
            features.push(Feature {
                name: FEATURE,
                available: false,
                detail,
            });
            Vec::new()
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
    fn lsm_is_tried_first_only_where_it_is_active() {
        assert_eq!(
            Mechanism::order(true),
            [Mechanism::Lsm, Mechanism::Tracepoints]
        );
        assert_eq!(Mechanism::order(false), [Mechanism::Tracepoints]);
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
