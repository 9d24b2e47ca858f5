//! The XDP connection rate limit: attaches `syn_rate_limit` (its jiffies build where the kernel's
//! `HZ` is known, else its coarse-clock build where the kernel has `bpf_ktime_get_coarse_ns`) to the interfaces that can carry traffic to the front
//! listener, or to the configured ones (native where the driver allows, generic otherwise), and
//! keeps its maps equal to the config.
//!
//! `interfaces = []` means "the ones that matter": none for a loopback listener (no interface
//! but `lo` carries traffic to it), and every non-loopback interface that is up for a wildcard or
//! another local address (a local address is reachable through any interface). The daemon's
//! periodic refresh attaches to interfaces that come up later.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
};

use aya::{
    programs::{
        xdp::{XdpLink, XdpMode},
        Xdp,
    },
    Ebpf,
};
use guard_common::xdp::{
    XdpConfig, LIST_ALLOW, LIST_DENY, MAP_XDP_ALLOW_V4, MAP_XDP_ALLOW_V6, MAP_XDP_CONFIG,
    MAP_XDP_DENY_V4, MAP_XDP_DENY_V6, MAP_XDP_EVENTS, MAP_XDP_STATS, MAX_XDP_CIDRS,
    PROG_XDP_SYN_LIMIT, PROG_XDP_SYN_LIMIT_COARSE, PROG_XDP_SYN_LIMIT_JIFFIES, STAT_DROPPED_DENY,
    STAT_DROPPED_NEW_SOURCE, STAT_DROPPED_RATE, STAT_EVENTS_LOST, STAT_EVENTS_SUPPRESSED,
    STAT_PASSED, STAT_WOULD_DROP,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    events,
    family::{Family, Host, Refresh, Start, Started},
    features,
    maps::{self, SlotStep, TrieStep},
    pins::{PinDir, Pinned},
    AttachedProgram, Counters, KernelError,
};
use crate::config::{
    xdp::{AttachMode, XdpSection},
    Config, ProxyConfig,
};

mod jiffies;

/// The SYN rate limit as a program family: its maps always written, attached to the interfaces
/// of [`interfaces`], and to those that come up later.
#[derive(Default)]
pub struct SynLimit {
    /// The interfaces the limit is attached to, and why.
    interfaces: Interfaces,
}

/// What the limit reads: its section, and the front listener it protects.
pub struct Section<'a> {
    pub xdp: &'a XdpSection,
    pub proxy: &'a ProxyConfig,
}

impl SynLimit {
    pub fn interfaces(&self) -> &Interfaces {
        &self.interfaces
    }
}

impl Family for SynLimit {
    type Section<'a> = Section<'a>;
    type Pending = ();

    fn section(config: &Config) -> Section<'_> {
        Section {
            xdp: &config.xdp,
            proxy: &config.proxy,
        }
    }

    fn start(&mut self, section: &Section<'_>, cx: &mut Start<'_>) -> Started {
        apply(cx.ebpf, section.xdp)?;
        self.interfaces = interfaces(section.xdp, section.proxy);
        if self.interfaces.names.is_empty() {
            tracing::info!("xdp: the SYN rate limit is off: {}", self.interfaces.why);
            return Ok(Vec::new());
        }
        let (attached, modes) = attach(cx.ebpf, cx.pins, section.xdp, &self.interfaces.names)?;
        cx.features.push(features::xdp_modes(&modes));
        Ok(attached)
    }

    /// Read even while nothing is attached: an interface that comes up later gets the limit.
    fn events(&self) -> Vec<events::Source> {
        vec![events::audited!(
            "xdp events",
            MAP_XDP_EVENTS,
            events::xdp_record
        )]
    }

    fn plan(&self, section: &Section<'_>, _host: &Host<'_>) -> (maps::Plan, ()) {
        (plan(section.xdp), ())
    }

    fn commit(&mut self, (): ()) {}

    fn config_plan(section: &Section<'_>) -> maps::Plan {
        plan(section.xdp)
    }

    /// Attaches the limit to interfaces that came up since the last look (with
    /// `interfaces = []`); interfaces that went away keep their pinned link until the next start.
    fn refresh(&mut self, section: &Section<'_>, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        let now = interfaces(section.xdp, section.proxy);
        let new: Vec<String> = now
            .names
            .iter()
            .filter(|name| {
                !self.interfaces.names.contains(name) && !self.interfaces.refused.contains(name)
            })
            .cloned()
            .collect();
        if new.is_empty() {
            self.interfaces.why = now.why;
            return Ok(());
        }
        match attach(cx.ebpf, cx.pins, section.xdp, &new) {
            Ok((attached, modes)) => {
                tracing::info!(interfaces = ?new, "xdp: attached to interfaces that came up: {}", modes.join("; "));
                cx.programs.extend(attached);
                self.interfaces.names.extend(new);
                self.interfaces.why = now.why;
            }
            Err(err) => {
                tracing::error!(interfaces = ?new, "xdp: cannot attach to a new interface (not retried): {err}");
                self.interfaces.refused.extend(new);
            }
        }
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        out.add("xdp", stats(ebpf)?);
        Ok(())
    }
}

