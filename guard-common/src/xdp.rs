//! Per-source connection rate limit (XDP): token buckets for TCP SYNs to protected ports, with
//! allow and deny CIDR lists, and a second level per wider prefix that limits how fast sources
//! new to the limiter are admitted (see `guard-ebpf/src/xdp.rs` for why).

pub const PROG_XDP_SYN_LIMIT: &str = "syn_rate_limit";
/// The same limiter reading the coarse clock (`bpf_ktime_get_coarse_ns`, Linux 5.11+): loaded
/// in its place where the kernel has the helper.
pub const PROG_XDP_SYN_LIMIT_COARSE: &str = "syn_limit_coarse";
/// The same limiter reading `bpf_jiffies64` (Linux 5.5+; the verifier inlines it into one load):
/// the first choice wherever user space knows the kernel's `HZ`.
pub const PROG_XDP_SYN_LIMIT_JIFFIES: &str = "syn_limit_jiffy";
/// A pass-through XDP program, the baseline for program-cost benchmarks.
pub const PROG_XDP_PASS: &str = "xdp_pass";
/// Pass-through programs that read one clock each: what a clock read costs, for the benchmark.
pub const PROG_XDP_CLOCK_FINE: &str = "xdp_clock_fine";
pub const PROG_XDP_CLOCK_COARSE: &str = "xdp_clock_coarse";
pub const PROG_XDP_CLOCK_JIFFIES: &str = "xdp_clock_jiffy";

/// Bumped whenever the meaning of a pinned XDP map's bytes changes while its sizes stay the
/// same (the pin check compares sizes and types itself). Recorded per map in the pin manifest;
/// a pinned map of another version is replaced, never read with the new types.
pub const XDP_STATE_VERSION: u32 = 3;

/// `Array` of one [`XdpConfig`] (tunables and the ports whose SYNs are limited).
pub const MAP_XDP_CONFIG: &str = "XDP_CONFIG";
/// LRU hashes of source → [`TokenBucket`]: IPv4 by its `u32` address (as loaded from the packet,
/// network byte order in memory), IPv6 by its first 64 bits masked to the configured prefix.
pub const MAP_XDP_BUCKETS_V4: &str = "XDP_BUCKETS_V4";
pub const MAP_XDP_BUCKETS_V6: &str = "XDP_BUCKETS_V6";
/// LRU hashes of wider prefix → [`TokenBucket`] of new-source admissions (same key forms).
pub const MAP_XDP_PREFIX_V4: &str = "XDP_PREFIX_V4";
pub const MAP_XDP_PREFIX_V6: &str = "XDP_PREFIX_V6";
/// `Array` of one [`EventCap`]: the global cap on drop events.
pub const MAP_XDP_EVENT_CAP: &str = "XDP_EVENT_CAP";
/// LPM tries of `[u8; 4]` / `[u8; 16]` → `u32` 1.
pub const MAP_XDP_ALLOW_V4: &str = "XDP_ALLOW_V4";
pub const MAP_XDP_ALLOW_V6: &str = "XDP_ALLOW_V6";
pub const MAP_XDP_DENY_V4: &str = "XDP_DENY_V4";
pub const MAP_XDP_DENY_V6: &str = "XDP_DENY_V6";
/// Ring buffer of [`XdpEvent`].
pub const MAP_XDP_EVENTS: &str = "XDP_EVENTS";
/// Per-CPU `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_XDP_STATS: &str = "XDP_STATS";

/// 64-bit words of the port bitmap: one bit per port, so every port list fits.
pub const PORT_WORDS: usize = 1024;
pub const MAX_XDP_CIDRS: u32 = 16384;
/// Per-source buckets, per family.
pub const MAX_XDP_SOURCES: u32 = 65536;
/// Wider-prefix admission buckets, per family.
pub const MAX_XDP_PREFIXES: u32 = 16384;
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
/// SYNs from sources new to the limiter, dropped because their wider prefix admits no more new
/// sources for now.
pub const STAT_DROPPED_NEW_SOURCE: u32 = 5;
/// Drop events not sent because the global event cap was reached.
pub const STAT_EVENTS_SUPPRESSED: u32 = 6;
pub const STAT_COUNT: u32 = 7;

