//! Environ watch (threat 7): opens of a guarded process's `/proc/<pid>/environ`.
//!
//! Three tiers; user space attaches the first the kernel allows, and only that one, so one open
//! makes one event:
//! - LSM deny: `lsm/file_open` recognizes the file itself (name `environ` on a procfs, parent
//!   directory a guarded task) whatever path led there, and refuses it in enforce mode to all but
//!   the process itself and allowed executables.
//! - Open probe (`environ_probe.rs`): a kprobe on the kernel's `environ_open`, which runs for
//!   those files only, reports every open of one, whatever path, syscall or `io_uring` led there.
//! - Path tracepoints (here): `openat`/`openat2` classify the path the caller passed. A relative
//!   `environ` is resolved against the opener's own fd table: the directory its dirfd names,
//!   which counts when it is a guarded task's directory on a procfs. The record's fields are
//!   plain context loads; eight bytes of the path are read first, and only a path starting
//!   `/proc/` or an `environ` is copied whole, so an ordinary open leaves after one helper call
//!   (a plain 8-byte user copy, not a string read). `tracepoint_floor`, an empty program, is the benchmark's floor.
//!
//! Known gaps of the path tracepoints (the LSM program and the open probe have none of them, as
//! they see the opened file, not the text of a path):
//! - spellings that path resolution normalizes: `//proc/1/environ`, `/proc/1/./environ`,
//!   `/proc/2/../1/environ`;
//! - symlinks to the file or to /proc (`ln -s /proc/1 /tmp/p; cat /tmp/p/environ`), and procfs
//!   mounted elsewhere (`mount -t proc proc /mnt`);
//! - relative paths against a working directory (`cd /proc/1; cat environ`) or against a dirfd
//!   of `/proc` itself (`openat(proc_fd, "1/environ")`); only a dirfd of `/proc/<pid>` (or
//!   `/proc/self`) is resolved, and only on kernels with BTF (its fd-table offsets come from there);
//! - the legacy `open(2)` syscall and `io_uring` opens, which do not pass these tracepoints;
//! - paths longer than 128 bytes are truncated, and match nothing.
//!
//! Every tier: a thread started, or a process joining the service, in the last 250 ms is not yet
//! in `ENVIRON_GUARDED` (user space rescans on that tick).

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
    },
    macros::{lsm, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{LsmContext, TracePointContext},
};
use guard_common::{
    environ::{
        classify, EnvironConfig, EnvironEvent, ExeId, KernelOffsets, PathKind,
        ENVIRON_EVENTS_BYTES, MAX_ALLOWED, MAX_GUARDED_TASKS, PATH_LEN, PROC_SUPER_MAGIC,
        SOURCE_LSM, SOURCE_TRACEPOINT, STAT_ALLOWED_EXE, STAT_COUNT, STAT_DENIED, STAT_EVENTS_LOST,
        STAT_OTHER_READS, STAT_SELF_READS, STAT_WOULD_DENY, VERDICT_ALLOWED_EXE, VERDICT_SEEN,
        VERDICT_SELF,
    },
    mode, verdict, COMM_LEN,
};

use crate::{
    kmem::{
        current_task, kernel_ptr, kernel_str, kernel_u32, lsm_arg0, tp_long, user_str, user_u64,
    },
    stats::bump,
};

/// Offsets in the `syscalls/sys_enter_openat{,2}` records (after the 8-byte common header and
/// the 4-byte syscall number, padded): `dfd` and `filename`.
const TP_DFD: usize = 16;
const TP_FILENAME: usize = 24;
const EPERM: i32 = 1;

/// `/proc/` and `environ\0` as the little-endian words of a path's first eight bytes.
const HEAD_PROC: u64 = u64::from_le_bytes(*b"/proc/\0\0");
const HEAD_PROC_MASK: u64 = 0xffff_ffff_ffff;
const HEAD_ENVIRON: u64 = u64::from_le_bytes(*b"environ\0");

#[map]
pub(crate) static ENVIRON_CONFIG: Array<EnvironConfig> = Array::with_max_entries(1, 0);
#[map]
static ENVIRON_GUARDED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_GUARDED_TASKS, 0);
#[map]
static ENVIRON_ALLOWED: HashMap<ExeId, u32> = HashMap::with_max_entries(MAX_ALLOWED, 0);
#[map]
static ENVIRON_EVENTS: RingBuf = RingBuf::with_byte_size(ENVIRON_EVENTS_BYTES, 0);
#[map]
static ENVIRON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[tracepoint]
pub fn environ_openat(ctx: TracePointContext) -> u32 {
    on_enter(&ctx);
    0
}

