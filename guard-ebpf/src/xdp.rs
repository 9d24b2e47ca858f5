//! Per-source SYN rate limit (XDP).
//!
//! Only TCP SYNs (not SYN-ACKs) to a protected port are judged; every other packet passes
//! untouched. Order: deny list (always drop), allow list (always pass), then the source's token
//! bucket. Buckets live in an LRU map, so a flood of sources evicts old ones instead of failing.
//! Updates to one bucket from two CPUs can race; the worst case is a token more or less, which is
//! cheaper than a lock on the hot path.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use guard_common::{
    bind::{FAMILY_V4, FAMILY_V6},
    mode, verdict,
    xdp::{
        reason, SourceKey, TokenBucket, XdpConfig, XdpEvent, LIST_ALLOW, LIST_DENY, MAX_XDP_CIDRS,
        MAX_XDP_PORTS, MAX_XDP_SOURCES, STAT_COUNT, STAT_DROPPED_DENY, STAT_DROPPED_RATE,
        STAT_EVENTS_LOST, STAT_PASSED, STAT_WOULD_DROP, TOKEN, XDP_EVENTS_BYTES,
    },
};

use crate::{
    packet::{bytes, ingress_ifindex},
    stats::bump,
};

#[map]
static XDP_CONFIG: Array<XdpConfig> = Array::with_max_entries(1, 0);
#[map]
static XDP_PORTS: HashMap<u16, u32> = HashMap::with_max_entries(MAX_XDP_PORTS, 0);
#[map]
static XDP_BUCKETS: LruHashMap<SourceKey, TokenBucket> =
    LruHashMap::with_max_entries(MAX_XDP_SOURCES, 0);
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
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn syn_rate_limit(ctx: XdpContext) -> u32 {
    match judge(&ctx) {
        Some(action) => action,
        None => xdp_action::XDP_PASS,
    }
}

/// Always passes: the baseline that the rate limiter's per-packet cost is compared against.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// A protected SYN: where it came from and where it goes.
struct Syn {
    source: SourceKey,
    port: u16,
}

/// `None` means "not ours": the packet passes.
fn judge(ctx: &XdpContext) -> Option<u32> {
    let syn = parse_syn(ctx)?;
    // SAFETY: the value is copied out; a concurrent update is at worst one packet late.
    unsafe { XDP_PORTS.get(syn.port) }?;
    let config = *XDP_CONFIG.get(0)?;

    let now = now_ns();
    let capacity = u64::from(config.burst) * TOKEN;
    if config.lists & LIST_DENY != 0 && listed(&syn.source, &XDP_DENY_V4, &XDP_DENY_V6) {
        if first_event_this_second(&syn.source, now, capacity) {
            return Some(violation(
                ctx,
                &config,
                &syn,
                reason::DENY_LIST,
                STAT_DROPPED_DENY,
            ));
        }
        return Some(count_only(&config, STAT_DROPPED_DENY));
    }
    if config.lists & LIST_ALLOW != 0 && listed(&syn.source, &XDP_ALLOW_V4, &XDP_ALLOW_V6) {
        bump(&XDP_STATS, STAT_PASSED);
        return Some(xdp_action::XDP_PASS);
    }
    let source = masked(syn.source, config.v6_prefix_len);
    let bucket = match XDP_BUCKETS.get_ptr_mut(source) {
        Some(bucket) => bucket,
        None => {
            // A new source starts with a full bucket, less this SYN.
            let fresh = TokenBucket {
                tokens: capacity.saturating_sub(TOKEN),
                refilled_ns: now,
                last_event_ns: 0,
            };
            let _ = XDP_BUCKETS.insert(source, fresh, 0);
            bump(&XDP_STATS, STAT_PASSED);
            return Some(xdp_action::XDP_PASS);
        }
    };
    // SAFETY: the pointer comes from a successful lookup; LRU entries stay valid for the
    // duration of the program run (RCU).
    let bucket = unsafe { &mut *bucket };
    refill(bucket, now, config.rate_per_sec, capacity);
    if bucket.tokens >= TOKEN {
        bucket.tokens -= TOKEN;
        bump(&XDP_STATS, STAT_PASSED);
        return Some(xdp_action::XDP_PASS);
    }
    let syn = Syn {
        source,
        port: syn.port,
    };
    if now.wrapping_sub(bucket.last_event_ns) >= NS_PER_SEC {
        bucket.last_event_ns = now;
        return Some(violation(
            ctx,
            &config,
            &syn,
            reason::RATE,
            STAT_DROPPED_RATE,
        ));
    }
    Some(count_only(&config, STAT_DROPPED_RATE))
}

/// Whether a deny-listed source may send an event now: the bucket's event clock is reused, so
/// drop events stay at one per source per second whatever the reason.
fn first_event_this_second(source: &SourceKey, now: u64, capacity: u64) -> bool {
    match XDP_BUCKETS.get_ptr_mut(source) {
        Some(bucket) => {
            // SAFETY: pointer from a successful lookup, valid for this run (RCU).
            let bucket = unsafe { &mut *bucket };
            if now.wrapping_sub(bucket.last_event_ns) < NS_PER_SEC {
                return false;
            }
            bucket.last_event_ns = now;
            true
        }
        None => {
            let fresh = TokenBucket {
                tokens: capacity,
                refilled_ns: now,
                last_event_ns: now,
            };
            let _ = XDP_BUCKETS.insert(source, fresh, 0);
            true
        }
    }
}

fn now_ns() -> u64 {
    // SAFETY: a helper call with no arguments and no memory access.
    unsafe { bpf_ktime_get_ns() }
}

