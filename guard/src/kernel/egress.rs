//! The egress allow-list: attaches the four `egress_*` programs at the cgroup v2 root and keeps
//! their maps equal to the config, the resolved host names and the guarded cgroups.

use std::{
    collections::{BTreeSet, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use aya::Ebpf;
use guard_common::egress::{
    EgressConfig, MAP_EGRESS_ALLOW_V4, MAP_EGRESS_ALLOW_V6, MAP_EGRESS_CGROUPS, MAP_EGRESS_CONFIG,
    MAP_EGRESS_EVENTS, MAP_EGRESS_STATS, MAX_EGRESS_CGROUPS, MAX_EGRESS_TARGETS,
    PROG_EGRESS_CONNECT_V4, PROG_EGRESS_CONNECT_V6, PROG_EGRESS_SENDMSG_V4, PROG_EGRESS_SENDMSG_V6,
    STAT_ALLOWED, STAT_DENIED, STAT_EVENTS_LOST, STAT_WOULD_DENY,
};
use guard_common::{PortAddrV4, PortAddrV6};
use ipnet::IpNet;

use super::{
    cgroup_programs, events,
    family::{Family, Host, Refresh, RuleStats, Start, Started},
    maps::{self, HashStep, SlotStep, TrieStep},
    Counters, KernelError,
};
use crate::{
    config::{
        egress::{EgressPolicy, EgressTarget},
        Config, EgressSection, GuardedSection,
    },
    guarded::{self, GuardedCgroup},
    resolve::{self, Resolved},
};

/// The egress allow-list as a program family: attached at the cgroup root while `[egress]` is on
/// and a guarded service is configured; the guarded cgroups and resolved host names followed.
#[derive(Default)]
pub struct EgressAllowList {
    attached: bool,
    /// Host-name targets as last resolved.
    resolved: Resolved,
}

/// What the allow-list reads: its section, the guarded service, and the provider gateway.
pub struct Section<'a> {
    pub egress: &'a EgressSection,
    pub guarded: &'a GuardedSection,
    pub gateway: Option<SocketAddr>,
}

impl EgressAllowList {
    /// Every allowed target now: the section's, the resolved names', the gateway's, DNS.
    fn targets(&self, section: &Section<'_>) -> HashSet<(IpNet, u16)> {
        targets(
            section.egress,
            &self.resolved,
            &dns_servers(section.egress),
            section.gateway,
        )
    }

    /// Makes the maps follow the section, the resolved names and `cgroups`; nothing while the
    /// programs are not attached.
    fn apply(
        &self,
        ebpf: &mut Ebpf,
        section: &Section<'_>,
        cgroups: &[GuardedCgroup],
    ) -> Result<(), KernelError> {
        if !self.attached {
            return Ok(());
        }
        let targets = self.targets(section);
        apply(ebpf, section.egress, &targets, cgroups)
    }

    /// Takes a new set of resolved host names into the allow-list. A set the maps refuse (too
    /// many addresses, say) is dropped: the previous one stays, so later reloads are not refused
    /// for it.
    pub fn set_resolved(
        &mut self,
        ebpf: &mut Ebpf,
        section: &Section<'_>,
        cgroups: &[GuardedCgroup],
        resolved: Resolved,
    ) -> Result<(), KernelError> {
        let previous = std::mem::replace(&mut self.resolved, resolved);
        let outcome = self.apply(ebpf, section, cgroups);
        if outcome.is_err() {
            self.resolved = previous;
        }
        outcome
    }
}

impl Family for EgressAllowList {
    type Section<'a> = Section<'a>;
    type Pending = ();

    fn section(config: &Config) -> Section<'_> {
        Section {
            egress: &config.egress,
            guarded: &config.guarded,
            gateway: super::gateway(config),
        }
    }

    fn needs_cgroup(&mut self, section: &Section<'_>) -> bool {
        section.egress.enabled && section.guarded.is_set()
    }

    fn start(&mut self, section: &Section<'_>, cx: &mut Start<'_>) -> Started {
        let root = match cx.root {
            Some(root) if section.egress.enabled && section.guarded.is_set() => root,
            _ => {
                if section.egress.enabled {
                    tracing::info!(
                        "egress: no [guarded] service configured; the allow-list is idle"
                    );
                }
                return Ok(Vec::new());
            }
        };
        *cx.guarded = guarded::cgroups(section.guarded, root);
        // Nothing is resolved yet.
        let targets = self.targets(section);
        apply(cx.ebpf, section.egress, &targets, cx.guarded)?;
        let programs = cgroup_programs::attach(
            cx.ebpf,
            cx.pins,
            root,
            section.egress.mode.as_str(),
            PROGRAMS,
        )?;
        self.attached = true;
        Ok(programs)
    }

    fn events(&self) -> Vec<events::Source> {
        let source = events::audited!("egress events", MAP_EGRESS_EVENTS, events::egress_record);
        self.attached.then_some(source).into_iter().collect()
    }

    fn plan(&self, section: &Section<'_>, host: &Host<'_>) -> (maps::Plan, ()) {
        if !self.attached {
            return (Vec::new(), ());
        }
        let targets = self.targets(section);
        (plan(section.egress, &targets, host.guarded), ())
    }

    fn commit(&mut self, (): ()) {}

    /// The configured resolvers only: the system's are not read for a check.
    fn config_plan(section: &Section<'_>) -> maps::Plan {
        let targets = targets(
            section.egress,
            &Resolved::new(),
            &section.egress.dns,
            section.gateway,
        );
        plan(section.egress, &targets, &[])
    }

    /// A restarted guarded service (a new cgroup) is followed.
    fn refresh(&mut self, section: &Section<'_>, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        if !cx.guarded_changed {
            return Ok(());
        }
        self.apply(cx.ebpf, section, cx.guarded)
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        out.add(
            "egress",
            RuleStats::read(
                ebpf,
                MAP_EGRESS_STATS,
                [STAT_ALLOWED, STAT_DENIED, STAT_WOULD_DENY, STAT_EVENTS_LOST],
            )?,
        );
        Ok(())
    }
}

