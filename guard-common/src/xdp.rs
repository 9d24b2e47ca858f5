//! Per-source connection rate limit (XDP): token buckets for TCP SYNs to protected ports, with
//! allow and deny CIDR lists.

pub const PROG_XDP_SYN_LIMIT: &str = "syn_rate_limit";
/// A pass-through XDP program, the baseline for program-cost benchmarks.
pub const PROG_XDP_PASS: &str = "xdp_pass";

/// `Array` of one [`XdpConfig`].
pub const MAP_XDP_CONFIG: &str = "XDP_CONFIG";
/// `u16` destination port (host order) → `u32` 1: the ports whose SYNs are limited.
pub const MAP_XDP_PORTS: &str = "XDP_PORTS";
/// LRU hash of [`SourceKey`] → [`TokenBucket`].
pub const MAP_XDP_BUCKETS: &str = "XDP_BUCKETS";
/// LPM tries of `[u8; 4]` / `[u8; 16]` → `u32` 1.
pub const MAP_XDP_ALLOW_V4: &str = "XDP_ALLOW_V4";
pub const MAP_XDP_ALLOW_V6: &str = "XDP_ALLOW_V6";
pub const MAP_XDP_DENY_V4: &str = "XDP_DENY_V4";
pub const MAP_XDP_DENY_V6: &str = "XDP_DENY_V6";
/// Ring buffer of [`XdpEvent`].
pub const MAP_XDP_EVENTS: &str = "XDP_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_XDP_STATS: &str = "XDP_STATS";

pub const MAX_XDP_PORTS: u32 = 64;
pub const MAX_XDP_CIDRS: u32 = 16384;
pub const MAX_XDP_SOURCES: u32 = 65536;
pub const XDP_EVENTS_BYTES: u32 = 256 * 1024;

/// SYNs to protected ports that passed (allow-listed or within their rate).
pub const STAT_PASSED: u32 = 0;
/// SYNs dropped for exceeding the source's rate.
pub const STAT_DROPPED_RATE: u32 = 1;
/// SYNs dropped because the source is deny-listed.
pub const STAT_DROPPED_DENY: u32 = 2;
/// Monitor mode: SYNs that would have been dropped.
pub const STAT_WOULD_DROP: u32 = 3;
/// Drop events lost because the ring buffer was full.
pub const STAT_EVENTS_LOST: u32 = 4;
pub const STAT_COUNT: u32 = 5;

/// One token, in the bucket's fixed-point unit (milli-tokens), so sub-token refills are kept.
pub const TOKEN: u64 = 1000;

/// Tunables, changed at run time through [`MAP_XDP_CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// [`crate::mode`].
    pub mode: u32,
    /// SYNs per second each source may send.
    pub rate_per_sec: u32,
    /// Bucket depth, in SYNs.
    pub burst: u32,
    /// IPv6 sources are aggregated to this prefix length (a host usually owns a whole /64).
    pub v6_prefix_len: u32,
    /// [`LIST_ALLOW`] and [`LIST_DENY`] when those lists have entries, so an empty list costs
    /// no trie lookup per SYN.
    pub lists: u32,
    pub _pad: u32,
}

pub const LIST_ALLOW: u32 = 1;
pub const LIST_DENY: u32 = 2;

/// A rate-limited source: the address (IPv6 masked to the configured prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// [`crate::bind::FAMILY_V4`] or [`crate::bind::FAMILY_V6`].
    pub family: u32,
    /// IPv4 in the first four bytes; network byte order.
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Milli-tokens (see [`TOKEN`]).
    pub tokens: u64,
    /// Time up to which refills have been credited (`bpf_ktime_get_ns`).
    pub refilled_ns: u64,
    /// When the last drop event for this source was sent (at most one per second).
    pub last_event_ns: u64,
}

/// Why a SYN was (or would have been) dropped.
pub mod reason {
    pub const RATE: u32 = 1;
    pub const DENY_LIST: u32 = 2;
}

/// A drop (or monitor-mode would-drop), at most one per source per second.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XdpEvent {
    pub source: SourceKey,
    /// Destination port, host byte order.
    pub port: u16,
    pub _pad: u16,
    /// [`reason`].
    pub reason: u32,
    /// [`crate::verdict`].
    pub verdict: u32,
    pub ifindex: u32,
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::XdpEvent {}
}
