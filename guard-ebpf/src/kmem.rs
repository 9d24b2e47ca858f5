//! Reads for the environ watch: syscall tracepoint and kprobe arguments, user strings, and kernel struct
//! fields at offsets user space took from BTF. Every read goes through a `bpf_probe_read_*`
//! helper, which fails cleanly on a bad address; this is the only place those helpers are called.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user_str_bytes,
    },
    programs::{LsmContext, ProbeContext, TracePointContext},
};

/// A `long` field of a syscall tracepoint record at `offset`.
#[inline(always)]
pub fn tp_long(ctx: &TracePointContext, offset: usize) -> i64 {
    // SAFETY: `read_at` is a bounds-checked `bpf_probe_read` of the tracepoint record.
    unsafe { ctx.read_at::<i64>(offset) }.unwrap_or(0)
}

/// The user string whose address is the tracepoint field at `offset`, into `buf` (NUL-terminated;
/// `buf` is zeroed first so no stale bytes follow the string).
#[inline(always)]
pub fn tp_user_str(ctx: &TracePointContext, offset: usize, buf: &mut [u8]) -> bool {
    // SAFETY: as in `tp_long`; the pointer is only handed to the probe-read helper.
    let Ok(ptr) = (unsafe { ctx.read_at::<u64>(offset) }) else {
        return false;
    };
    // SAFETY: the helper checks the user address and writes at most `buf.len()` bytes.
    unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, buf) }.is_ok()
}

/// The LSM hook's first argument (`struct file *` for `file_open`).
#[inline(always)]
pub fn lsm_arg0(ctx: &LsmContext) -> u64 {
    ctx.arg::<u64>(0)
}

/// The kprobed function's argument `n` (a pointer or integer), or 0.
#[inline(always)]
pub fn probe_arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// The pointer-sized field at `base + offset` of a kernel struct, or 0.
#[inline(always)]
pub fn kernel_ptr(base: u64, offset: u32) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: probe-read of kernel memory; a bad address yields an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }.unwrap_or(0)
}

/// The kernel string at `ptr` into `buf` (NUL-terminated, truncated to fit).
#[inline(always)]
pub fn kernel_str(ptr: u64, buf: &mut [u8]) -> bool {
    if ptr == 0 {
        return false;
    }
    // SAFETY: as in `kernel_ptr`; the helper writes at most `buf.len()` bytes.
    unsafe { bpf_probe_read_kernel_str_bytes(ptr as *const u8, buf) }.is_ok()
}

/// The `u32` field at `base + offset` of a kernel struct, or 0.
#[inline(always)]
pub fn kernel_u32(base: u64, offset: u32) -> u32 {
    if base == 0 {
        return 0;
    }
    // SAFETY: as in `kernel_ptr`.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u32) }.unwrap_or(0)
}

/// The current task (`struct task_struct *`), for reading its fields with the helpers above.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: a helper call without memory arguments.
    unsafe { bpf_get_current_task() }
}
