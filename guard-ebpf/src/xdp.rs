//! Per-source SYN rate limit (XDP), with a second level that source rotation cannot escape.
//!
//! Only TCP SYNs (not SYN-ACKs) to a protected port are judged; every other packet passes
//! untouched. Order: deny list (always drop), allow list (always pass), then the source's token
//! bucket (IPv4 per address, IPv6 per `ipv6_prefix`, at most /64). Updates to one bucket from two
//! CPUs can race; the worst case is a token more or less, which is cheaper than a lock.
//!
//! **Rotation.** A source the limiter has not seen has no bucket. Before it gets one, its wider
//! prefix (`/24` IPv4 and `/48` IPv6 by default) pays one token from an admission bucket of its
//! own (`new_sources_per_sec`, `new_sources_burst`); with none left, the SYN is dropped and no
//! entry is made. So a flood that rotates through a prefix's addresses gets that prefix's
//! admission rate and no more, and it cannot push the buckets of known sources out of the LRU
//! faster than the admission rates allow. Known sources are judged by their own bucket only, so
//! a busy NAT or office prefix is not slowed by its own steady clients.
//! Why prefixes and not one global budget for new sources: a global budget lets one attacker's
//! rotation refuse every new client everywhere; per prefix, only new clients inside the rotating
//! prefix wait (the admission bucket refills while they retry their SYN).
//!
//! **Events** are capped twice: once per bucket per second, and `events_per_sec` over all
//! sources; what the global cap holds back is counted. Deny-listed sources get no bucket (a
//! spoofed deny-listed flood would otherwise fill the map), so only the global cap bounds their
//! events.
//!
//! **Cost.** A SYN over its source's limit is the path a flood takes, so it is kept short: one
//! array lookup gives the tunables and the protected ports (both in one cache line for up to
//! four ports), one LRU lookup the source's bucket, and the bucket is GCRA (the time the next SYN
//! is due; see `TokenBucket`): one comparison, no division, and nothing written for a refused SYN
//! but its counter and, once a second, its event clock.
//!
//! Three entry points share the code, by clock: `syn_limit_jiffy` reads `bpf_jiffies64`, which
//! the verifier inlines into one load, scaled to ns with the `HZ` user space found; where it
//! does not know `HZ`, `syn_limit_coarse` reads `bpf_ktime_get_coarse_ns` (Linux 5.11+), and
//! `syn_rate_limit` `bpf_ktime_get_ns` where neither is there. The first two have tick
//! resolution, which a rate of SYNs per second and a one-second event clock do not notice. All
//! three read `CLOCK_MONOTONIC` ns, so pinned buckets mean the same under any of them.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use guard_common::{
    bind::{FAMILY_V4, FAMILY_V6},
    mode, verdict,
    xdp::{
        reason, EventCap, TokenBucket, XdpConfig, XdpEvent, BPF_F_MMAPABLE, LIST_ALLOW, LIST_DENY,
        MAX_XDP_CIDRS, MAX_XDP_PREFIXES, MAX_XDP_SOURCES, PORTS_IN_BITMAP, PORT_WORDS, STAT_COUNT,
        STAT_DROPPED_DENY, STAT_DROPPED_NEW_SOURCE, STAT_DROPPED_RATE, STAT_EVENTS_LOST,
        STAT_EVENTS_SUPPRESSED, STAT_PASSED, STAT_WOULD_DROP, XDP_EVENTS_BYTES,
    },
};

use crate::{
    packet::{ingress_ifindex, Block},
    stats::bump,
};

/// Mmapable only for the page alignment it gives the value: the hot fields share one line.
#[map]
static XDP_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static XDP_BUCKETS_V4: LruHashMap<u32, TokenBucket> =
    LruHashMap::with_max_entries(MAX_XDP_SOURCES, 0);
#[map]
static XDP_BUCKETS_V6: LruHashMap<u64, TokenBucket> =
    LruHashMap::with_max_entries(MAX_XDP_SOURCES, 0);
