//! Per-CPU counter helper shared by the program families.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to counter `index`. A missing slot is ignored: counters must never change a verdict.
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: the pointer comes from a map lookup that succeeded, and per-CPU slots are not
        // shared with other CPUs.
        unsafe { *slot += 1 };
    }
}