#[tracepoint]
pub fn environ_openat2(ctx: TracePointContext) -> u32 {
    on_enter(&ctx);
    0
}

/// Does nothing: the benchmark attaches it to the tracepoints the watch uses, to measure what
/// the kernel's syscall tracepoint path costs an open before any program of ours runs.
#[tracepoint]
pub fn tracepoint_floor(_ctx: TracePointContext) -> u32 {
    0
}

/// The guarded tgid that task id `task` belongs to (the created-files programs ask too).
#[inline(always)]
pub fn guarded_tgid(task: u32) -> Option<u32> {
    // SAFETY: the value is copied out at once.
    unsafe { ENVIRON_GUARDED.get(task) }.copied()
}

// Inlined: as a BPF subprogram returning nothing, LLVM may leave a stack pointer in R0, which
// the verifier refuses at the subprogram's exit.
#[inline(always)]
fn on_enter(ctx: &TracePointContext) {
    // Almost every open on the host ends here, after an 8-byte read: only `/proc/...` and a
    // relative `environ` can name an environ file the way `classify` reads paths.
    // A plain 8-byte copy, not a string read: a path that can match is at least eight bytes
    // long (`environ\0`, `/proc/N/...`), so one that ends within them, next to an unmapped
    // page, fails the copy and could not have matched anyway.
    let filename = tp_long(ctx, TP_FILENAME) as u64;
    let Some(word) = user_u64(filename) else {
        return;
    };
    if word & HEAD_PROC_MASK != HEAD_PROC && word != HEAD_ENVIRON {
        return;
    }
    let mut path = [0u8; PATH_LEN];
    if !user_str(filename, &mut path) {
        return;
    }
    let kind = classify(&path);
    if kind == PathKind::Other {
        return;
    }
    let Some(config) = ENVIRON_CONFIG.get(0) else {
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let target = match kind {
        PathKind::Environ(pid) => guarded_tgid(pid),
        PathKind::SelfEnviron => guarded_tgid(tgid),
        PathKind::RelativeEnviron => dirfd_task(&config.offsets, tp_long(ctx, TP_DFD)),
        PathKind::Other => None,
    };
    let Some(target) = target else {
        return;
    };
    seen(config, pid_tgid, target, SOURCE_TRACEPOINT, &path);
}

/// A detection tier saw `pid_tgid` open `target`'s environ: counted and reported, never refused.
/// The daemon's own audit reads are neither.
#[inline(always)]
pub(crate) fn seen(
    config: &EnvironConfig,
    pid_tgid: u64,
    target: u32,
    source: u32,
    path: &[u8; PATH_LEN],
) {
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config.daemon_tgid {
        return;
    }
    let verdict = if target == tgid {
        bump(&ENVIRON_STATS, STAT_SELF_READS);
        VERDICT_SELF
    } else if allowed_exe(&config.offsets) {
        bump(&ENVIRON_STATS, STAT_OTHER_READS);
        bump(&ENVIRON_STATS, STAT_ALLOWED_EXE);
        VERDICT_ALLOWED_EXE
    } else {
        bump(&ENVIRON_STATS, STAT_OTHER_READS);
        VERDICT_SEEN
    };
    report(pid_tgid, target, verdict, source, path);
}

/// The guarded tgid whose `/proc/<pid>` directory the opener's fd `dfd` names, read from its fd
/// table (`current->files->fdt->fd[dfd]`). `AT_FDCWD` and other negative values name none.
fn dirfd_task(offsets: &KernelOffsets, dfd: i64) -> Option<u32> {
    if dfd < 0 || dfd > i32::MAX as i64 || offsets.task_files == 0 {
        return None;
    }
    let files = kernel_ptr(current_task(), offsets.task_files);
    let fdt = kernel_ptr(files, offsets.files_fdt);
    if dfd as u64 >= kernel_u32(fdt, offsets.fdt_max_fds) as u64 {
        return None;
    }
    let fds = kernel_ptr(fdt, offsets.fdt_fd);
    let file = kernel_ptr(fds, (dfd as u32).wrapping_mul(8));
    let dir = kernel_ptr(file, offsets.file_dentry);
    let sb = kernel_ptr(dir, offsets.dentry_sb);
    if kernel_ptr(sb, offsets.sb_magic) & 0xffff_ffff != PROC_SUPER_MAGIC {
        return None;
    }
    guarded_tgid(dentry_number(dir, offsets.dentry_name)?)
}

#[lsm(hook = "file_open")]
pub fn environ_file_open(ctx: LsmContext) -> i32 {
    match judge_file(&ctx) {
        Some(true) => -EPERM,
        _ => 0,
    }
}

/// `Some(true)` to refuse the open. `None` for every file that is not a guarded environ.
fn judge_file(ctx: &LsmContext) -> Option<bool> {
    let config = *ENVIRON_CONFIG.get(0)?;
    let offsets = config.offsets;
    if offsets.file_dentry == 0 {
        return None;
    }
    let dentry = kernel_ptr(lsm_arg0(ctx), offsets.file_dentry);
    if !name_is(dentry, offsets.dentry_name, b"environ\0") {
        return None;
    }
    let sb = kernel_ptr(dentry, offsets.dentry_sb);
    if kernel_ptr(sb, offsets.sb_magic) & 0xffff_ffff != PROC_SUPER_MAGIC {
        return None;
    }
    // /proc/<tid>/environ, or /proc/<pid>/task/<tid>/environ: the parent names a task.
    let parent = kernel_ptr(dentry, offsets.dentry_parent);
    let target = guarded_tgid(dentry_number(parent, offsets.dentry_name)?)?;

    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == config.daemon_tgid {
        return Some(false);
    }
    let empty = [0u8; PATH_LEN];
    if tgid == target {
        bump(&ENVIRON_STATS, STAT_SELF_READS);
        report(pid_tgid, target, VERDICT_SELF, SOURCE_LSM, &empty);
        return Some(false);
    }
    bump(&ENVIRON_STATS, STAT_OTHER_READS);
    if allowed_exe(&offsets) {
        bump(&ENVIRON_STATS, STAT_ALLOWED_EXE);
        report(pid_tgid, target, VERDICT_ALLOWED_EXE, SOURCE_LSM, &empty);
        return Some(false);
    }
    let enforce = config.mode == mode::ENFORCE;
    let (stat, outcome) = if enforce {
        (STAT_DENIED, verdict::DENIED)
    } else {
        (STAT_WOULD_DENY, verdict::WOULD_DENY)
    };
    bump(&ENVIRON_STATS, stat);
    report(pid_tgid, target, outcome, SOURCE_LSM, &empty);
    Some(enforce)
}

/// Whether the current task runs an allowed executable (`current->mm->exe_file`'s inode).
#[inline(always)]
fn allowed_exe(offsets: &KernelOffsets) -> bool {
    if offsets.task_mm == 0 {
        return false;
    }
    let mm = kernel_ptr(current_task(), offsets.task_mm);
    let exe = kernel_ptr(mm, offsets.mm_exe_file);
    let inode = kernel_ptr(exe, offsets.file_inode);
    if inode == 0 {
        return false;
    }
    let id = ExeId {
        ino: kernel_ptr(inode, offsets.inode_ino),
        dev: kernel_u32(kernel_ptr(inode, offsets.inode_sb), offsets.sb_dev),
        _pad: 0,
    };
    // SAFETY: only the presence of the entry is used.
    unsafe { ENVIRON_ALLOWED.get(id) }.is_some()
}

/// Whether the dentry's name is exactly `want` (NUL included).
#[inline(always)]
fn name_is(dentry: u64, name_offset: u32, want: &[u8; 8]) -> bool {
    let mut name = [0u8; 8];
    if !kernel_str(kernel_ptr(dentry, name_offset), &mut name) {
        return false;
    }
    name == *want
}

/// The dentry's name as a task id, when it is all digits.
#[inline(always)]
fn dentry_number(dentry: u64, name_offset: u32) -> Option<u32> {
    let mut name = [0u8; 12];
    if !kernel_str(kernel_ptr(dentry, name_offset), &mut name) {
        return None;
    }
    let mut value = 0u32;
    let mut i = 0;
    while i < 11 {
        let c = name[i];
        if c == 0 {
            break;
        }
        if !c.is_ascii_digit() {
            return None;
        }
        value = value.wrapping_mul(10).wrapping_add((c - b'0') as u32);
        i += 1;
    }
    if i == 0 || i == 11 {
        return None;
    }
    Some(value)
}

fn report(pid_tgid: u64, target: u32, outcome: u32, source: u32, path: &[u8; PATH_LEN]) {
    let Some(mut entry) = ENVIRON_EVENTS.reserve::<EnvironEvent>(0) else {
        bump(&ENVIRON_STATS, STAT_EVENTS_LOST);
        return;
    };
    entry.write(EnvironEvent {
        // SAFETY: helper call without memory arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        target,
        verdict: outcome,
        source,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        path: *path,
    });
    entry.submit(0);
}
