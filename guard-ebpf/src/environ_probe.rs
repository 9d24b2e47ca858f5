//! The environ watch's open probe: a kprobe on `environ_open` (fs/proc/base.c), the `open` of
//! procfs's `environ` files. The kernel calls it only when one of them is opened, after path
//! resolution and after `security_file_open`, so it sees the file however it was named
//! (dirfd-relative, through symlinks or another procfs mount, `..`, long paths) and however it
//! was opened (`open(2)`, `openat`, `openat2`, `io_uring`), and costs nothing for other opens.
//! It reports only: a kprobe cannot refuse the open (the LSM tier does that, and when it is
//! attached this probe is not, so one open makes one event).
//!
//! The target is `proc_pid(inode)`: the `struct pid` of the inode's `struct proc_inode`, and its
//! number in the initial pid namespace, with the offsets user space read from BTF.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::kprobe, programs::ProbeContext};
use guard_common::environ::{PATH_LEN, SOURCE_PROBE};

use crate::{
    environ::{guarded_tgid, seen, ENVIRON_CONFIG},
    kmem::{kernel_ptr, kernel_u32, probe_arg},
};

/// `int environ_open(struct inode *inode, struct file *file)`.
#[kprobe]
pub fn environ_open_probe(ctx: ProbeContext) -> u32 {
    on_open(&ctx);
    0
}

// Inlined, as the tracepoints' body is: a subprogram returning nothing may leave a stack pointer
// in R0, which the verifier refuses.
#[inline(always)]
fn on_open(ctx: &ProbeContext) {
    let Some(config) = ENVIRON_CONFIG.get(0) else {
        return;
    };
    let offsets = &config.offsets;
    if offsets.proc_vfs_inode == 0 {
        return;
    }
    let inode = probe_arg(ctx, 0);
    if inode == 0 {
        return;
    }
    // container_of(inode, struct proc_inode, vfs_inode)->pid->numbers[0].nr
    let proc_inode = inode.wrapping_sub(offsets.proc_vfs_inode as u64);
    let pid = kernel_ptr(proc_inode, offsets.proc_pid);
    let Some(target) = guarded_tgid(kernel_u32(pid, offsets.pid_nr)) else {
        return;
    };
    let empty = [0u8; PATH_LEN];
    seen(
        config,
        bpf_get_current_pid_tgid(),
        target,
        SOURCE_PROBE,
        &empty,
    );
}
