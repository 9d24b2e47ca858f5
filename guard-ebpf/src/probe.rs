//! Feature probes: programs loaded, never attached, to learn what the running kernel accepts.

use aya_ebpf::{macros::lsm, programs::LsmContext};

/// Allows every open. Only its successful load matters.
#[lsm(hook = "file_open")]
pub fn lsm_probe(_ctx: LsmContext) -> i32 {
    0
}