/// The interfaces the limit is attached to, and why those.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Interfaces {
    pub names: Vec<String>,
    /// `configured` (the `[xdp] interfaces` list) or `auto` (from the front listener).
    pub source: &'static str,
    pub why: String,
    /// Interfaces that came up after start and refused the program (not retried).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// Which interfaces `config` asks for now: the list, or the ones that can carry traffic to the
/// front listener.
pub fn interfaces(xdp: &XdpSection, proxy: &ProxyConfig) -> Interfaces {
    let chosen = |names, source, why: &str| Interfaces {
        names,
        source,
        why: why.into(),
        refused: Vec::new(),
    };
    if !xdp.enabled {
        return chosen(Vec::new(), "configured", "[xdp] enabled = false");
    }
    if !xdp.interfaces.is_empty() {
        return chosen(
            xdp.interfaces.clone(),
            "configured",
            "listed in [xdp] interfaces",
        );
    }
    if !proxy.enabled {
        return chosen(
            Vec::new(),
            "auto",
            "the front proxy is off and [xdp] interfaces is empty: nothing to protect",
        );
    }
    auto_interfaces(proxy.listen, &up_interfaces())
}

/// The choice for `listen`, given the (name, loopback) interfaces that are up.
fn auto_interfaces(listen: SocketAddr, up: &[(String, bool)]) -> Interfaces {
    if listen.ip().is_loopback() {
        return Interfaces {
            names: Vec::new(),
            source: "auto",
            why: format!(
                "the front listener {listen} is on loopback: no network interface carries traffic to it (list interfaces in [xdp] interfaces to attach anyway)"
            ),
            refused: Vec::new(),
        };
    }
    let names: Vec<String> = up
        .iter()
        .filter(|(_, loopback)| !*loopback)
        .map(|(name, _)| name.clone())
        .collect();
    let what = if listen.ip().is_unspecified() {
        "a wildcard address"
    } else {
        "a non-loopback address, reachable through any interface"
    };
    Interfaces {
        why: if names.is_empty() {
            format!(
                "the front listener {listen} is on {what}, but no non-loopback interface is up yet"
            )
        } else {
            format!(
                "the front listener {listen} is on {what}: every non-loopback interface that is up"
            )
        },
        names,
        source: "auto",
        refused: Vec::new(),
    }
}

/// Every interface that is up in the daemon's network namespace, with whether it is a loopback.
fn up_interfaces() -> Vec<(String, bool)> {
    use nix::net::if_::InterfaceFlags;
    let mut seen = BTreeSet::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    for ifa in addrs {
        if ifa.flags.contains(InterfaceFlags::IFF_UP) {
            seen.insert((
                ifa.interface_name,
                ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            ));
        }
    }
    seen.into_iter().collect()
}

/// The limiter's program in this object: the jiffies build when `HZ` is known, else the
/// coarse-clock build when the kernel accepts it, else the precise one. Loads it on first use.
fn limiter(ebpf: &mut Ebpf) -> Result<(&mut Xdp, &'static str), KernelError> {
    let all = [
        PROG_XDP_SYN_LIMIT_JIFFIES,
        PROG_XDP_SYN_LIMIT_COARSE,
        PROG_XDP_SYN_LIMIT,
    ];
    for name in all {
        let program: &mut Xdp = super::program(ebpf, name)?;
        if program.fd().is_ok() {
            return Ok((super::program(ebpf, name)?, name));
        }
    }
    // The config map holds the clock's scale before any build is loaded (`apply` runs first).
    let tried = if jiffies::clock().is_some() {
        &all[..]
    } else {
        &all[1..]
    };
    for name in &tried[..tried.len() - 1] {
        let program: &mut Xdp = super::program(ebpf, name)?;
        match program.load() {
            Ok(()) => return Ok((super::program(ebpf, name)?, name)),
            Err(err) => tracing::info!(
                "the limiter build {name} is refused here, trying the next clock: {err}"
            ),
        }
    }
    let name = PROG_XDP_SYN_LIMIT;
    let program: &mut Xdp = super::program(ebpf, name)?;
    program
        .load()
        .map_err(|source| KernelError::LoadProgram { name, source })?;
    Ok((program, name))
}

