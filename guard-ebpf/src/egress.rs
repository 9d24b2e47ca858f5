//! Egress allow-list (cgroup `connect4/6`, `sendmsg4/6`) for the guarded service.
//!
//! Attached at the cgroup v2 root. A task outside every guarded cgroup passes after at most
//! `max_level` hash lookups; a guarded task may reach only listed targets: (port, prefix) or
//! (any port, prefix).

use aya_ebpf::{
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id},
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use guard_common::{
    bind::{FAMILY_V4, FAMILY_V6},
    egress::{
        EgressConfig, EGRESS_EVENTS_BYTES, MAX_CGROUP_LEVEL, MAX_EGRESS_CGROUPS,
        MAX_EGRESS_TARGETS, PROTO_TCP, PROTO_UDP, STAT_ALLOWED, STAT_COUNT, STAT_DENIED,
        STAT_EVENTS_LOST, STAT_WOULD_DENY,
    },
};
use guard_common::{PortAddrV4, PortAddrV6};

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
static EGRESS_CONFIG: Array<EgressConfig> = Array::with_max_entries(1, 0);
#[map]
static EGRESS_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_EGRESS_CGROUPS, 0);
#[map]
static EGRESS_ALLOW_V4: LpmTrie<PortAddrV4, u32> = LpmTrie::with_max_entries(MAX_EGRESS_TARGETS, 0);
#[map]
static EGRESS_ALLOW_V6: LpmTrie<PortAddrV6, u32> = LpmTrie::with_max_entries(MAX_EGRESS_TARGETS, 0);
#[map]
static EGRESS_EVENTS: RingBuf = RingBuf::with_byte_size(EGRESS_EVENTS_BYTES, 0);
#[map]
static EGRESS_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[cgroup_sock_addr(connect4)]
pub fn egress_connect_v4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, PROTO_TCP)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg_v4(ctx: SockAddrContext) -> i32 {
    judge_v4(&ctx, PROTO_UDP)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect_v6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, PROTO_TCP)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg_v6(ctx: SockAddrContext) -> i32 {
    judge_v6(&ctx, PROTO_UDP)
}

fn judge_v4(ctx: &SockAddrContext, proto: u16) -> i32 {
    let Some(config) = guarded() else {
        return ALLOW;
    };
    let (port, addr) = read_v4(ctx);
    if allowed_v4(port, addr) {
        bump(&EGRESS_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&addr);
    violation(&config, FAMILY_V4, port, ip, proto)
}

fn judge_v6(ctx: &SockAddrContext, proto: u16) -> i32 {
    let Some(config) = guarded() else {
        return ALLOW;
    };
    let (port, addr) = read_v6(ctx);
    // A v4-mapped destination on a dual-stack socket is an IPv4 destination.
    let allowed = match v4_mapped(&addr) {
        Some(v4) => allowed_v4(port, v4),
        None => allowed_v6(port, addr),
    };
    if allowed {
        bump(&EGRESS_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    violation(&config, FAMILY_V6, port, addr, proto)
}

/// The config, when the current task is in a guarded cgroup or below one.
fn guarded() -> Option<EgressConfig> {
    let config = *EGRESS_CONFIG.get(0)?;
    if config.max_level == 0 {
        return None;
    }
    // SAFETY: helper calls without memory arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: only the presence of the entry is used.
    if unsafe { EGRESS_CGROUPS.get(own) }.is_some() {
        return Some(config);
    }
    let mut level = 1;
    while level <= MAX_CGROUP_LEVEL && level <= config.max_level {
        // SAFETY: as above; 0 means "the task is not that deep".
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 {
            break;
        }
        if unsafe { EGRESS_CGROUPS.get(ancestor) }.is_some() {
            return Some(config);
        }
        level += 1;
    }
    None
}

fn allowed_v4(port: u16, addr: [u8; 4]) -> bool {
    let exact = Key::new(
        16 + 32,
        PortAddrV4 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    let any_port = Key::new(16 + 32, PortAddrV4 { port: [0, 0], addr });
    EGRESS_ALLOW_V4.get(exact).is_some() || EGRESS_ALLOW_V4.get(any_port).is_some()
}

fn allowed_v6(port: u16, addr: [u8; 16]) -> bool {
    let exact = Key::new(
        16 + 128,
        PortAddrV6 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    let any_port = Key::new(16 + 128, PortAddrV6 { port: [0, 0], addr });
    EGRESS_ALLOW_V6.get(exact).is_some() || EGRESS_ALLOW_V6.get(any_port).is_some()
}

fn violation(config: &EgressConfig, family: u16, port: u16, addr: [u8; 16], proto: u16) -> i32 {
    refuse(
        &EGRESS_EVENTS,
        &EGRESS_STATS,
        &COUNTERS,
        config.mode,
        Destination {
            family,
            port,
            addr,
            proto,
            dest: 0,
        },
    )
}
