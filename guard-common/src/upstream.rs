//! The upstream guard (cgroup `connect4` / `connect6`): only proxyguard's own cgroup, and the
//! cgroups an operator lists, may connect to the guarded LLM proxy's port on this host.
//!
//! Attached at the cgroup v2 root. A connect whose (port, destination) is not in
//! [`MAP_UPSTREAM_DEST_V4`] / [`MAP_UPSTREAM_DEST_V6`] passes after one LPM lookup; one that is
//! passes only from a cgroup in [`MAP_UPSTREAM_CGROUPS`], and is otherwise a violation, handled by
//! the mode in [`MAP_UPSTREAM_CONFIG`]. Events reuse [`crate::egress::EgressEvent`]'s layout
//! (`proto` is always TCP).

pub const PROG_UPSTREAM_CONNECT_V4: &str = "upstream_connect_v4";
pub const PROG_UPSTREAM_CONNECT_V6: &str = "upstream_connect_v6";

/// `Array` of one [`UpstreamConfig`].
pub const MAP_UPSTREAM_CONFIG: &str = "UPSTREAM_CONFIG";
/// LPM tries of [`crate::PortAddrV4`] / [`crate::PortAddrV6`] → `u32` 1: the guarded
/// destinations (the upstream's port on loopback, the unspecified address and the upstream's own
/// address).
pub const MAP_UPSTREAM_DEST_V4: &str = "UPSTREAM_DEST_V4";
pub const MAP_UPSTREAM_DEST_V6: &str = "UPSTREAM_DEST_V6";
/// Allowed cgroup id (`u64`, the cgroup directory's inode) → [`CGROUP_EXACT`] or
/// [`CGROUP_SUBTREE`].
pub const MAP_UPSTREAM_CGROUPS: &str = "UPSTREAM_CGROUPS";
/// Ring buffer of [`crate::egress::EgressEvent`].
pub const MAP_UPSTREAM_EVENTS: &str = "UPSTREAM_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_UPSTREAM_STATS: &str = "UPSTREAM_STATS";

pub const MAX_UPSTREAM_DESTS: u32 = 64;
pub const MAX_UPSTREAM_CGROUPS: u32 = 64;
pub const UPSTREAM_EVENTS_BYTES: u32 = 64 * 1024;

/// The cgroup itself may connect, not the cgroups below it (proxyguard's own cgroup: when the
/// daemon runs in the root cgroup, "below it" would be every process).
pub const CGROUP_EXACT: u32 = 1;
/// The cgroup and every cgroup below it may connect (an operator's `allow_cgroups` entry).
pub const CGROUP_SUBTREE: u32 = 2;

pub const STAT_ALLOWED: u32 = 0;
pub const STAT_DENIED: u32 = 1;
pub const STAT_WOULD_DENY: u32 = 2;
pub const STAT_EVENTS_LOST: u32 = 3;
pub const STAT_COUNT: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// [`crate::mode`].
    pub mode: u32,
    /// The deepest level of any [`CGROUP_SUBTREE`] cgroup (the root is level 0); ancestors are
    /// searched from level 1 down to this.
    pub max_level: u32,
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers without padding.
    unsafe impl aya::Pod for super::UpstreamConfig {}
}