/// Tunables and protected ports, changed at run time through [`MAP_XDP_CONFIG`]: one value, so
/// the program makes one lookup for both. Masks are applied to keys as they sit in memory
/// (network byte order), so user space builds them with `to_be`.
///
/// Everything an IPv4 or IPv6 SYN over its source's limit reads sits in the first 64 bytes (one
/// cache line: the map is `BPF_F_MMAPABLE`, which page-aligns the value), up to four protected
/// ports included; the admission tunables and the port bitmap (more than four ports) follow.
/// The limits are GCRA intervals: a bucket is the time its source's next SYN is due
/// ([`TokenBucket`]), so judging it is one comparison and a refused SYN writes nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// [`crate::mode`].
    pub mode: u32,
    /// [`LIST_ALLOW`] and [`LIST_DENY`] when those lists have entries, so an empty list costs
    /// no trie lookup per SYN; [`PORTS_IN_BITMAP`] when [`Self::ports`] is not the whole list.
    pub flags: u32,
    /// The protected ports when there are one to four of them; unused slots repeat the first.
    pub ports: [u16; 4],
    /// Nanoseconds between SYNs at `rate_per_sec`, and how far ahead of the clock a source's
    /// bucket may run: `(burst - 1)` intervals, so a full bucket lets `burst` SYNs through at once.
    pub source_interval_ns: u64,
    pub source_tolerance_ns: u64,
    /// IPv6 source mask (the first 64 bits, to the source prefix).
    pub v6_source_mask: u64,
    /// IPv4 wider-prefix mask.
    pub v4_prefix_mask: u32,
    /// Nanoseconds per jiffy (10^9 / the kernel's `HZ`) for the build that reads `bpf_jiffies64`,
    /// and what to subtract from `jiffies * ns_per_jiffy` to get `CLOCK_MONOTONIC` (so every
    /// build's buckets mean the same times); 0 and 0 when user space does not know `HZ` (that
    /// build is then never loaded).
    pub ns_per_jiffy: u32,
    pub jiffies_offset_ns: u64,
    pub _pad: u64,
    /// As `source_*`, for the admission of new sources per wider prefix (`new_sources_per_sec`,
    /// `new_sources_burst`).
    pub new_interval_ns: u64,
    pub new_tolerance_ns: u64,
    /// IPv6 wider-prefix mask.
    pub v6_prefix_mask: u64,
    /// Drop events per second, over all sources.
    pub events_per_sec: u32,
    /// Prefix lengths, for events.
    pub v4_prefix_len: u8,
    pub v6_prefix_len: u8,
    pub v6_source_len: u8,
    pub _pad2: u8,
    pub _pad3: [u64; 4],
    /// Every protected port, read only with [`PORTS_IN_BITMAP`].
    pub port_bitmap: PortBitmap,
}

// The over-limit path's fields in the first cache line, the bitmap on a line of its own.
const _: () = {
    assert!(core::mem::offset_of!(XdpConfig, _pad) + 8 == 64);
    assert!(core::mem::offset_of!(XdpConfig, port_bitmap) == 128);
};

pub const LIST_ALLOW: u32 = 1;
pub const LIST_DENY: u32 = 2;
/// More than four protected ports, or none: the program reads the bitmap.
pub const PORTS_IN_BITMAP: u32 = 4;
/// `BPF_F_MMAPABLE`: an array created with it has its values page-aligned.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

impl XdpConfig {
    /// Protects `ports`: inline when there are one to four, in the bitmap otherwise.
    pub fn set_ports(&mut self, ports: &[u16]) {
        self.port_bitmap = PortBitmap::default();
        let mut inline = [0u16; 4];
        let mut distinct = 0;
        for port in ports {
            if self.port_bitmap.contains(*port) {
                continue;
            }
            self.port_bitmap.set(*port);
            if distinct < inline.len() {
                inline[distinct] = *port;
            }
            distinct += 1;
        }
        if (1..=inline.len()).contains(&distinct) {
            self.flags &= !PORTS_IN_BITMAP;
            let first = inline[0];
            inline[distinct..].fill(first);
            self.ports = inline;
        } else {
            self.flags |= PORTS_IN_BITMAP;
            self.ports = [0; 4];
        }
    }

    /// Whether SYNs to `port` are judged: what the program decides from the same fields.
    pub fn protects(&self, port: u16) -> bool {
        if self.flags & PORTS_IN_BITMAP != 0 {
            self.port_bitmap.contains(port)
        } else {
            self.ports.contains(&port)
        }
    }
}

/// The protected ports: bit `port % 64` of word `port / 64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBitmap {
    pub words: [u64; PORT_WORDS],
}

impl Default for PortBitmap {
    fn default() -> Self {
        PortBitmap {
            words: [0; PORT_WORDS],
        }
    }
}

impl PortBitmap {
    pub fn set(&mut self, port: u16) {
        self.words[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    pub fn contains(&self, port: u16) -> bool {
        self.words[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
}

/// A source's (or a wider prefix's) limit as GCRA: the time its bucket would be full again were
/// no SYN refused. A SYN at `now` passes while `due_ns <= now + tolerance` and moves `due_ns` to
/// `max(due_ns, now) + interval`; that is a token bucket of depth `burst` refilled at the rate,
/// judged with one comparison, and a refused SYN leaves the bucket as it was.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// The program's clock, in ns.
    pub due_ns: u64,
    /// When the last drop event for this key was sent (at most one per second).
    pub last_event_ns: u64,
}

/// The global event cap: events sent in the current one-second window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCap {
    pub window_ns: u64,
    pub sent: u64,
}

/// Why a SYN was (or would have been) dropped.
pub mod reason {
    pub const RATE: u32 = 1;
    pub const DENY_LIST: u32 = 2;
    /// A source new to the limiter, from a prefix that admits no more new sources for now.
    pub const NEW_SOURCE: u32 = 3;
}

/// A drop (or monitor-mode would-drop): at most one per key per second, and at most
/// `events_per_sec` in all.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XdpEvent {
    /// [`crate::bind::FAMILY_V4`] or [`crate::bind::FAMILY_V6`].
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// [`reason`].
    pub reason: u32,
    /// [`crate::verdict`].
    pub verdict: u32,
    pub ifindex: u32,
    /// Prefix length of `addr` (32 or 128 for one deny-listed address).
    pub prefix_len: u32,
    pub _pad: u32,
    /// The source, masked to `prefix_len`; network byte order, IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod pod {
    #![allow(unsafe_code)]
    // SAFETY: plain `#[repr(C)]` integers and byte arrays with explicit padding fields.
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::PortBitmap {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::EventCap {}
    unsafe impl aya::Pod for super::XdpEvent {}
}
