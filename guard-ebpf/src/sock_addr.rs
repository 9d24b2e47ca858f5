//! Accessors for `bpf_sock_addr` (the cgroup bind/connect/sendmsg context). Fields are read one
//! u32 at a time, the access width the verifier accepts; this is the only place that
//! dereferences the context.

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};

/// The requested IPv4 port (host order) and address (network order).
#[inline(always)]
pub fn read_v4(ctx: &SockAddrContext) -> (u16, [u8; 4]) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed in; both fields are u32 loads.
    let (port, ip) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).user_ip4),
        )
    };
    (u16::from_be(port as u16), ip.to_ne_bytes())
}

/// The requested IPv6 port (host order) and address (network order).
#[inline(always)]
pub fn read_v6(ctx: &SockAddrContext) -> (u16, [u8; 16]) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let mut addr = [0u8; 16];
    // SAFETY: as in `read_v4`; each of the four words is its own 4-byte load.
    let port = unsafe {
        for i in 0..4 {
            let word = core::ptr::read_volatile(&(*sa).user_ip6[i]);
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        core::ptr::read_volatile(&(*sa).user_port)
    };
    (u16::from_be(port as u16), addr)
}

/// The IPv4 address inside a v4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if addr[..12] == prefix {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}
