//! Files the guarded service created (see `guard_common::created`). Where BPF LSM works,
//! `lsm/file_open` judges the `struct file` being opened; where it does not but the kernel has
//! kprobes, a kprobe on `security_file_open` judges the same `struct file` at the same point;
//! elsewhere tracepoints on the exit of `openat` and `openat2` read the new fd's `struct file`
//! from the task's fd table. The kprobe and the tracepoints need a perf event, which
//! `perf_event_paranoid` 3 refuses without CAP_SYS_ADMIN; an LSM link does not. The kprobe runs
//! for opens only; a syscall tracepoint puts every syscall of every task on the kernel's traced
//! path. User space attaches one of the three, never two, and only in fix mode (its one
//! consumer). Either way, for a guarded
//! task, when `FMODE_CREATED` is set the open made the file, and its inode and device go to user
//! space. Opens of existing files, even with `O_CREAT`, send nothing.
//!
//! Not seen: `mknod`, files made by a rename or a link, and tasks that joined the service in the
//! last 250 ms (user space refreshes the guarded set on that tick). The tracepoints also miss the
//! legacy `open(2)` and `creat(2)` syscalls and `io_uring` opens, which the LSM hook and the
//! kprobe see.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, lsm, map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{LsmContext, ProbeContext, TracePointContext},
};
use guard_common::created::{
    CreatedConfig, CreatedEvent, CREATED_EVENTS_BYTES, STAT_COUNT, STAT_EVENTS_LOST, STAT_RECORDED,
};

use crate::{
    environ::guarded_tgid,
    kmem::{current_task, kernel_ptr, kernel_u32, lsm_arg0, probe_arg, tp_long},
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

/// Never refuses an open: it only records. The file's `f_mode` already carries `FMODE_CREATED`
/// here (`lookup_open` sets it before `do_open` reaches `security_file_open`).
#[lsm(hook = "file_open")]
pub fn created_file_open(ctx: LsmContext) -> i32 {
    on_file_open(lsm_arg0(&ctx));
    0
}

/// `int security_file_open(struct file *file)`: the LSM hook's caller, so the same file at the
/// same point, for kernels with kprobes but no BPF LSM.
#[kprobe]
pub fn created_open_probe(ctx: ProbeContext) -> u32 {
    on_file_open(probe_arg(&ctx, 0));
    0
}

/// An ordinary open by a task that is not the service's leaves after a helper call and a hash
/// lookup.
#[inline(always)]
fn on_file_open(file: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(tgid) = guarded_tgid(pid_tgid as u32) else {
        return;
    };
    let Some(config) = CREATED_CONFIG.get(0) else {
        return;
    };
    if config.file_mode == 0 {
        return;
    }
    report_if_created(config, file, tgid, pid_tgid);
}

// Inlined, as in the environ programs: a subprogram returning nothing may leave a stack pointer
// in R0, which the verifier refuses.
#[inline(always)]
fn on_exit(ctx: &TracePointContext) {
    // The cheapest tests first: a failed open (one load from the record), then whether the
    // task is the service's (a helper call and a hash lookup), which almost no open on the host
    // is; only then the fd table.
    let fd = tp_long(ctx, TP_RET);
    if fd < 0 || fd > i32::MAX as i64 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(tgid) = guarded_tgid(pid_tgid as u32) else {
        return;
    };
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
    report_if_created(config, file, tgid, pid_tgid);
}

/// Sends `file`'s inode and device when its open created it.
#[inline(always)]
fn report_if_created(config: &CreatedConfig, file: u64, tgid: u32, pid_tgid: u64) {
    let offsets = &config.offsets;
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
