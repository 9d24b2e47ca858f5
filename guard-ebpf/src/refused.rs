//! The refused-connect record shared by the egress allow-list and the upstream guard: count the
//! verdict, send one `EgressEvent` with the caller's identity, and give the cgroup program its
//! answer (refuse in enforce mode, let through in monitor mode).

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
    },
    maps::{PerCpuArray, RingBuf},
};
use guard_common::{egress::EgressEvent, mode, verdict, COMM_LEN};

use crate::stats::bump;

/// The cgroup `sock_addr` answers.
pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

/// Where a family keeps its refusal counters (indices into its per-CPU stats map).
pub struct Counters {
    pub denied: u32,
    pub would_deny: u32,
    pub events_lost: u32,
}

/// The refused destination, as the event reports it.
pub struct Destination {
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
    pub proto: u16,
    /// The upstream guard's destination bits; 0 for egress.
    pub dest: u16,
}

/// Counts and reports a connect (or sendmsg) the rules do not allow, and returns the verdict for
/// `mode` ([`mode::ENFORCE`] refuses).
#[inline(always)]
pub fn refuse(
    events: &RingBuf,
    stats: &PerCpuArray<u64>,
    counters: &Counters,
    config_mode: u32,
    to: Destination,
) -> i32 {
    let enforce = config_mode == mode::ENFORCE;
    bump(
        stats,
        if enforce {
            counters.denied
        } else {
            counters.would_deny
        },
    );
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = EgressEvent {
        // SAFETY: helper call without memory arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        verdict: if enforce {
            verdict::DENIED
        } else {
            verdict::WOULD_DENY
        },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
        addr: to.addr,
        family: to.family,
        port: to.port,
        proto: to.proto,
        dest: to.dest,
    };
    if events.output::<EgressEvent>(&event, 0).is_err() {
        bump(stats, counters.events_lost);
    }
    if enforce {
        DENY
    } else {
        ALLOW
    }
}
