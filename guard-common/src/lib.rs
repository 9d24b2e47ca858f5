//! Types shared by proxyguard's kernel programs and its user space.
//!
//! Everything here is `#[repr(C)]` and `Copy`, so both sides agree on the layout of map keys, rule
//! values and event records byte for byte. Program and map names live here too, so the loader's
//! strings cannot drift from the symbols in the kernel object.
#![no_std]
#![deny(unsafe_code)]

pub mod bind;
pub mod created;
pub mod egress;
pub mod environ;
pub mod upstream;
pub mod xdp;

/// How a kernel program acts on what its rules do not allow.
///
/// Stored as a `u32` inside rule values, because enums are not safe to share with the kernel.
pub mod mode {
    /// Count and report what would be denied; deny nothing.
    pub const MONITOR: u32 = 0;
    /// Deny, count and report.
    pub const ENFORCE: u32 = 1;
}

/// What a program did with one attempt, as carried in event records.
pub mod verdict {
    /// The attempt was refused.
    pub const DENIED: u32 = 1;
    /// Monitor mode: the attempt would have been refused, and was let through.
    pub const WOULD_DENY: u32 = 2;
}

/// LPM key data for rules keyed by port and address prefix (bind rules, egress targets): the
/// port first, so one trie holds every port's prefixes. A key's prefix length is
/// `16 + CIDR prefix`; port 0 means "any port" where a family says so.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortAddrV4 {
    /// Port, big-endian.
    pub port: [u8; 2],
    /// Address, network byte order.
    pub addr: [u8; 4],
}

/// As [`PortAddrV4`], for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortAddrV6 {
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// Length of a task's `comm`, as the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: `#[repr(C)]` byte arrays without padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::PortAddrV4 {}
    unsafe impl aya::Pod for super::PortAddrV6 {}
}

/// Copies a record of type `T` out of the front of `bytes` (a ring-buffer item), or `None` when
/// `bytes` is too short. Items are only 8-byte aligned, so the read is unaligned.
#[cfg(feature = "user")]
#[allow(unsafe_code)]
pub fn read_record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked above, and `T: Pod` means every bit pattern is a valid `T`.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// An `lsm/file_open` program that allows everything. The daemon loads it (without attaching) to
/// learn whether this kernel accepts BPF LSM programs at all: some list `bpf` as an active LSM and
/// still refuse the load.
pub const PROG_LSM_PROBE: &str = "lsm_probe";