/// Attaches the program to every configured interface through a pinned link (native where the
/// driver allows), adopts the link an earlier daemon of the same object pinned there, or swaps
/// this object's program into another object's pinned link.
///
/// Also returns one line per interface saying which mode is in use and, for generic mode, why
/// native was not.
///
/// `interfaces` are those of [`interfaces`]; links are pinned under `syn_rate_limit@<interface>`
/// whichever clock the program reads.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    config: &XdpSection,
    interfaces: &[String],
) -> Result<(Vec<AttachedProgram>, Vec<String>), KernelError> {
    let name = PROG_XDP_SYN_LIMIT;
    let mut attached = Vec::new();
    let mut modes = Vec::new();
    for interface in interfaces {
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
        let (program, variant) = limiter(ebpf)?;
        let clock = match variant {
            PROG_XDP_SYN_LIMIT_JIFFIES => "jiffies clock",
            PROG_XDP_SYN_LIMIT_COARSE => "coarse clock",
            _ => "precise clock",
        };
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
            modes.push(format!("{interface}: replaced in place, {clock}"));
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
                format!("{interface}: generic, {clock} (native refused: {native_refused})")
            }
            _ => format!(
                "{interface}: {}, {clock}",
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
    vec![
        TrieStep::ones(MAP_XDP_ALLOW_V4, "xdp.allow", MAX_XDP_CIDRS, allow_v4),
        TrieStep::ones(MAP_XDP_ALLOW_V6, "xdp.allow", MAX_XDP_CIDRS, allow_v6),
        TrieStep::ones(MAP_XDP_DENY_V4, "xdp.deny", MAX_XDP_CIDRS, deny_v4),
        TrieStep::ones(MAP_XDP_DENY_V6, "xdp.deny", MAX_XDP_CIDRS, deny_v6),
        // With the ports: one bit per port in the bitmap, so every port list fits.
        SlotStep::boxed(MAP_XDP_CONFIG, "xdp", tunables(config)),
    ]
}

/// The kernel's tunables and ports. Masks are in network byte order, as the program ANDs them
/// with keys loaded straight from the packet.
pub fn tunables(config: &XdpSection) -> XdpConfig {
    let clock = jiffies::clock();
    let mut tunables = XdpConfig {
        mode: config.mode.kernel_value(),
        flags: (if config.allow.is_empty() {
            0
        } else {
            LIST_ALLOW
        }) | (if config.deny.is_empty() { 0 } else { LIST_DENY }),
        source_interval_ns: interval_ns(config.rate_per_sec),
        source_tolerance_ns: tolerance_ns(config.rate_per_sec, config.burst),
        v6_source_mask: mask64(config.ipv6_prefix).to_be(),
        v4_prefix_mask: mask32(config.new_source_prefix_v4).to_be(),
        ns_per_jiffy: clock.map_or(0, |c| c.ns_per_jiffy),
        jiffies_offset_ns: clock.map_or(0, |c| c.offset_ns),
        new_interval_ns: interval_ns(config.new_sources_per_sec),
        new_tolerance_ns: tolerance_ns(config.new_sources_per_sec, config.new_sources_burst),
        v6_prefix_mask: mask64(config.new_source_prefix_v6).to_be(),
        events_per_sec: config.events_per_sec,
        v4_prefix_len: config.new_source_prefix_v4,
        v6_prefix_len: config.new_source_prefix_v6,
        v6_source_len: config.ipv6_prefix,
        ..XdpConfig::default()
    };
    // A disabled section protects no port.
    tunables.set_ports(if config.enabled { &config.ports } else { &[] });
    tunables
}

/// GCRA's emission interval: ns between SYNs at `rate` per second (validated to be at least 1).
fn interval_ns(rate: u32) -> u64 {
    1_000_000_000 / u64::from(rate.max(1))
}

/// How early a SYN may come: `burst - 1` intervals, so `burst` pass at once from a full bucket.
fn tolerance_ns(rate: u32, burst: u32) -> u64 {
    interval_ns(rate) * u64::from(burst.saturating_sub(1))
}

/// The first `len` bits set (host order), `len` clamped to 0..=32.
fn mask32(len: u8) -> u32 {
    match len {
        0 => 0,
        len => u32::MAX << (32 - u32::from(len.min(32))),
    }
}

fn mask64(len: u8) -> u64 {
    match len {
        0 => 0,
        len => u64::MAX << (64 - u32::from(len.min(64))),
    }
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
    /// SYNs from sources new to the limiter whose wider prefix admitted no more for now.
    pub dropped_new_source: u64,
    pub would_drop: u64,
    pub events_lost: u64,
    /// Drop events held back by the global cap (`events_per_sec`).
    pub events_suppressed: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<XdpStats, KernelError> {
    let [passed, dropped_rate, dropped_deny, dropped_new_source, would_drop, events_lost, events_suppressed] =
        maps::percpu_sums(
            ebpf,
            MAP_XDP_STATS,
            [
                STAT_PASSED,
                STAT_DROPPED_RATE,
                STAT_DROPPED_DENY,
                STAT_DROPPED_NEW_SOURCE,
                STAT_WOULD_DROP,
                STAT_EVENTS_LOST,
                STAT_EVENTS_SUPPRESSED,
            ],
        )?;
    Ok(XdpStats {
        passed,
        dropped_rate,
        dropped_deny,
        dropped_new_source,
        would_drop,
        events_lost,
        events_suppressed,
    })
}

#[cfg(test)]
mod tests {
    use guard_common::xdp::PORTS_IN_BITMAP;

    use super::*;

    #[test]
    fn masks_keep_the_prefix_in_network_order() {
        let addr = u32::from_ne_bytes([198, 18, 7, 9]);
        let masked = addr & mask32(24).to_be();
        assert_eq!(masked.to_ne_bytes(), [198, 18, 7, 0]);
        assert_eq!(addr & mask32(32).to_be(), addr);
        let v6 = u64::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0xab, 0xcd]);
        assert_eq!(
            (v6 & mask64(48).to_be()).to_ne_bytes(),
            [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0]
        );
        assert_eq!(v6 & mask64(64).to_be(), v6);
        assert_eq!(mask64(0), 0);
    }

    #[test]
    fn auto_interfaces_follow_the_listener() {
        let up = vec![
            ("eth0".to_owned(), false),
            ("lo".to_owned(), true),
            ("wg0".to_owned(), false),
        ];
        let loopback = auto_interfaces("127.0.0.1:8080".parse().unwrap(), &up);
        assert!(loopback.names.is_empty());
        assert!(loopback.why.contains("loopback"), "{}", loopback.why);
        let wildcard = auto_interfaces("[::]:8080".parse().unwrap(), &up);
        assert_eq!(wildcard.names, ["eth0", "wg0"]);
        assert!(wildcard.why.contains("wildcard"), "{}", wildcard.why);
        let external = auto_interfaces("192.0.2.1:8080".parse().unwrap(), &up);
        assert_eq!(external.names, ["eth0", "wg0"]);
        let none_up = auto_interfaces("0.0.0.0:8080".parse().unwrap(), &up[1..2]);
        assert!(none_up.names.is_empty());
        assert!(none_up.why.contains("no non-loopback"), "{}", none_up.why);
    }

    #[test]
    fn every_port_fits_the_bitmap() {
        let config = XdpSection {
            ports: (1..=u16::MAX).collect(),
            ..XdpSection::default()
        };
        assert!(plan(&config).iter().all(|s| s.entries() <= s.capacity()));
        let all = tunables(&config);
        assert!(all.protects(8080) && all.protects(65535) && !all.protects(0));
    }

    #[test]
    fn up_to_four_ports_sit_inline_and_more_go_to_the_bitmap() {
        let with = |ports: Vec<u16>, enabled| {
            tunables(&XdpSection {
                ports,
                enabled,
                ..XdpSection::default()
            })
        };
        let two = with(vec![8080, 443, 8080], true);
        assert_eq!(two.flags & PORTS_IN_BITMAP, 0);
        assert_eq!(two.ports, [8080, 443, 8080, 8080]);
        assert!(two.protects(443) && two.protects(8080) && !two.protects(0));
        let five = with(vec![1, 2, 3, 4, 5], true);
        assert_ne!(five.flags & PORTS_IN_BITMAP, 0);
        assert!((1..=5).all(|p| five.protects(p)) && !five.protects(6) && !five.protects(0));
        // Disabled, or no ports: nothing is protected, not even port 0 of the empty slots.
        let off = with(vec![8080], false);
        assert!(!off.protects(8080) && !off.protects(0));
        assert!(!with(Vec::new(), true).protects(0));
    }

    #[test]
    fn gcra_intervals_let_the_burst_through_at_once() {
        let config = XdpSection {
            rate_per_sec: 20,
            burst: 40,
            new_sources_per_sec: 10,
            new_sources_burst: 1,
            ..XdpSection::default()
        };
        let t = tunables(&config);
        assert_eq!(t.source_interval_ns, 50_000_000);
        assert_eq!(t.source_tolerance_ns, 39 * 50_000_000);
        assert_eq!((t.new_interval_ns, t.new_tolerance_ns), (100_000_000, 0));
        // The program's rule, replayed: a fresh bucket (one SYN taken) passes burst - 1 more at
        // the same instant, then refuses until an interval has passed.
        let now = 1_000_000_000u64;
        let mut due = now + t.source_interval_ns;
        let mut passed = 1;
        while due <= now + t.source_tolerance_ns {
            due = due.max(now) + t.source_interval_ns;
            passed += 1;
        }
        assert_eq!(passed, 40);
        let later = now + t.source_interval_ns;
        assert!(due <= later + t.source_tolerance_ns);
    }
}
