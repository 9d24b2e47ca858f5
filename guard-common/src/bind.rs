//! Bind rules: which addresses a guarded port may be bound to (cgroup `bind4` / `bind6`).
//!
//! A port with no entry in [`MAP_BIND_PORTS`] is not guarded. For a guarded port, the kernel looks
//! the requested address up in the per-family LPM tries; a miss is a violation, handled by the
//! port's mode.

use crate::COMM_LEN;

pub const PROG_BIND_V4: &str = "bind_rule_v4";
pub const PROG_BIND_V6: &str = "bind_rule_v6";

/// `u16` port (host byte order) → [`BindPortRule`].
pub const MAP_BIND_PORTS: &str = "BIND_PORTS";
/// LPM trie of [`crate::PortAddrV4`] → `u32` (1 = allowed).
pub const MAP_BIND_ALLOW_V4: &str = "BIND_ALLOW_V4";
/// LPM trie of [`crate::PortAddrV6`] → `u32` (1 = allowed).
pub const MAP_BIND_ALLOW_V6: &str = "BIND_ALLOW_V6";
/// Ring buffer of [`BindEvent`].
pub const MAP_BIND_EVENTS: &str = "BIND_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_BIND_STATS: &str = "BIND_STATS";

pub const MAX_BIND_PORTS: u32 = 1024;
pub const MAX_BIND_ADDRS: u32 = 4096;
pub const BIND_EVENTS_BYTES: u32 = 64 * 1024;

/// Binds of guarded ports to an allowed address.
pub const STAT_ALLOWED: u32 = 0;
/// Binds refused (enforce mode).
pub const STAT_DENIED: u32 = 1;
/// Binds that monitor mode let through but would have refused.
pub const STAT_WOULD_DENY: u32 = 2;
/// Events lost because the ring buffer was full.
pub const STAT_EVENTS_LOST: u32 = 3;
pub const STAT_COUNT: u32 = 4;

/// Rule for one guarded port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindPortRule {
    /// [`crate::mode`].
    pub mode: u32,
    /// The owner cgroup's level below the root (the root is 0); unused without an owner.
    pub owner_level: u32,
    /// When non-zero, only tasks in this cgroup (or below it) may bind the port at all.
    pub owner_cgroup: u64,
}

/// Address families, as in `AF_INET` / `AF_INET6`.
pub const FAMILY_V4: u16 = 2;
pub const FAMILY_V6: u16 = 10;

/// One refused (or, in monitor mode, would-be refused) bind.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BindEvent {
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// [`crate::verdict`].
    pub verdict: u32,
    pub comm: [u8; COMM_LEN],
    /// IPv4 in the first four bytes for [`FAMILY_V4`]; network byte order.
    pub addr: [u8; 16],
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// [`REASON_ADDRESS`] or [`REASON_OWNER`].
    pub reason: u32,
}

/// The address is not in the port's allow list.
pub const REASON_ADDRESS: u32 = 1;
/// The caller is outside the port's owner cgroup.
pub const REASON_OWNER: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding fields, so every
    // bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::BindPortRule {}
    unsafe impl aya::Pod for super::BindEvent {}
}
