//! Reads for the environ watch: syscall tracepoint and kprobe arguments, user strings, and kernel struct
//! fields at offsets user space took from BTF. Every read of user or kernel memory goes through a
//! `bpf_probe_read_*` helper, which fails cleanly on a bad address; this is the only place those
//! helpers are called. Tracepoint record fields are plain loads from the context instead: the
//! verifier checks each one against the record (read-only, aligned, in bounds), and a load is
//! one instruction where the helper is a call on every open of the host.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    programs::{LsmContext, ProbeContext, TracePointContext},
    EbpfContext,
};

/// A `long` (or pointer) field of a syscall tracepoint record at `offset` (8-byte aligned).
#[inline(always)]
pub fn tp_long(ctx: &TracePointContext, offset: usize) -> i64 {
    // SAFETY: a load from the record the kernel passed in; the verifier refuses the program
    // unless `offset` is aligned and inside the record.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(offset) as *const i64) }
}

/// The user string at `ptr` (a tracepoint's pointer field), into `buf` (NUL-terminated; the
/// helper zeroes `buf` on failure).
#[inline(always)]
pub fn user_str(ptr: u64, buf: &mut [u8]) -> bool {
    // SAFETY: the helper checks the user address and writes at most `buf.len()` bytes.
    unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, buf) }.is_ok()
}

/// The first eight bytes at the user address `ptr`, or `None` where they are not all readable.
/// A plain copy, not a string read: it neither looks for the NUL nor zeroes the rest, so it is
/// the cheaper helper for a fixed-size head.
#[inline(always)]
pub fn user_u64(ptr: u64) -> Option<u64> {
    // SAFETY: the helper checks the user address and copies exactly eight bytes.
    unsafe { bpf_probe_read_user(ptr as *const u64) }.ok()
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
