//! Files the guarded service created: in `lsm/file_open` where BPF LSM works (the file being
//! opened), else in a kprobe on `security_file_open` where the kernel has kprobes (the same
//! file, at the same point), else on the way out of `openat`/`openat2` (a guarded task's new fd
//! looked up in its fd table); when the open created the file (`FMODE_CREATED` in the file's `f_mode`) its inode
//! and device are sent to user space. The daemon's fix mode takes
//! that as proof that the file is the service's own (owner alone is not: many services run as
//! root, and so do the tools whose files share /tmp with them).

use crate::environ::KernelOffsets;

pub const PROG_CREATED_OPENAT: &str = "created_openat";
pub const PROG_CREATED_OPENAT2: &str = "created_openat2";
/// The LSM program, attached instead of the two tracepoints where BPF LSM works.
pub const PROG_CREATED_FILE_OPEN: &str = "created_file_open";
/// The kprobe, attached instead of the two tracepoints where the kernel has kprobes: it runs for
/// opens only, where a syscall tracepoint puts every syscall of every task on the traced path.
pub const PROG_CREATED_OPEN_PROBE: &str = "created_open_probe";
/// The function it probes: `int security_file_open(struct file *file)`, which the LSM hook's
/// callers go through (`do_dentry_open`), with `FMODE_CREATED` already in `f_mode`.
pub const CREATED_PROBE_FUNCTION: &str = "security_file_open";

/// `Array` of one [`CreatedConfig`].
pub const MAP_CREATED_CONFIG: &str = "CREATED_CONFIG";
/// Ring buffer of [`CreatedEvent`].
pub const MAP_CREATED_EVENTS: &str = "CREATED_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_CREATED_STATS: &str = "CREATED_STATS";

pub const CREATED_EVENTS_BYTES: u32 = 64 * 1024;

/// Files created by guarded tasks and sent to user space.
pub const STAT_RECORDED: u32 = 0;
/// Creations the ring buffer had no room for (user space fell behind).
pub const STAT_EVENTS_LOST: u32 = 1;
pub const STAT_COUNT: u32 = 2;

/// `FMODE_CREATED` in `include/linux/fs.h`: bit 20 both before and after the fmode bits were
/// reordered (6.9). It travels in the config, so a kernel that moves it again needs no rebuild.
pub const FMODE_CREATED: u32 = 1 << 20;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatedConfig {
    /// The fd-table and inode offsets, as for the environ watch.
    pub offsets: KernelOffsets,
    /// `file.f_mode`; 0 turns the recording off.
    pub file_mode: u32,
    /// The `FMODE_CREATED` bit.
    pub fmode_created: u32,
}

/// One file created by a guarded task.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreatedEvent {
    pub tgid: u32,
    pub pid: u32,
    pub ino: u64,
    /// The kernel's `MKDEV(major, minor)` (major shifted by 20), as in [`crate::environ::ExeId`].
    pub dev: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: `#[repr(C)]` integers with explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::CreatedConfig {}
    unsafe impl aya::Pod for super::CreatedEvent {}
}