/// The configured DNS resolvers, or the system's.
fn dns_servers(config: &EgressSection) -> Vec<IpAddr> {
    if config.dns.is_empty() {
        resolve::system_nameservers()
    } else {
        config.dns.clone()
    }
}

/// The programs, attached at the cgroup root, and their hooks.
const PROGRAMS: &[(&str, &str)] = &[
    (PROG_EGRESS_CONNECT_V4, "cgroup/connect4"),
    (PROG_EGRESS_CONNECT_V6, "cgroup/connect6"),
    (PROG_EGRESS_SENDMSG_V4, "cgroup/sendmsg4"),
    (PROG_EGRESS_SENDMSG_V6, "cgroup/sendmsg6"),
];

/// Every allowed (network, port) pair, port 0 meaning any. Under either policy: the provider
/// gateway's address when one runs (`gateway`; loopback for a gateway on the unspecified
/// address) and the DNS resolvers on port 53 (with `allow_dns`). With `policy = "allow-list"`
/// also the listed targets, resolved host names and proxyguard's own port on loopback; with
/// `policy = "gateway-only"` nothing else.
pub fn targets(
    config: &EgressSection,
    resolved: &Resolved,
    dns: &[IpAddr],
    gateway: Option<SocketAddr>,
) -> HashSet<(IpNet, u16)> {
    let mut out = HashSet::new();
    if config.allow_dns {
        for resolver in dns {
            out.insert((IpNet::from(*resolver), 53));
        }
    }
    if let Some(gateway) = gateway {
        out.insert((IpNet::from(reachable(gateway.ip())), gateway.port()));
    }
    if config.policy == EgressPolicy::GatewayOnly {
        return out;
    }
    for target in &config.allow {
        match target {
            EgressTarget::Net { net, port } => {
                out.insert((*net, port.unwrap_or(0)));
            }
            EgressTarget::Host { host, port } => {
                for addr in resolved.get(&(host.clone(), *port)).into_iter().flatten() {
                    out.insert((IpNet::from(*addr), *port));
                }
            }
        }
    }
    out.insert((
        IpNet::from(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        config.guard_port,
    ));
    out.insert((
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        config.guard_port,
    ));
    out
}

/// The address a local connect reaches a listener on `ip` by: loopback for the unspecified
/// address (of its family), else `ip` itself. Only that one address: another process listening
/// on another loopback address and the same port must not become a way out.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// Makes the maps equal to the plan, all or nothing.
pub fn apply(
    ebpf: &mut Ebpf,
    config: &EgressSection,
    targets: &HashSet<(IpNet, u16)>,
    cgroups: &[GuardedCgroup],
) -> Result<(), KernelError> {
    maps::apply(ebpf, &plan(config, targets, cgroups))
}

/// What the maps should hold. Allowed targets go in before the cgroups and the mode, so newly
/// guarded tasks never meet an empty list.
pub fn plan(
    config: &EgressSection,
    targets: &HashSet<(IpNet, u16)>,
    cgroups: &[GuardedCgroup],
) -> maps::Plan {
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for (net, port) in targets {
        let port = port.to_be_bytes();
        match net {
            IpNet::V4(net) => v4.insert((
                16 + u32::from(net.prefix_len()),
                PortAddrV4 {
                    port,
                    addr: net.network().octets(),
                },
            )),
            IpNet::V6(net) => v6.insert((
                16 + u32::from(net.prefix_len()),
                PortAddrV6 {
                    port,
                    addr: net.network().octets(),
                },
            )),
        };
    }
    let guarded: Vec<(u64, u32)> = if config.enabled {
        let ids: BTreeSet<u64> = cgroups.iter().map(|c| c.id).collect();
        ids.into_iter().map(|id| (id, 1)).collect()
    } else {
        Vec::new()
    };
    let max_level = if config.enabled {
        cgroups.iter().map(|c| c.level).max().unwrap_or(0)
    } else {
        0
    };
    vec![
        TrieStep::ones(MAP_EGRESS_ALLOW_V4, "egress.allow", MAX_EGRESS_TARGETS, v4),
        TrieStep::ones(MAP_EGRESS_ALLOW_V6, "egress.allow", MAX_EGRESS_TARGETS, v6),
        HashStep::boxed(MAP_EGRESS_CGROUPS, "guarded", MAX_EGRESS_CGROUPS, guarded),
        SlotStep::boxed(
            MAP_EGRESS_CONFIG,
            "egress.mode",
            EgressConfig {
                mode: config.mode.kernel_value(),
                max_level,
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_hold_lists_hosts_dns_and_the_guard_port() {
        let config = EgressSection {
            allow: vec![
                "10.0.0.0/8:5432".parse().unwrap(),
                "api.example.com:443".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            guard_port: 8080,
            ..Default::default()
        };
        let mut resolved = Resolved::new();
        resolved.insert(
            ("api.example.com".into(), 443),
            vec!["192.0.2.7".parse().unwrap()],
        );
        let dns = ["192.0.2.53".parse().unwrap()];
        let got = targets(&config, &resolved, &dns, "127.0.0.1:8089".parse().ok());
        let want: HashSet<(IpNet, u16)> = [
            ("10.0.0.0/8", 5432),
            ("192.0.2.7/32", 443),
            ("2001:db8::/32", 0),
            ("192.0.2.53/32", 53),
            ("127.0.0.1/32", 8080),
            ("::1/128", 8080),
            ("127.0.0.1/32", 8089),
        ]
        .into_iter()
        .map(|(net, port)| (net.parse().unwrap(), port))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gateway_only_allows_the_gateway_and_dns_alone() {
        let mut config = EgressSection {
            policy: EgressPolicy::GatewayOnly,
            guard_port: 8080,
            ..Default::default()
        };
        let mut resolved = Resolved::new();
        resolved.insert(
            ("api.example.com".into(), 443),
            vec!["192.0.2.7".parse().unwrap()],
        );
        let dns = ["192.0.2.53".parse().unwrap()];
        let set = |pairs: &[(&str, u16)]| -> HashSet<(IpNet, u16)> {
            pairs
                .iter()
                .map(|(net, port)| (net.parse().unwrap(), *port))
                .collect()
        };
        let gateway = "127.0.0.1:8089".parse().ok();
        assert_eq!(
            targets(&config, &resolved, &dns, gateway),
            set(&[("127.0.0.1/32", 8089), ("192.0.2.53/32", 53)]),
            "no proxyguard front port, no resolved provider"
        );
        config.allow_dns = false;
        assert_eq!(
            targets(&config, &resolved, &dns, gateway),
            set(&[("127.0.0.1/32", 8089)])
        );
        assert_eq!(
            targets(&config, &resolved, &dns, "[::]:8089".parse().ok()),
            set(&[("::1/128", 8089)]),
            "a gateway on the unspecified address is reached by loopback"
        );
        assert!(
            targets(&config, &resolved, &dns, None).is_empty(),
            "no gateway: nothing at all"
        );
        // allow_dns = false holds for the allow-list too.
        config.policy = EgressPolicy::AllowList;
        assert_eq!(
            targets(&config, &resolved, &dns, gateway),
            set(&[
                ("127.0.0.1/32", 8080),
                ("::1/128", 8080),
                ("127.0.0.1/32", 8089)
            ])
        );
    }
}