/// Credits whole elapsed milliseconds at `rate` tokens per second, keeping the remainder.
fn refill(bucket: &mut TokenBucket, now: u64, rate: u32, capacity: u64) {
    let elapsed_ms = now.saturating_sub(bucket.refilled_ns) / NS_PER_MS;
    if elapsed_ms == 0 {
        return;
    }
    // An hour refills any bucket; the clamp keeps the product far from overflow.
    let credited_ms = if elapsed_ms > 3_600_000 {
        3_600_000
    } else {
        elapsed_ms
    };
    // rate tokens/s == rate milli-tokens/ms.
    let tokens = bucket.tokens + credited_ms * u64::from(rate);
    if tokens >= capacity {
        bucket.tokens = capacity;
        bucket.refilled_ns = now;
    } else {
        bucket.tokens = tokens;
        bucket.refilled_ns += elapsed_ms * NS_PER_MS;
    }
}

fn violation(ctx: &XdpContext, config: &XdpConfig, syn: &Syn, why: u32, stat: u32) -> u32 {
    let enforce = config.mode == mode::ENFORCE;
    let event = XdpEvent {
        source: syn.source,
        port: syn.port,
        _pad: 0,
        reason: why,
        verdict: if enforce {
            verdict::DENIED
        } else {
            verdict::WOULD_DENY
        },
        ifindex: ingress_ifindex(ctx),
    };
    if XDP_EVENTS.output::<XdpEvent>(&event, 0).is_err() {
        bump(&XDP_STATS, STAT_EVENTS_LOST);
    }
    count_only(config, stat)
}

fn count_only(config: &XdpConfig, stat: u32) -> u32 {
    if config.mode == mode::ENFORCE {
        bump(&XDP_STATS, stat);
        xdp_action::XDP_DROP
    } else {
        bump(&XDP_STATS, STAT_WOULD_DROP);
        xdp_action::XDP_PASS
    }
}

fn listed(source: &SourceKey, v4: &LpmTrie<[u8; 4], u32>, v6: &LpmTrie<[u8; 16], u32>) -> bool {
    if source.family == u32::from(FAMILY_V4) {
        let a = source.addr;
        v4.get(Key::new(32, [a[0], a[1], a[2], a[3]])).is_some()
    } else {
        v6.get(Key::new(128, source.addr)).is_some()
    }
}

/// IPv6 sources aggregated to `prefix_len` bits; IPv4 unchanged.
fn masked(mut source: SourceKey, prefix_len: u32) -> SourceKey {
    if source.family != u32::from(FAMILY_V6) || prefix_len >= 128 {
        return source;
    }
    let mut i = 0;
    while i < 16 {
        let bit = (i as u32) * 8;
        if bit >= prefix_len {
            source.addr[i] = 0;
        } else if bit + 8 > prefix_len {
            source.addr[i] &= 0xffu8 << (8 - (prefix_len - bit));
        }
        i += 1;
    }
    source
}

/// A TCP SYN without ACK, over IPv4 or IPv6 (behind at most two VLAN tags).
///
/// Each header is read as one fixed-size block: one bounds check per block keeps LLVM from
/// merging checks into a form the verifier cannot follow.
fn parse_syn(ctx: &XdpContext) -> Option<Syn> {
    let eth: [u8; ETH_HLEN] = bytes(ctx, 0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag: [u8; 4] = bytes(ctx, offset)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += 4;
    }
    let (source, tcp) = match ethertype {
        ETH_P_IP => ipv4(ctx, offset)?,
        ETH_P_IPV6 => ipv6(ctx, offset)?,
        _ => return None,
    };
    // Destination port at 2..4, flags at 13.
    let header: [u8; 14] = bytes(ctx, tcp)?;
    if header[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let port = u16::from_be_bytes([header[2], header[3]]);
    Some(Syn { source, port })
}

/// The source and the TCP header's offset, for an unfragmented (or first-fragment) TCP packet.
fn ipv4(ctx: &XdpContext, offset: usize) -> Option<(SourceKey, usize)> {
    let ip: [u8; 20] = bytes(ctx, offset)?;
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    // Later fragments carry no TCP header.
    let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if fragment_offset != 0 || ip[9] != IPPROTO_TCP {
        return None;
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip[12..16]);
    Some((
        SourceKey {
            family: u32::from(FAMILY_V4),
            addr,
        },
        offset + ihl,
    ))
}

/// As [`ipv4`]; walks up to three extension headers, so hop-by-hop, routing or destination
/// options in front of TCP do not hide a SYN from the limit.
fn ipv6(ctx: &XdpContext, offset: usize) -> Option<(SourceKey, usize)> {
    let ip: [u8; 40] = bytes(ctx, offset)?;
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&ip[8..24]);
    let mut next = ip[6];
    let mut header = offset + 40;
    for _ in 0..3 {
        match next {
            IPPROTO_TCP => break,
            // Hop-by-hop, routing, destination options: length in 8-octet units, less the first.
            0 | 43 | 60 => {
                let ext: [u8; 2] = bytes(ctx, header)?;
                next = ext[0];
                header += (usize::from(ext[1]) + 1) * 8;
            }
            // Fragment: only the first fragment holds the TCP header.
            44 => {
                let frag: [u8; 4] = bytes(ctx, header)?;
                if u16::from_be_bytes([frag[2], frag[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next = frag[0];
                header += 8;
            }
            _ => return None,
        }
    }
    if next != IPPROTO_TCP {
        return None;
    }
    Some((
        SourceKey {
            family: u32::from(FAMILY_V6),
            addr,
        },
        header,
    ))
}