#[map]
static XDP_PREFIX_V4: LruHashMap<u32, TokenBucket> =
    LruHashMap::with_max_entries(MAX_XDP_PREFIXES, 0);
#[map]
static XDP_PREFIX_V6: LruHashMap<u64, TokenBucket> =
    LruHashMap::with_max_entries(MAX_XDP_PREFIXES, 0);
#[map]
static XDP_EVENT_CAP: Array<EventCap> = Array::with_max_entries(1, 0);
#[map]
static XDP_ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_XDP_CIDRS, 0);
#[map]
static XDP_ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_XDP_CIDRS, 0);
#[map]
static XDP_DENY_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(MAX_XDP_CIDRS, 0);
#[map]
static XDP_DENY_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_XDP_CIDRS, 0);
#[map]
static XDP_EVENTS: RingBuf = RingBuf::with_byte_size(XDP_EVENTS_BYTES, 0);
#[map]
static XDP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Where the programs read the time: `CLOCK_MONOTONIC` ns, at some resolution.
trait Clock {
    fn now(config: &XdpConfig) -> u64;
}

struct Fine;
struct Coarse;
struct Jiffies;

impl Clock for Fine {
    #[inline(always)]
    fn now(_: &XdpConfig) -> u64 {
        // SAFETY: a helper call with no arguments and no memory access.
        unsafe { bpf_ktime_get_ns() }
    }
}

