//! Bounds-checked packet reads for XDP. Every read checks `data + offset + len <= data_end` first;
//! this is the only place that dereferences packet memory.

use aya_ebpf::programs::XdpContext;

/// `N` bytes at `offset`, or `None` when the packet is shorter.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + N) lies inside the packet, as checked
    // just above; the verifier sees the same check.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed in; the field is a plain u32 read.
    unsafe { (*ctx.ctx).ingress_ifindex }
}
