//! The upstream guard (cgroup `connect4` / `connect6`): a small set of guarded local
//! destinations, each with the cgroups that may connect to it. The guarded LLM proxy's port
//! ([`DEST_UPSTREAM`]: proxyguard's own cgroup and the cgroups an operator lists) and the provider
//! gateway's port ([`DEST_GATEWAY`]: proxyguard's own cgroup and the guarded service's).
//!
//! Attached at the cgroup v2 root. A connect whose (port, destination) is not in
//! [`MAP_UPSTREAM_DEST_V4`] / [`MAP_UPSTREAM_DEST_V6`] passes after one LPM lookup; one that is
//! gets the destination's bit from the trie and passes only from a cgroup whose
//! [`CgroupAllow`] in [`MAP_UPSTREAM_CGROUPS`] has that bit, and is otherwise a violation, handled
//! by the mode in [`MAP_UPSTREAM_CONFIG`]. Events reuse [`crate::egress::EgressEvent`]'s layout
//! (`proto` is always TCP, `dest` the destination's bit).
//!
//! Layout 2 (this one): the cgroup map's value is a [`CgroupAllow`] of destination bits, and the
//! config carries [`UPSTREAM_LAYOUT`]. Layout 1 (one destination; the value a `u32`
//! [`CGROUP_EXACT`] or [`CGROUP_SUBTREE`]) has other value sizes, so a daemon of this build finds
//! those pins of another layout and recreates them instead of adopting them (`pin_state.rs`);
//! the old programs keep their own maps until their links run the new programs.

pub const PROG_UPSTREAM_CONNECT_V4: &str = "upstream_connect_v4";
pub const PROG_UPSTREAM_CONNECT_V6: &str = "upstream_connect_v6";

/// `Array` of one [`UpstreamConfig`].
pub const MAP_UPSTREAM_CONFIG: &str = "UPSTREAM_CONFIG";
/// LPM tries of [`crate::PortAddrV4`] / [`crate::PortAddrV6`] → `u32` destination bits: the
/// guarded destinations (each one's port on loopback, the unspecified address and its own
/// address). The upstream's bit is 1, as layout 1 wrote it.
pub const MAP_UPSTREAM_DEST_V4: &str = "UPSTREAM_DEST_V4";
pub const MAP_UPSTREAM_DEST_V6: &str = "UPSTREAM_DEST_V6";
/// Allowed cgroup id (`u64`, the cgroup directory's inode) → [`CgroupAllow`].
pub const MAP_UPSTREAM_CGROUPS: &str = "UPSTREAM_CGROUPS";
/// Ring buffer of [`crate::egress::EgressEvent`].
pub const MAP_UPSTREAM_EVENTS: &str = "UPSTREAM_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_UPSTREAM_STATS: &str = "UPSTREAM_STATS";

pub const MAX_UPSTREAM_DESTS: u32 = 64;
/// proxyguard's own cgroup, the `allow_cgroups` entries and the guarded service's cgroups.
pub const MAX_UPSTREAM_CGROUPS: u32 = 320;
pub const UPSTREAM_EVENTS_BYTES: u32 = 64 * 1024;

/// The layout of this family's maps, in [`UpstreamConfig::layout`].
pub const UPSTREAM_LAYOUT: u32 = 2;

/// The guarded LLM proxy's port (`proxy.upstream`).
pub const DEST_UPSTREAM: u32 = 1;
/// The provider gateway's port (`[providers] listen`).
pub const DEST_GATEWAY: u32 = 2;

/// Layout 1's value for a cgroup that may connect itself, not the cgroups below it; kept as the
/// name of that reach in user space (proxyguard's own cgroup: when the daemon runs in the root
/// cgroup, "below it" would be every process).
pub const CGROUP_EXACT: u32 = 1;
/// Layout 1's value for a cgroup and every cgroup below it (an `allow_cgroups` entry, the
/// guarded service's cgroup).
pub const CGROUP_SUBTREE: u32 = 2;

/// The destinations one cgroup may connect to, as destination bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupAllow {
    /// Destinations the cgroup itself may connect to.
    pub exact: u32,
    /// Destinations the cgroup and every cgroup below it may connect to.
    pub subtree: u32,
}

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
    /// [`UPSTREAM_LAYOUT`], written by user space.
    pub layout: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers without padding.
    unsafe impl aya::Pod for super::UpstreamConfig {}
    unsafe impl aya::Pod for super::CgroupAllow {}
}
