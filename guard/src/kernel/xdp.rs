//! The XDP connection rate limit: attaches `syn_rate_limit` to the configured interfaces (native
//! where the driver allows, generic otherwise) and keeps its maps equal to the config.

use std::collections::HashSet;

use aya::{
    maps::Array,
    programs::{xdp::XdpMode, Xdp},
    Ebpf,
};
use guard_common::xdp::{
    XdpConfig, MAP_XDP_ALLOW_V4, MAP_XDP_ALLOW_V6, MAP_XDP_CONFIG, MAP_XDP_DENY_V4,
    MAP_XDP_DENY_V6, MAP_XDP_PORTS, MAP_XDP_STATS, PROG_XDP_SYN_LIMIT, STAT_DROPPED_DENY,
    STAT_DROPPED_RATE, STAT_EVENTS_LOST, STAT_PASSED, STAT_WOULD_DROP,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{maps, AttachedProgram, KernelError};
use crate::config::xdp::{AttachMode, XdpSection};

/// Loads the program and attaches it to every configured interface.
pub fn attach(ebpf: &mut Ebpf, config: &XdpSection) -> Result<Vec<AttachedProgram>, KernelError> {
    let name = PROG_XDP_SYN_LIMIT;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })?;
    program
        .load()
        .map_err(|source| KernelError::LoadProgram { name, source })?;
    let mut attached = Vec::new();
    for interface in &config.interfaces {
        let attempts: &[(XdpMode, &'static str)] = match config.attach {
            AttachMode::Auto => &[
                (XdpMode::Driver, "xdp (native)"),
                (XdpMode::Skb, "xdp (generic)"),
            ],
            AttachMode::Native => &[(XdpMode::Driver, "xdp (native)")],
            AttachMode::Generic => &[(XdpMode::Skb, "xdp (generic)")],
        };
        let mut last_error = None;
        for (mode, hook) in attempts {
            match program.attach(interface, *mode) {
                Ok(_) => {
                    attached.push(AttachedProgram {
                        name,
                        hook,
                        target: interface.clone(),
                        mode: config.mode.as_str(),
                    });
                    last_error = None;
                    break;
                }
                Err(err) => {
                    tracing::info!(interface, hook, "XDP attach mode unavailable: {err}");
                    last_error = Some(err);
                }
            }
        }
        if let Some(source) = last_error {
            return Err(KernelError::Attach {
                name,
                target: interface.clone(),
                source,
            });
        }
    }
    Ok(attached)
}

/// Makes the XDP maps equal to `config`. Lists go in before the tunables, and a disabled section
/// protects no port.
pub fn apply(ebpf: &mut Ebpf, config: &XdpSection) -> Result<(), KernelError> {
    let (allow_v4, allow_v6) = split(&config.allow);
    let (deny_v4, deny_v6) = split(&config.deny);
    maps::sync_trie(ebpf, MAP_XDP_ALLOW_V4, &allow_v4)?;
    maps::sync_trie(ebpf, MAP_XDP_ALLOW_V6, &allow_v6)?;
    maps::sync_trie(ebpf, MAP_XDP_DENY_V4, &deny_v4)?;
    maps::sync_trie(ebpf, MAP_XDP_DENY_V6, &deny_v6)?;

    let tunables = XdpConfig {
        mode: config.mode.kernel_value(),
        rate_per_sec: config.rate_per_sec,
        burst: config.burst,
        v6_prefix_len: u32::from(config.ipv6_prefix),
    };
    let name = MAP_XDP_CONFIG;
    let mut array: Array<_, XdpConfig> = maps::typed(ebpf, name)?;
    array
        .set(0, tunables, 0)
        .map_err(|source| KernelError::Map { name, source })?;

    let ports: Vec<(u16, u32)> = if config.enabled {
        config.ports.iter().map(|p| (*p, 1)).collect()
    } else {
        Vec::new()
    };
    maps::sync_hash(ebpf, MAP_XDP_PORTS, &ports)
}

/// LPM entries: (prefix length, network address).
type Prefixes<const N: usize> = HashSet<(u32, [u8; N])>;

fn split(nets: &[IpNet]) -> (Prefixes<4>, Prefixes<16>) {
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for net in nets {
        match net.trunc() {
            IpNet::V4(net) => v4.insert((u32::from(net.prefix_len()), net.network().octets())),
            IpNet::V6(net) => v6.insert((u32::from(net.prefix_len()), net.network().octets())),
        };
    }
    (v4, v6)
}

/// Counters summed over CPUs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct XdpStats {
    pub passed: u64,
    pub dropped_rate: u64,
    pub dropped_deny: u64,
    pub would_drop: u64,
    pub events_lost: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<XdpStats, KernelError> {
    let [passed, dropped_rate, dropped_deny, would_drop, events_lost] = maps::percpu_sums(
        ebpf,
        MAP_XDP_STATS,
        [
            STAT_PASSED,
            STAT_DROPPED_RATE,
            STAT_DROPPED_DENY,
            STAT_WOULD_DROP,
            STAT_EVENTS_LOST,
        ],
    )?;
    Ok(XdpStats {
        passed,
        dropped_rate,
        dropped_deny,
        would_drop,
        events_lost,
    })
}
