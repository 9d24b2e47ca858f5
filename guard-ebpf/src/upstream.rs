//! The upstream guard (cgroup `connect4` / `connect6`): a connect to a guarded local destination
//! (the LLM proxy's port, the provider gateway's port) is allowed only from the cgroups allowed
//! for that destination.
//!
//! Attached at the cgroup v2 root, so every process on the host is judged. A connect to anything
//! else passes after one LPM lookup.

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use guard_common::{
    bind::{FAMILY_V4, FAMILY_V6},
    egress::{MAX_CGROUP_LEVEL, PROTO_TCP},
    upstream::{
        CgroupAllow, UpstreamConfig, MAX_UPSTREAM_CGROUPS, MAX_UPSTREAM_DESTS, STAT_ALLOWED,
        STAT_COUNT, STAT_DENIED, STAT_EVENTS_LOST, STAT_WOULD_DENY, UPSTREAM_EVENTS_BYTES,
    },
    PortAddrV4, PortAddrV6,
};

use crate::{
    refused::{refuse, Counters, Destination, ALLOW},
    sock_addr::{read_v4, read_v6, v4_mapped},
    stats::bump,
};

const COUNTERS: Counters = Counters {
    denied: STAT_DENIED,
    would_deny: STAT_WOULD_DENY,
    events_lost: STAT_EVENTS_LOST,
};

#[map]
static UPSTREAM_CONFIG: Array<UpstreamConfig> = Array::with_max_entries(1, 0);
#[map]
static UPSTREAM_DEST_V4: LpmTrie<PortAddrV4, u32> =
    LpmTrie::with_max_entries(MAX_UPSTREAM_DESTS, 0);
#[map]
static UPSTREAM_DEST_V6: LpmTrie<PortAddrV6, u32> =
    LpmTrie::with_max_entries(MAX_UPSTREAM_DESTS, 0);
#[map]
static UPSTREAM_CGROUPS: HashMap<u64, CgroupAllow> =
    HashMap::with_max_entries(MAX_UPSTREAM_CGROUPS, 0);
#[map]
static UPSTREAM_EVENTS: RingBuf = RingBuf::with_byte_size(UPSTREAM_EVENTS_BYTES, 0);
#[map]
static UPSTREAM_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[cgroup_sock_addr(connect4)]
pub fn upstream_connect_v4(ctx: SockAddrContext) -> i32 {
    let (port, addr) = read_v4(&ctx);
    let dest = guarded_v4(port, addr);
    if dest == 0 {
        return ALLOW;
    }
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&addr);
    judge(dest, FAMILY_V4, port, ip)
}

#[cgroup_sock_addr(connect6)]
pub fn upstream_connect_v6(ctx: SockAddrContext) -> i32 {
    let (port, addr) = read_v6(&ctx);
    // A v4-mapped destination (::ffff:127.0.0.1) on a dual-stack socket is an IPv4 destination.
    let dest = match v4_mapped(&addr) {
        Some(v4) => guarded_v4(port, v4),
        None => guarded_v6(port, addr),
    };
    if dest == 0 {
        return ALLOW;
    }
    judge(dest, FAMILY_V6, port, addr)
}

/// The destination bits of a guarded (port, address), 0 when it is not guarded.
fn guarded_v4(port: u16, addr: [u8; 4]) -> u32 {
    let key = Key::new(
        16 + 32,
        PortAddrV4 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    UPSTREAM_DEST_V4.get(key).copied().unwrap_or(0)
}

fn guarded_v6(port: u16, addr: [u8; 16]) -> u32 {
    let key = Key::new(
        16 + 128,
        PortAddrV6 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    UPSTREAM_DEST_V6.get(key).copied().unwrap_or(0)
}

/// A connect to a guarded destination: allowed from a cgroup allowed for it, else a violation.
fn judge(dest: u32, family: u16, port: u16, addr: [u8; 16]) -> i32 {
    let Some(config) = UPSTREAM_CONFIG.get(0).copied() else {
        return ALLOW;
    };
    if allowed_caller(&config, dest) {
        bump(&UPSTREAM_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    violation(&config, dest, family, port, addr)
}

/// Whether the current task's cgroup is allowed `dest` itself, or lies below a cgroup whose
/// subtree is.
fn allowed_caller(config: &UpstreamConfig, dest: u32) -> bool {
    // SAFETY: helper call without memory arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: the value is copied out at once.
    if let Some(allow) = unsafe { UPSTREAM_CGROUPS.get(own) }.copied() {
        if (allow.exact | allow.subtree) & dest != 0 {
            return true;
        }
    }
    let mut level = 1;
    while level <= MAX_CGROUP_LEVEL && level <= config.max_level {
        // SAFETY: as above; 0 means "the task is not that deep".
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == own {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(allow) = unsafe { UPSTREAM_CGROUPS.get(ancestor) }.copied() {
            if allow.subtree & dest != 0 {
                return true;
            }
        }
        level += 1;
    }
    false
}

fn violation(config: &UpstreamConfig, dest: u32, family: u16, port: u16, addr: [u8; 16]) -> i32 {
    refuse(
        &UPSTREAM_EVENTS,
        &UPSTREAM_STATS,
        &COUNTERS,
        config.mode,
        Destination {
            family,
            port,
            addr,
            proto: PROTO_TCP,
            // Two destination bits: they fit.
            dest: dest as u16,
        },
    )
}
