//! Bind rules (cgroup `bind4` / `bind6`): a guarded port may only be bound to allowed addresses.
//!
//! Attached at the cgroup v2 root, so every process on the host is covered. Ports without a rule
//! pass untouched; the verdict for a guarded port is a single LPM lookup.

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    },
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    bind::{
        BindEvent, BindPortRule, BIND_EVENTS_BYTES, FAMILY_V4, FAMILY_V6, MAX_BIND_ADDRS,
        MAX_BIND_PORTS, REASON_ADDRESS, REASON_OWNER, STAT_ALLOWED, STAT_COUNT, STAT_DENIED,
        STAT_EVENTS_LOST, STAT_WOULD_DENY,
    },
    mode, verdict, COMM_LEN,
};
use guard_common::{PortAddrV4, PortAddrV6};

use crate::{
    sock_addr::{read_v4, read_v6, v4_mapped},
    stats::bump,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[map]
static BIND_PORTS: HashMap<u16, BindPortRule> = HashMap::with_max_entries(MAX_BIND_PORTS, 0);
#[map]
static BIND_ALLOW_V4: LpmTrie<PortAddrV4, u32> = LpmTrie::with_max_entries(MAX_BIND_ADDRS, 0);
#[map]
static BIND_ALLOW_V6: LpmTrie<PortAddrV6, u32> = LpmTrie::with_max_entries(MAX_BIND_ADDRS, 0);
#[map]
static BIND_EVENTS: RingBuf = RingBuf::with_byte_size(BIND_EVENTS_BYTES, 0);
#[map]
static BIND_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[cgroup_sock_addr(bind4)]
pub fn bind_rule_v4(ctx: SockAddrContext) -> i32 {
    let (port, addr) = read_v4(&ctx);
    let Some(rule) = port_rule(port) else {
        return ALLOW;
    };
    let owned = owned_by_caller(&rule);
    if owned && allowed_v4(port, addr) {
        bump(&BIND_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&addr);
    violation(&ctx, rule, FAMILY_V4, port, ip, reason(owned))
}

#[cgroup_sock_addr(bind6)]
pub fn bind_rule_v6(ctx: SockAddrContext) -> i32 {
    let (port, addr) = read_v6(&ctx);
    let Some(rule) = port_rule(port) else {
        return ALLOW;
    };
    // A v4-mapped address (::ffff:a.b.c.d) on a dual-stack socket binds the IPv4 address, so it is
    // judged by the IPv4 rules.
    let owned = owned_by_caller(&rule);
    let allowed = owned
        && match v4_mapped(&addr) {
            Some(v4) => allowed_v4(port, v4),
            None => allowed_v6(port, addr),
        };
    if allowed {
        bump(&BIND_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    violation(&ctx, rule, FAMILY_V6, port, addr, reason(owned))
}

fn port_rule(port: u16) -> Option<BindPortRule> {
    // SAFETY: the value is copied out at once; the map entry may change afterwards.
    unsafe { BIND_PORTS.get(port).copied() }
}

fn reason(owned: bool) -> u32 {
    if owned {
        REASON_ADDRESS
    } else {
        REASON_OWNER
    }
}

/// Whether the caller may bind the port at all: there is no owner, or the caller is in the
/// owner cgroup or below it.
fn owned_by_caller(rule: &BindPortRule) -> bool {
    if rule.owner_cgroup == 0 {
        return true;
    }
    // SAFETY: helper calls without memory arguments; 0 means "not that deep".
    let own = unsafe { bpf_get_current_cgroup_id() };
    own == rule.owner_cgroup
        || unsafe { bpf_get_current_ancestor_cgroup_id(rule.owner_level as i32) }
            == rule.owner_cgroup
}

fn allowed_v4(port: u16, addr: [u8; 4]) -> bool {
    let key = Key::new(
        16 + 32,
        PortAddrV4 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    BIND_ALLOW_V4.get(key).is_some()
}

fn allowed_v6(port: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(
        16 + 128,
        PortAddrV6 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    BIND_ALLOW_V6.get(key).is_some()
}

fn violation(
    ctx: &SockAddrContext,
    rule: BindPortRule,
    family: u16,
    port: u16,
    addr: [u8; 16],
    reason: u32,
) -> i32 {
    let enforce = rule.mode == mode::ENFORCE;
    let (stat, verdict, answer) = if enforce {
        (STAT_DENIED, verdict::DENIED, DENY)
    } else {
        (STAT_WOULD_DENY, verdict::WOULD_DENY, ALLOW)
    };
    bump(&BIND_STATS, stat);
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = BindEvent {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        verdict,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        addr,
        family,
        port,
        reason,
    };
    if BIND_EVENTS.output::<BindEvent>(&event, 0).is_err() {
        bump(&BIND_STATS, STAT_EVENTS_LOST);
    }
    // The event above is the record operators see; this is a trace for `RUST_LOG=debug` only,
    // so a denial is not printed twice.
    if enforce {
        debug!(
            ctx,
            "bind denied: port {} family {} pid {}", port, family, event.tgid
        );
    } else {
        debug!(
            ctx,
            "bind would be denied (monitor): port {} family {} pid {}", port, family, event.tgid
        );
    }
    answer
}
