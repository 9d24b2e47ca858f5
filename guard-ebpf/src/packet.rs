//! Bounds-checked packet reads for XDP. Every read checks `data + offset + N <= data_end` once per
//! header block; this is the only place that dereferences packet memory.
//!
//! Fields are read as typed loads (`u16`, `u32`, `u64`) rather than byte arrays: LLVM's BPF
//! backend turns an unaligned read into one load per byte, which made parsing the largest part
//! of the program's cost. A typed load at an address that is only 2-byte aligned (an IPv4 header
//! behind a 14-byte Ethernet header) is one `ldx` instruction; the verifier accepts misaligned
//! packet loads wherever the architecture handles them (x86-64, arm64: no strict alignment is
//! requested at load), and the field offset inside the block is checked at compile time.

use aya_ebpf::programs::XdpContext;

/// `N` bytes of packet at a checked address.
#[derive(Clone, Copy)]
pub struct Block<const N: usize> {
    at: usize,
}

impl<const N: usize> Block<N> {
    /// The `N` bytes at `offset`, or `None` when the packet is shorter.
    #[inline(always)]
    pub fn at(ctx: &XdpContext, offset: usize) -> Option<Self> {
        let start = ctx.data();
        let end = ctx.data_end();
        if start + offset + N > end {
            return None;
        }
        Some(Block { at: start + offset })
    }

    /// The `T` at byte `AT` of the block, as it sits in the packet (network byte order).
    #[inline(always)]
    pub fn load<T: Copy, const AT: usize>(&self) -> T {
        const { assert!(AT + core::mem::size_of::<T>() <= N) };
        // SAFETY: [at, at + N) lies inside the packet, as checked in `at` (the verifier sees the
        // same check), and the field lies inside the block (checked at compile time above). The
        // load may be misaligned; see the module header for why that is accepted here.
        unsafe { core::ptr::read((self.at + AT) as *const T) }
    }

    /// A big-endian `u16` at byte `AT`, in host order.
    #[inline(always)]
    pub fn be16<const AT: usize>(&self) -> u16 {
        u16::from_be(self.load::<u16, AT>())
    }

    #[inline(always)]
    pub fn byte<const AT: usize>(&self) -> u8 {
        self.load::<u8, AT>()
    }
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed in; the field is a plain u32 read.
    unsafe { (*ctx.ctx).ingress_ifindex }
}
