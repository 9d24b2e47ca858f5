//! The created-files record: attaches the `openat`/`openat2` exit tracepoints (pinned, or adopts
//! pinned ones), writes their config, and feeds their reports into `checks::created`, where the
//! daemon's fix mode finds its proof that a file is the service's. The guarded task set is the
//! environ watch's map, so this runs only alongside the watch.

use std::path::Path;

use aya::{maps::Array, Ebpf};
use guard_common::{
    created::{
        CreatedConfig, CreatedEvent, FMODE_CREATED, MAP_CREATED_CONFIG, MAP_CREATED_STATS,
        PROG_CREATED_OPENAT, PROG_CREATED_OPENAT2, STAT_EVENTS_LOST, STAT_RECORDED,
    },
    environ::KernelOffsets,
};
use serde::Serialize;

use super::{btf_offsets, environ, maps, pins::PinDir, AttachedProgram, Feature, KernelError};
use crate::checks::created;

const TRACEPOINTS: [(&str, &str); 2] = [
    (PROG_CREATED_OPENAT, "sys_exit_openat"),
    (PROG_CREATED_OPENAT2, "sys_exit_openat2"),
];

pub const FEATURE: &str = "created-files";

/// Writes the config and attaches the programs. Without BTF offsets, or when a tracepoint is
/// refused, the record stays off (fix mode then proves ownership by open files and private temp
/// dirs only), and the `created-files` feature says why.
pub fn start(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    offsets: Result<KernelOffsets, String>,
    features: &mut Vec<Feature>,
) -> Vec<AttachedProgram> {
    let result = offsets
        .and_then(|offsets| {
            let file_mode = btf_offsets::file_mode_offset(Path::new("/sys/kernel/btf/vmlinux"))?;
            Ok((offsets, file_mode))
        })
        .and_then(|(offsets, file_mode)| {
            apply(ebpf, offsets, file_mode).map_err(|e| e.to_string())?;
            environ::attach_tracepoint_list(ebpf, pins, &TRACEPOINTS).map_err(|e| e.to_string())
        });
    match result {
        Ok(programs) => {
            created::activate();
            features.push(Feature {
                name: FEATURE,
                available: true,
                detail: "files the guarded service creates are recorded (openat exit tracepoints)"
                    .into(),
            });
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