impl Clock for Coarse {
    #[inline(always)]
    fn now(_: &XdpConfig) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

impl Clock for Jiffies {
    #[inline(always)]
    fn now(config: &XdpConfig) -> u64 {
        // SAFETY: as above; the verifier turns the call into a load of `jiffies_64`.
        let jiffies = unsafe { bpf_jiffies64() };
        jiffies
            .wrapping_mul(u64::from(config.ns_per_jiffy))
            .wrapping_sub(config.jiffies_offset_ns)
    }
}

#[xdp]
pub fn syn_rate_limit(ctx: XdpContext) -> u32 {
    judge::<Fine>(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn syn_limit_coarse(ctx: XdpContext) -> u32 {
    judge::<Coarse>(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn syn_limit_jiffy(ctx: XdpContext) -> u32 {
    judge::<Jiffies>(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// Always passes: the baseline that the rate limiter's per-packet cost is compared against.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Reads the precise clock once and passes: the benchmark's measure of that helper.
#[xdp]
pub fn xdp_clock_fine(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper call with no arguments and no memory access.
    clocked(unsafe { bpf_ktime_get_ns() })
}

/// As [`xdp_clock_fine`], for the coarse clock.
#[xdp]
pub fn xdp_clock_coarse(_ctx: XdpContext) -> u32 {
    // SAFETY: as above.
    clocked(unsafe { bpf_ktime_get_coarse_ns() })
}

/// As [`xdp_clock_fine`], for `bpf_jiffies64` (unscaled: no config is read).
#[xdp]
pub fn xdp_clock_jiffy(_ctx: XdpContext) -> u32 {
    // SAFETY: as above.
    clocked(unsafe { bpf_jiffies64() })
}

#[inline(always)]
fn clocked(now: u64) -> u32 {
    // The comparison keeps the call; a clock never reads zero after boot.
    if now == 0 {
        xdp_action::XDP_ABORTED
    } else {
        xdp_action::XDP_PASS
    }
}

/// The source as the maps key it: IPv4's address as loaded, IPv6's first and last 64 bits.
#[derive(Clone, Copy)]
enum Source {
    V4(u32),
    V6(u64, u64),
}

/// A protected SYN: where it came from and where it goes.
struct Syn {
    source: Source,
    port: u16,
}

/// A bucket map key: an IPv4 address or an IPv6 prefix, in network byte order in memory.
///
/// The wider prefix and the lengths are read from the config only where they are used (a new
/// source, an event), so a SYN over its limit does not touch the config's second cache line.
trait BucketKey: Copy {
    const FAMILY: u16;
    fn addr(self) -> [u8; 16];
    /// The source key's prefix length, for events.
    fn source_len(config: &XdpConfig) -> u8;
    /// The wider prefix that admits new sources, and its length.
    fn prefix(self, config: &XdpConfig) -> (Self, u8);
}

impl BucketKey for u32 {
    const FAMILY: u16 = FAMILY_V4;
    #[inline(always)]
    fn source_len(_: &XdpConfig) -> u8 {
        32
    }
    #[inline(always)]
    fn prefix(self, config: &XdpConfig) -> (u32, u8) {
        (self & config.v4_prefix_mask, config.v4_prefix_len)
    }
    #[inline(always)]
    fn addr(self) -> [u8; 16] {
        let b = self.to_ne_bytes();
        [b[0], b[1], b[2], b[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    }
}

impl BucketKey for u64 {
    const FAMILY: u16 = FAMILY_V6;
    #[inline(always)]
    fn source_len(config: &XdpConfig) -> u8 {
        config.v6_source_len
    }
    #[inline(always)]
    fn prefix(self, config: &XdpConfig) -> (u64, u8) {
        (self & config.v6_prefix_mask, config.v6_prefix_len)
    }
    #[inline(always)]
    fn addr(self) -> [u8; 16] {
        let b = self.to_ne_bytes();
        [
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], 0, 0, 0, 0, 0, 0, 0, 0,
        ]
    }
}

/// What a drop event names: the key (masked address), its prefix length, and why.
struct Report {
    family: u16,
    addr: [u8; 16],
    prefix_len: u8,
    why: u32,
}

impl Report {
    #[inline(always)]
    fn of<K: BucketKey>(key: K, prefix_len: u8, why: u32) -> Report {
        Report {
            family: K::FAMILY,
            addr: key.addr(),
            prefix_len,
            why,
        }
    }
}

/// `None` means "not ours": the packet passes.
#[inline(always)]
fn judge<C: Clock>(ctx: &XdpContext) -> Option<u32> {
    let syn = parse_syn(ctx)?;
    let config = XDP_CONFIG.get(0)?;
    if !protected(config, syn.port) {
        return None;
    }
    if config.flags & LIST_DENY != 0 && denied(syn.source) {
        return Some(deny::<C>(ctx, config, &syn));
    }
    if config.flags & LIST_ALLOW != 0 && allowed(syn.source) {
        bump(&XDP_STATS, STAT_PASSED);
        return Some(xdp_action::XDP_PASS);
    }
    let now = C::now(config);
    Some(match syn.source {
        Source::V4(addr) => limit(
            ctx,
            config,
            &XDP_BUCKETS_V4,
            &XDP_PREFIX_V4,
            addr,
            syn.port,
            now,
        ),
        Source::V6(high, _) => limit(
            ctx,
            config,
            &XDP_BUCKETS_V6,
            &XDP_PREFIX_V6,
            high & config.v6_source_mask,
            syn.port,
            now,
        ),
    })
}

/// Whether SYNs to `port` are judged: the inline ports (first cache line), or the bitmap.
#[inline(always)]
fn protected(config: &XdpConfig, port: u16) -> bool {
    if config.flags & PORTS_IN_BITMAP == 0 {
        let p = config.ports;
        return port == p[0] || port == p[1] || port == p[2] || port == p[3];
    }
    let word = config.port_bitmap.words[usize::from(port >> 6) & (PORT_WORDS - 1)];
    word & (1u64 << (port & 63)) != 0
}

/// The two-level judgement of one SYN from a source that is not listed.
#[inline(always)]
fn limit<K: BucketKey>(
    ctx: &XdpContext,
    config: &XdpConfig,
    buckets: &LruHashMap<K, TokenBucket>,
    prefixes: &LruHashMap<K, TokenBucket>,
    source: K,
    port: u16,
    now: u64,
) -> u32 {
    if let Some(bucket) = buckets.get_ptr_mut(source) {
        // SAFETY: the pointer comes from a successful lookup; LRU entries stay valid for the
        // duration of the program run (RCU).
        let bucket = unsafe { &mut *bucket };
        if take(
            bucket,
            now,
            config.source_interval_ns,
            config.source_tolerance_ns,
        ) {
            bump(&XDP_STATS, STAT_PASSED);
            return xdp_action::XDP_PASS;
        }
        if due(&mut bucket.last_event_ns, now) {
            let report = Report::of(source, K::source_len(config), reason::RATE);
            event(ctx, config, &report, port, now);
        }
        return count_only(config, STAT_DROPPED_RATE);
    }
    // A new source: its prefix pays for the admission.
    let (prefix, prefix_len) = source.prefix(config);
    match prefixes.get_ptr_mut(prefix) {
        Some(bucket) => {
            // SAFETY: as above.
            let bucket = unsafe { &mut *bucket };
            if !take(bucket, now, config.new_interval_ns, config.new_tolerance_ns) {
                if due(&mut bucket.last_event_ns, now) {
                    let report = Report::of(prefix, prefix_len, reason::NEW_SOURCE);
                    event(ctx, config, &report, port, now);
                }
                return count_only(config, STAT_DROPPED_NEW_SOURCE);
            }
        }
        None => {
            // A full admission bucket, less this source.
            let fresh = TokenBucket {
                due_ns: now + config.new_interval_ns,
                last_event_ns: 0,
            };
            let _ = prefixes.insert(prefix, fresh, 0);
        }
    }
    // Admitted: a full bucket, less this SYN.
    let fresh = TokenBucket {
        due_ns: now + config.source_interval_ns,
        last_event_ns: 0,
    };
    let _ = buckets.insert(source, fresh, 0);
    bump(&XDP_STATS, STAT_PASSED);
    xdp_action::XDP_PASS
}

/// A deny-listed SYN: dropped (or counted in monitor mode), with no bucket made for it.
#[inline(always)]
fn deny<C: Clock>(ctx: &XdpContext, config: &XdpConfig, syn: &Syn) -> u32 {
    let report = match syn.source {
        Source::V4(addr) => Report::of(addr, 32, reason::DENY_LIST),
        Source::V6(high, low) => {
            let mut report = Report::of(high, 128, reason::DENY_LIST);
            report.addr[8..].copy_from_slice(&low.to_ne_bytes());
            report
        }
    };
    event(ctx, config, &report, syn.port, C::now(config));
    count_only(config, STAT_DROPPED_DENY)
}

/// Whether a per-key event clock allows an event now; moves the clock if so.
#[inline(always)]
fn due(last_event_ns: &mut u64, now: u64) -> bool {
    if now.wrapping_sub(*last_event_ns) < NS_PER_SEC {
        return false;
    }
    *last_event_ns = now;
    true
}

/// Takes one token from `bucket` if it has one (GCRA): a SYN is due `interval` after the one
/// before, and may come up to `tolerance` early. A refused SYN reads the bucket and writes
/// nothing.
#[inline(always)]
fn take(bucket: &mut TokenBucket, now: u64, interval: u64, tolerance: u64) -> bool {
    let due = bucket.due_ns;
    if due > now + tolerance {
        return false;
    }
    // An idle bucket is full: it starts from now, not from the SYNs it missed.
    bucket.due_ns = if due > now { due } else { now } + interval;
    true
}

/// Sends one drop event, unless the global cap for this second is reached (then counts it).
#[inline(always)]
fn event(ctx: &XdpContext, config: &XdpConfig, report: &Report, port: u16, now: u64) {
    let Some(cap) = XDP_EVENT_CAP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: an array slot, valid for the program's life. Two CPUs may race on it; the worst
    // case is an event or two over the cap in one second.
    let cap = unsafe { &mut *cap };
    if now.wrapping_sub(cap.window_ns) >= NS_PER_SEC {
        cap.window_ns = now;
        cap.sent = 0;
    }
    if cap.sent >= u64::from(config.events_per_sec) {
        bump(&XDP_STATS, STAT_EVENTS_SUPPRESSED);
        return;
    }
    cap.sent += 1;
    let event = XdpEvent {
        family: report.family,
        port,
        reason: report.why,
        verdict: if config.mode == mode::ENFORCE {
            verdict::DENIED
        } else {
            verdict::WOULD_DENY
        },
        ifindex: ingress_ifindex(ctx),
        prefix_len: u32::from(report.prefix_len),
        _pad: 0,
        addr: report.addr,
    };
    if XDP_EVENTS.output::<XdpEvent>(&event, 0).is_err() {
        bump(&XDP_STATS, STAT_EVENTS_LOST);
    }
}

#[inline(always)]
fn count_only(config: &XdpConfig, stat: u32) -> u32 {
    if config.mode == mode::ENFORCE {
        bump(&XDP_STATS, stat);
        xdp_action::XDP_DROP
    } else {
        bump(&XDP_STATS, STAT_WOULD_DROP);
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn denied(source: Source) -> bool {
    listed(source, &XDP_DENY_V4, &XDP_DENY_V6)
}

#[inline(always)]
fn allowed(source: Source) -> bool {
    listed(source, &XDP_ALLOW_V4, &XDP_ALLOW_V6)
}

#[inline(always)]
fn listed(source: Source, v4: &LpmTrie<[u8; 4], u32>, v6: &LpmTrie<[u8; 16], u32>) -> bool {
    match source {
        Source::V4(addr) => v4.get(Key::new(32, addr.to_ne_bytes())).is_some(),
        Source::V6(high, low) => {
            let mut addr = high.addr();
            addr[8..].copy_from_slice(&low.to_ne_bytes());
            v6.get(Key::new(128, addr)).is_some()
        }
    }
}

/// A TCP SYN without ACK, over IPv4 or IPv6 (behind at most two VLAN tags).
///
/// Each header is checked as one fixed-size block and its fields read as typed loads: one bounds
/// check per block keeps LLVM from merging checks into a form the verifier cannot follow.
#[inline(always)]
fn parse_syn(ctx: &XdpContext) -> Option<Syn> {
    let eth = Block::<ETH_HLEN>::at(ctx, 0)?;
    let mut ethertype = eth.be16::<12>();
    let mut offset = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = Block::<4>::at(ctx, offset)?;
        ethertype = tag.be16::<2>();
        offset += 4;
    }
    let (source, tcp) = match ethertype {
        ETH_P_IP => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        _ => return None,
    };
    // Destination port at 2..4, flags at 13.
    let header = Block::<14>::at(ctx, tcp)?;
    if header.byte::<13>() & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    Some(Syn {
        source,
        port: header.be16::<2>(),
    })
}

/// The source and the TCP header's offset, for an unfragmented (or first-fragment) TCP packet.
#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Option<(Source, usize)> {
    let ip = Block::<20>::at(ctx, offset)?;
    let version_ihl = ip.byte::<0>();
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Later fragments carry no TCP header.
    if ip.be16::<6>() & 0x1fff != 0 || ip.byte::<9>() != IPPROTO_TCP {
        return None;
    }
    Some((Source::V4(ip.load::<u32, 12>()), offset + ihl))
}

/// As [`ipv4`]; walks up to three extension headers, so hop-by-hop, routing or destination
/// options in front of TCP do not hide a SYN from the limit.
#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Option<(Source, usize)> {
    let ip = Block::<40>::at(ctx, offset)?;
    let source = Source::V6(ip.load::<u64, 8>(), ip.load::<u64, 16>());
    let mut next = ip.byte::<6>();
    let mut header = offset + 40;
    for _ in 0..3 {
        match next {
            IPPROTO_TCP => break,
            // Hop-by-hop, routing, destination options: length in 8-octet units, less the first.
            0 | 43 | 60 => {
                let ext = Block::<2>::at(ctx, header)?;
                next = ext.byte::<0>();
                header += (usize::from(ext.byte::<1>()) + 1) * 8;
            }
            // Fragment: only the first fragment holds the TCP header.
            44 => {
                let frag = Block::<4>::at(ctx, header)?;
                if frag.be16::<2>() & 0xfff8 != 0 {
                    return None;
                }
                next = frag.byte::<0>();
                header += 8;
            }
            _ => return None,
        }
    }
    if next != IPPROTO_TCP {
        return None;
    }
    Some((source, header))
}
