//! Egress allow-list for the guarded service (cgroup `connect4/6`, `sendmsg4/6`).
//!
//! The programs are attached at the cgroup v2 root and judge only tasks inside a guarded cgroup
//! (or below one), so a restarted service, which gets a new cgroup, is covered as soon as user
//! space records the new cgroup's id.

use crate::COMM_LEN;

pub const PROG_EGRESS_CONNECT_V4: &str = "egress_connect_v4";
pub const PROG_EGRESS_CONNECT_V6: &str = "egress_connect_v6";
pub const PROG_EGRESS_SENDMSG_V4: &str = "egress_sendmsg_v4";
pub const PROG_EGRESS_SENDMSG_V6: &str = "egress_sendmsg_v6";

/// `Array` of one [`EgressConfig`].
pub const MAP_EGRESS_CONFIG: &str = "EGRESS_CONFIG";
/// Guarded cgroup id (`u64`, the cgroup directory's inode) → `u32` 1.
pub const MAP_EGRESS_CGROUPS: &str = "EGRESS_CGROUPS";
/// LPM tries of [`crate::PortAddrV4`] / [`crate::PortAddrV6`] → `u32` 1. Port 0 means any port.
pub const MAP_EGRESS_ALLOW_V4: &str = "EGRESS_ALLOW_V4";
pub const MAP_EGRESS_ALLOW_V6: &str = "EGRESS_ALLOW_V6";
/// Ring buffer of [`EgressEvent`].
pub const MAP_EGRESS_EVENTS: &str = "EGRESS_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_EGRESS_STATS: &str = "EGRESS_STATS";

pub const MAX_EGRESS_CGROUPS: u32 = 256;
pub const MAX_EGRESS_TARGETS: u32 = 4096;
pub const EGRESS_EVENTS_BYTES: u32 = 64 * 1024;
/// Deepest cgroup level searched for a guarded ancestor.
pub const MAX_CGROUP_LEVEL: u32 = 16;

pub const STAT_ALLOWED: u32 = 0;
pub const STAT_DENIED: u32 = 1;
pub const STAT_WOULD_DENY: u32 = 2;
pub const STAT_EVENTS_LOST: u32 = 3;
pub const STAT_COUNT: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// [`crate::mode`].
    pub mode: u32,
    /// The deepest level of any guarded cgroup (the root is level 0); ancestors are searched from
    /// level 1 down to this.
    pub max_level: u32,
}

pub const PROTO_TCP: u16 = 6;
pub const PROTO_UDP: u16 = 17;

/// One refused (or, in monitor mode, would-be refused) connect or send.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EgressEvent {
    pub cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// [`crate::verdict`].
    pub verdict: u32,
    pub comm: [u8; COMM_LEN],
    /// IPv4 in the first four bytes for [`crate::bind::FAMILY_V4`]; network byte order.
    pub addr: [u8; 16],
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] for connect, [`PROTO_UDP`] for sendmsg.
    pub proto: u16,
    /// The upstream guard's destination bit ([`crate::upstream::DEST_UPSTREAM`] or
    /// [`crate::upstream::DEST_GATEWAY`]); 0 in the egress allow-list's events.
    pub dest: u16,
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::EgressConfig {}
    unsafe impl aya::Pod for super::EgressEvent {}
}
