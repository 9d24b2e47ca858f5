//! Files the guarded service created (see `guard_common::created`): tracepoints on the exit of
//! `openat` and `openat2`. For a guarded task whose open succeeded, the new fd's `struct file` is
//! read from its fd table; when `FMODE_CREATED` is set, the open made the file, and its inode
//! and device go to user space. Opens of existing files, even with `O_CREAT`, send nothing.
//!
//! Not seen: the legacy `open(2)` and `creat(2)` syscalls, `io_uring` opens, `mknod`, files made
//! by a rename or a link, and tasks that joined the service in the last 250 ms (user space
//! refreshes the guarded set on that tick).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use guard_common::created::{
    CreatedConfig, CreatedEvent, CREATED_EVENTS_BYTES, STAT_COUNT, STAT_EVENTS_LOST, STAT_RECORDED,
};

use crate::{
    environ::guarded_tgid,
    kmem::{current_task, kernel_ptr, kernel_u32, tp_long},
    stats::bump,
};

/// Offset of `ret` in the `syscalls/sys_exit_openat{,2}` records (after the 8-byte common header
/// and the 4-byte syscall number, padded).
const TP_RET: usize = 16;

#[map]
static CREATED_CONFIG: Array<CreatedConfig> = Array::with_max_entries(1, 0);
#[map]
static CREATED_EVENTS: RingBuf = RingBuf::with_byte_size(CREATED_EVENTS_BYTES, 0);
#[map]
static CREATED_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[tracepoint]
pub fn created_openat(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

#[tracepoint]
pub fn created_openat2(ctx: TracePointContext) -> u32 {
    on_exit(&ctx);
    0
}

// Inlined, as in the environ programs: a subprogram returning nothing may leave a stack pointer
// in R0, which the verifier refuses.
#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The cheap test first: almost every open on the host is not the service's.
    let Some(tgid) = guarded_tgid(pid_tgid as u32) else {
        return;
    };
    let fd = tp_long(ctx, TP_RET);
    if fd < 0 || fd > i32::MAX as i64 {
        return;
    }
    let Some(config) = CREATED_CONFIG.get(0) else {
        return;
    };
    let offsets = &config.offsets;
    if config.file_mode == 0 || offsets.task_files == 0 {
        return;
    }
    // current->files->fdt->fd[fd]: the file the open just installed.
    let files = kernel_ptr(current_task(), offsets.task_files);
    let fdt = kernel_ptr(files, offsets.files_fdt);
    if fd as u64 >= kernel_u32(fdt, offsets.fdt_max_fds) as u64 {
        return;
    }
    let fds = kernel_ptr(fdt, offsets.fdt_fd);
    let file = kernel_ptr(fds, (fd as u32).wrapping_mul(8));
    if kernel_u32(file, config.file_mode) & config.fmode_created == 0 {
        return;
    }
    let inode = kernel_ptr(file, offsets.file_inode);
    if inode == 0 {
        return;
    }
    let event = CreatedEvent {
        tgid,
        pid: pid_tgid as u32,
        ino: kernel_ptr(inode, offsets.inode_ino),
        dev: kernel_u32(kernel_ptr(inode, offsets.inode_sb), offsets.sb_dev),
        _pad: 0,
    };
    let Some(mut entry) = CREATED_EVENTS.reserve::<CreatedEvent>(0) else {
        bump(&CREATED_STATS, STAT_EVENTS_LOST);
        return;
    };
    entry.write(event);
    entry.submit(0);
    bump(&CREATED_STATS, STAT_RECORDED);
}
