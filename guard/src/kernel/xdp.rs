//! The XDP connection rate limit: attaches `syn_rate_limit` to the configured interfaces (native
//! where the driver allows, generic otherwise) and keeps its maps equal to the config.

use std::collections::{BTreeSet, HashSet};

use aya::{
    programs::{
        xdp::{XdpLink, XdpMode},
        Xdp,
    },
    Ebpf,
};
use guard_common::xdp::{
    XdpConfig, LIST_ALLOW, LIST_DENY, MAP_XDP_ALLOW_V4, MAP_XDP_ALLOW_V6, MAP_XDP_CONFIG,
    MAP_XDP_DENY_V4, MAP_XDP_DENY_V6, MAP_XDP_PORTS, MAP_XDP_STATS, MAX_XDP_CIDRS, MAX_XDP_PORTS,
    PROG_XDP_SYN_LIMIT, STAT_DROPPED_DENY, STAT_DROPPED_RATE, STAT_EVENTS_LOST, STAT_PASSED,
    STAT_WOULD_DROP,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    maps::{self, HashStep, SlotStep, TrieStep},
    pins::{PinDir, Pinned},
    AttachedProgram, KernelError,
};
use crate::config::xdp::{AttachMode, XdpSection};

/// Attaches the program to every configured interface through a pinned link (native where the
/// driver allows), adopts the link an earlier daemon of the same object pinned there, or swaps
/// this object's program into another object's pinned link.
///
/// Also returns one line per interface saying which mode is in use and, for generic mode, why
/// native was not.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    config: &XdpSection,
) -> Result<(Vec<AttachedProgram>, Vec<String>), KernelError> {
    let name = PROG_XDP_SYN_LIMIT;
    let mut attached = Vec::new();
    let mut modes = Vec::new();
    let mut loaded = false;
    for interface in &config.interfaces {
        let pinned = pins.pinned(name, interface);
        if let Pinned::Adopt { program_id } = pinned {
            modes.push(format!("{interface}: adopted from pins"));
            attached.push(AttachedProgram::adopted(
                name,
                "xdp (adopted)",
                interface.clone(),
                config.mode.as_str(),
                program_id,
            ));
            continue;
        }
        let program: &mut Xdp = super::program(ebpf, name)?;
        if !loaded {
            program
                .load()
                .map_err(|source| KernelError::LoadProgram { name, source })?;
            loaded = true;
        }
        if let Pinned::Replace { link, .. } = pinned {
            // One XDP program per interface: the pinned link keeps its place (and its native or
            // generic mode) and gets the new program in one step.
            let err = |source| KernelError::Attach {
                name,
                target: interface.clone(),
                source,
            };
            let link = XdpLink::try_from(link).map_err(|e| KernelError::Replace {
                path: pins.link_path(name, interface),
                source: std::io::Error::other(e),
            })?;
            let id = program.attach_to_link(link).map_err(err)?;
            // The pin holds the link; this handle is not needed.
            drop(program.take_link(id));
            modes.push(format!("{interface}: replaced in place"));
            attached.push(AttachedProgram {
                name,
                hook: "xdp (replaced)",
                target: interface.clone(),
                mode: config.mode.as_str(),
                adopted: false,
                replaced: true,
                program_id: program.info().ok().map(|i| i.id()),
            });
            continue;
        }
        let attempts: &[(XdpMode, &'static str)] = match config.attach {
            AttachMode::Auto => &[
                (XdpMode::Driver, "xdp (native)"),
                (XdpMode::Skb, "xdp (generic)"),
            ],
            AttachMode::Native => &[(XdpMode::Driver, "xdp (native)")],
            AttachMode::Generic => &[(XdpMode::Skb, "xdp (generic)")],
        };
        let mut outcome = None;
        let mut last_error = None;
        for (mode, hook) in attempts {
            match program.attach(interface, *mode) {
                Ok(link_id) => {
                    outcome = Some((link_id, *hook));
                    break;
                }
                Err(err) => {
                    tracing::info!(interface, hook, "XDP attach mode unavailable: {err}");
                    last_error = Some(err);
                }
            }
        }
        let Some((link_id, hook)) = outcome else {
            let source = last_error.expect("at least one attempt was made");
            return Err(KernelError::Attach {
                name,
                target: interface.clone(),
                source,
            });
        };
        modes.push(match (&last_error, hook) {
            (Some(native_refused), "xdp (generic)") => {
                format!("{interface}: generic (native refused: {native_refused})")
            }
            _ => format!(
                "{interface}: {}",
                hook.trim_start_matches("xdp (").trim_end_matches(')')
            ),
        });
        let link = program
            .take_link(link_id)
            .map_err(|source| KernelError::TakeLink { name, source })?;
        pins.pin_link(link, name, interface)?;
        attached.push(AttachedProgram {
            name,
            hook,
            target: interface.clone(),
            mode: config.mode.as_str(),
            adopted: false,
            replaced: false,
            program_id: program.info().ok().map(|i| i.id()),
        });
    }
    Ok((attached, modes))
}

/// Makes the XDP maps equal to `config`, all or nothing.
pub fn apply(ebpf: &mut Ebpf, config: &XdpSection) -> Result<(), KernelError> {
    maps::apply(ebpf, &plan(config))
}

/// What the XDP maps should hold for `config`. Lists go in before the tunables, and a disabled
/// section protects no port.
pub fn plan(config: &XdpSection) -> maps::Plan {
    let (allow_v4, allow_v6) = split(&config.allow);
    let (deny_v4, deny_v6) = split(&config.deny);
    let tunables = XdpConfig {
        mode: config.mode.kernel_value(),
        rate_per_sec: config.rate_per_sec,
        burst: config.burst,
        v6_prefix_len: u32::from(config.ipv6_prefix),
        lists: (if config.allow.is_empty() {
            0
        } else {
            LIST_ALLOW
        }) | (if config.deny.is_empty() { 0 } else { LIST_DENY }),
        _pad: 0,
    };
    let ports: Vec<(u16, u32)> = if config.enabled {
        let distinct: BTreeSet<u16> = config.ports.iter().copied().collect();
        distinct.into_iter().map(|p| (p, 1)).collect()
    } else {
        Vec::new()
    };
    vec![
        TrieStep::ones(MAP_XDP_ALLOW_V4, "xdp.allow", MAX_XDP_CIDRS, allow_v4),
        TrieStep::ones(MAP_XDP_ALLOW_V6, "xdp.allow", MAX_XDP_CIDRS, allow_v6),
        TrieStep::ones(MAP_XDP_DENY_V4, "xdp.deny", MAX_XDP_CIDRS, deny_v4),
        TrieStep::ones(MAP_XDP_DENY_V6, "xdp.deny", MAX_XDP_CIDRS, deny_v6),
        SlotStep::boxed(MAP_XDP_CONFIG, "xdp", tunables),
        HashStep::boxed(MAP_XDP_PORTS, "xdp.ports", MAX_XDP_PORTS, ports),
    ]
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
