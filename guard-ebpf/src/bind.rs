//! Bind rules (cgroup `bind4` / `bind6`): a guarded port may only be bound to allowed addresses.
//!
//! Attached at the cgroup v2 root, so every process on the host is covered. Ports without a rule
//! pass untouched; the verdict for a guarded port is a single LPM lookup.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid},
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use guard_common::{
    bind::{
        BindAddrV4, BindAddrV6, BindEvent, BindPortRule, BIND_EVENTS_BYTES, FAMILY_V4, FAMILY_V6,
        MAX_BIND_ADDRS, MAX_BIND_PORTS, STAT_ALLOWED, STAT_COUNT, STAT_DENIED, STAT_EVENTS_LOST,
        STAT_WOULD_DENY,
    },
    mode, verdict, COMM_LEN,
};

use crate::stats::bump;

const ALLOW: i32 = 1;
const DENY: i32 = 0;

#[map]
static BIND_PORTS: HashMap<u16, BindPortRule> = HashMap::with_max_entries(MAX_BIND_PORTS, 0);
#[map]
static BIND_ALLOW_V4: LpmTrie<BindAddrV4, u32> = LpmTrie::with_max_entries(MAX_BIND_ADDRS, 0);
#[map]
static BIND_ALLOW_V6: LpmTrie<BindAddrV6, u32> = LpmTrie::with_max_entries(MAX_BIND_ADDRS, 0);
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
    if allowed_v4(port, addr) {
        bump(&BIND_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    let mut ip = [0u8; 16];
    ip[..4].copy_from_slice(&addr);
    violation(&ctx, rule, FAMILY_V4, port, ip)
}

#[cgroup_sock_addr(bind6)]
pub fn bind_rule_v6(ctx: SockAddrContext) -> i32 {
    let (port, addr) = read_v6(&ctx);
    let Some(rule) = port_rule(port) else {
        return ALLOW;
    };
    // A v4-mapped address (::ffff:a.b.c.d) on a dual-stack socket binds the IPv4 address, so it is
    // judged by the IPv4 rules.
    let allowed = match v4_mapped(&addr) {
        Some(v4) => allowed_v4(port, v4),
        None => allowed_v6(port, addr),
    };
    if allowed {
        bump(&BIND_STATS, STAT_ALLOWED);
        return ALLOW;
    }
    violation(&ctx, rule, FAMILY_V6, port, addr)
}

fn port_rule(port: u16) -> Option<BindPortRule> {
    // SAFETY: the value is copied out at once; the map entry may change afterwards.
    unsafe { BIND_PORTS.get(port).copied() }
}

fn allowed_v4(port: u16, addr: [u8; 4]) -> bool {
    let key = Key::new(
        16 + 32,
        BindAddrV4 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    BIND_ALLOW_V4.get(key).is_some()
}

fn allowed_v6(port: u16, addr: [u8; 16]) -> bool {
    let key = Key::new(
        16 + 128,
        BindAddrV6 {
            port: port.to_be_bytes(),
            addr,
        },
    );
    BIND_ALLOW_V6.get(key).is_some()
}

fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let prefix = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    if addr[..12] == prefix {
        Some([addr[12], addr[13], addr[14], addr[15]])
    } else {
        None
    }
}

fn violation(
    ctx: &SockAddrContext,
    rule: BindPortRule,
    family: u16,
    port: u16,
    addr: [u8; 16],
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
        _pad: 0,
    };
    if BIND_EVENTS.output::<BindEvent>(&event, 0).is_err() {
        bump(&BIND_STATS, STAT_EVENTS_LOST);
    }
    if enforce {
        warn!(
            ctx,
            "bind denied: port {} family {} pid {}", port, family, event.tgid
        );
    } else {
        warn!(
            ctx,
            "bind would be denied (monitor): port {} family {} pid {}", port, family, event.tgid
        );
    }
    answer
}

/// The requested IPv4 port (host order) and address (network order).
fn read_v4(ctx: &SockAddrContext) -> (u16, [u8; 4]) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed in. Fields are read one u32 at a time,
    // the access width the verifier accepts for `bpf_sock_addr`.
    let (port, ip) = unsafe {
        (
            core::ptr::read_volatile(&(*sa).user_port),
            core::ptr::read_volatile(&(*sa).user_ip4),
        )
    };
    (u16::from_be(port as u16), ip.to_ne_bytes())
}

/// The requested IPv6 port (host order) and address (network order).
fn read_v6(ctx: &SockAddrContext) -> (u16, [u8; 16]) {
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    let mut addr = [0u8; 16];
    // SAFETY: as in `read_v4`; each of the four words is its own 4-byte load.
    let port = unsafe {
        for i in 0..4 {
            let word = core::ptr::read_volatile(&(*sa).user_ip6[i]);
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        core::ptr::read_volatile(&(*sa).user_port)
    };
    (u16::from_be(port as u16), addr)
}
