//! The upstream guard: attaches `upstream_connect_v4` / `upstream_connect_v6` at the cgroup v2
//! root and keeps their maps equal to the guarded destinations ([`GuardedDestination`]): the
//! upstream's port on this host's addresses (from `proxy.upstream`), which proxyguard's own
//! cgroup and `[upstream_guard] allow_cgroups` may connect to, and the provider gateway's port,
//! which proxyguard's own cgroup and the guarded service's may connect to. The cgroups are found
//! again at every start, reload and rescan.
//!
//! The links and maps are pinned, so while no daemon runs the rule keeps refusing everyone else;
//! the next daemon writes its own cgroup id before anything else changes.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::Path,
};

use aya::Ebpf;
use guard_common::upstream::{
    CgroupAllow, UpstreamConfig, CGROUP_EXACT, CGROUP_SUBTREE, DEST_GATEWAY, DEST_UPSTREAM,
    MAP_UPSTREAM_CGROUPS, MAP_UPSTREAM_CONFIG, MAP_UPSTREAM_DEST_V4, MAP_UPSTREAM_DEST_V6,
    MAP_UPSTREAM_EVENTS, MAP_UPSTREAM_STATS, MAX_UPSTREAM_CGROUPS, MAX_UPSTREAM_DESTS,
    PROG_UPSTREAM_CONNECT_V4, PROG_UPSTREAM_CONNECT_V6, STAT_ALLOWED, STAT_DENIED,
    STAT_EVENTS_LOST, STAT_WOULD_DENY, UPSTREAM_LAYOUT,
};
use guard_common::{PortAddrV4, PortAddrV6};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    cgroup_programs, events,
    family::{Family, Host, Refresh, RuleStats, Start, Started},
    maps::{self, HashStep, SlotStep, TrieStep},
    Counters, KernelError,
};
use crate::{
    config::{Config, GuardedSection, Mode, ProxyConfig, UpstreamGuardSection},
    guarded::{self, GuardedCgroup},
};

/// The programs, attached at the cgroup root, and their hooks.
const PROGRAMS: &[(&str, &str)] = &[
    (PROG_UPSTREAM_CONNECT_V4, "cgroup/connect4"),
    (PROG_UPSTREAM_CONNECT_V6, "cgroup/connect6"),
];

/// The upstream guard as a program family: attached at the cgroup root while some guarded
/// destination is on this host; the allowed cgroups followed.
#[derive(Default)]
pub struct UpstreamGuard {
    /// Whether the config guards a destination on this host, decided before the start.
    wanted: bool,
    attached: bool,
    /// The cgroups the rule lets connect, as last found.
    found: Found,
    /// The guarded destinations as last written.
    ports: Vec<(Destination, u16)>,
}

/// What the upstream guard reads: its section, the proxy's upstream, the guarded service and the
/// provider gateway.
pub struct Section<'a> {
    pub guard: &'a UpstreamGuardSection,
    pub proxy: &'a ProxyConfig,
    pub guarded: &'a GuardedSection,
    pub gateway: Option<SocketAddr>,
}

impl UpstreamGuard {
    /// The guarded destinations as last written: what `status` reports.
    pub fn ports(&self) -> &[(Destination, u16)] {
        &self.ports
    }

    /// The cgroups allowed now and the destinations they make: proxyguard's own cgroup id is in
    /// the map before the programs can run (or, adopted, before the new target takes effect).
    fn find_destinations(
        section: &Section<'_>,
        root: &Path,
        guarded: &[GuardedCgroup],
    ) -> (Found, Vec<GuardedDestination>) {
        let service = gateway_guarded(section, root, guarded);
        let found = find(section.guard, root, service);
        let dests = destinations(section, &found);
        (found, dests)
    }
}

fn ports(dests: &[GuardedDestination]) -> Vec<(Destination, u16)> {
    dests.iter().map(|d| (d.which, d.port)).collect()
}

impl Family for UpstreamGuard {
    type Section<'a> = Section<'a>;
    type Pending = Option<(Found, Vec<(Destination, u16)>)>;

    fn section(config: &Config) -> Section<'_> {
        Section {
            guard: &config.upstream_guard,
            proxy: &config.proxy,
            guarded: &config.guarded,
            gateway: super::gateway(config),
        }
    }

    fn needs_cgroup(&mut self, section: &Section<'_>) -> bool {
        self.wanted = !destinations(section, &Found::default()).is_empty();
        self.wanted
    }

    fn start(&mut self, section: &Section<'_>, cx: &mut Start<'_>) -> Started {
        let (true, Some(root)) = (self.wanted, cx.root) else {
            if section.guard.enabled && section.proxy.enabled {
                tracing::info!(
                    upstream = section.proxy.upstream,
                    "upstream_guard: the upstream is not on this host; the connect rule is off"
                );
            }
            return Ok(Vec::new());
        };
        let (found, dests) = Self::find_destinations(section, root, cx.guarded);
        apply(cx.ebpf, section.guard.mode, &dests)?;
        self.found = found;
        self.ports = ports(&dests);
        let programs = cgroup_programs::attach(
            cx.ebpf,
            cx.pins,
            root,
            section.guard.mode.as_str(),
            PROGRAMS,
        )?;
        self.attached = true;
        Ok(programs)
    }

    fn events(&self) -> Vec<events::Source> {
        let source = events::audited!(
            "upstream guard events",
            MAP_UPSTREAM_EVENTS,
            events::upstream_record
        );
        self.attached.then_some(source).into_iter().collect()
    }

    fn plan(&self, section: &Section<'_>, host: &Host<'_>) -> (maps::Plan, Self::Pending) {
        match (host.root, self.attached) {
            (Some(root), true) => {
                let (found, dests) = Self::find_destinations(section, root, host.guarded);
                let plan = plan(section.guard.mode, &dests);
                (plan, Some((found, ports(&dests))))
            }
            _ => (Vec::new(), None),
        }
    }

    fn commit(&mut self, pending: Self::Pending) {
        if let Some((found, ports)) = pending {
            self.found = found;
            self.ports = ports;
        }
    }

    /// The allowed cgroups are proxyguard's own and the listed ones (none found yet: counted).
    fn config_plan(section: &Section<'_>) -> maps::Plan {
        let found = Found {
            own: Some(0),
            listed: (1..=section.guard.allow_cgroups.len() as u64)
                .map(|id| (id, 1))
                .collect(),
            guarded: Vec::new(),
        };
        plan(section.guard.mode, &destinations(section, &found))
    }

    /// A restarted allowed cgroup, the guarded service (when it may use the gateway), and our
    /// own cgroup when someone moves the daemon, get new cgroup ids.
    fn refresh(&mut self, section: &Section<'_>, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        let (true, Some(root)) = (self.attached, cx.root) else {
            return Ok(());
        };
        let service = gateway_guarded(section, root, cx.guarded);
        let found = find(section.guard, root, service);
        if found != self.found {
            let dests = destinations(section, &found);
            apply(cx.ebpf, section.guard.mode, &dests)?;
            self.found = found;
            self.ports = ports(&dests);
        }
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        out.add(
            "upstream_guard",
            RuleStats::read(
                ebpf,
                MAP_UPSTREAM_STATS,
                [STAT_ALLOWED, STAT_DENIED, STAT_WOULD_DENY, STAT_EVENTS_LOST],
            )?,
        );
        Ok(())
    }
}

/// The guarded service's cgroups, for the gateway's allowance: `known` when egress already
/// follows them, else found now; none without a gateway.
fn gateway_guarded(
    section: &Section<'_>,
    root: &Path,
    known: &[GuardedCgroup],
) -> Vec<GuardedCgroup> {
    if section.gateway.is_none() || !section.guarded.is_set() {
        Vec::new()
    } else if !known.is_empty() {
        known.to_vec()
    } else {
        guarded::cgroups(section.guarded, root)
    }
}

/// Which guarded destination: its bit in the maps and its name in events and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// The guarded LLM proxy's port (`proxy.upstream`).
    Upstream,
    /// The provider gateway's port.
    Gateway,
}

impl Destination {
    pub fn bit(self) -> u32 {
        match self {
            Destination::Upstream => DEST_UPSTREAM,
            Destination::Gateway => DEST_GATEWAY,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Upstream => "upstream",
            Destination::Gateway => "gateway",
        }
    }

    /// The destination an event's bit names.
    pub fn of_bit(bit: u32) -> Option<Destination> {
        [Destination::Upstream, Destination::Gateway]
            .into_iter()
            .find(|d| d.bit() == bit)
    }
}

/// Allowed cgroup id → [`CGROUP_EXACT`] (the cgroup itself) or [`CGROUP_SUBTREE`] (it and every
/// cgroup below it), and the deepest subtree level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedCgroups {
    pub cgroups: BTreeMap<u64, u32>,
    pub max_level: u32,
}

impl AllowedCgroups {
    fn exact(&mut self, id: u64) {
        // A subtree entry for the same cgroup already covers it.
        self.cgroups.entry(id).or_insert(CGROUP_EXACT);
    }

    fn subtree(&mut self, id: u64, level: u32) {
        self.cgroups.insert(id, CGROUP_SUBTREE);
        self.max_level = self.max_level.max(level);
    }
}

/// One guarded local destination: a port, the addresses a local connect reaches it by, and the
/// cgroups that may connect to it. What the kernel loader takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedDestination {
    pub which: Destination,
    pub port: u16,
    pub addrs: Vec<IpNet>,
    pub allowed: AllowedCgroups,
}

/// The cgroups the allowances are made of, as found on this host: proxyguard's own, the
/// `allow_cgroups` that exist (id, level) and the guarded service's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub own: Option<u64>,
    pub listed: Vec<(u64, u32)>,
    pub guarded: Vec<GuardedCgroup>,
}

/// proxyguard's own cgroup, each configured `allow_cgroups` path that exists, and `guarded`
/// (the guarded service's cgroups, when a gateway is guarded; nothing else asks for them).
pub fn find(config: &UpstreamGuardSection, root: &Path, guarded: Vec<GuardedCgroup>) -> Found {
    let own = own_cgroup_id(root);
    if own.is_none() {
        tracing::error!(
            "upstream_guard: cannot find proxyguard's own cgroup; it cannot reach the guarded ports"
        );
    }
    let mut listed = Vec::new();
    for path in &config.allow_cgroups {
        let dir = root.join(path.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&dir) else {
            tracing::debug!(
                cgroup = path,
                "upstream_guard: allowed cgroup not found (yet)"
            );
            continue;
        };
        let level = dir
            .strip_prefix(root)
            .map(|r| r.components().count() as u32)
            .unwrap_or(0);
        listed.push((meta.ino(), level));
    }
    Found {
        own,
        listed,
        guarded,
    }
}

/// The guarded destinations, with the rule on: the upstream's port when the upstream is on this
/// host (proxyguard and `allow_cgroups` may connect), and the provider gateway's port when
/// `gateway` is given (proxyguard and the guarded service may connect; with no guarded service
/// running, proxyguard alone). Empty with the rule off.
pub fn destinations(section: &Section<'_>, found: &Found) -> Vec<GuardedDestination> {
    if !section.guard.enabled {
        return Vec::new();
    }
    let mut out = Vec::new();
    let upstream = section
        .proxy
        .enabled
        .then(|| upstream_on_this_host(section.proxy))
        .flatten();
    let upstream_port = upstream.as_ref().map(|(port, _)| *port);
    if let Some((port, addrs)) = upstream {
        let mut allowed = AllowedCgroups::default();
        found.own.into_iter().for_each(|id| allowed.exact(id));
        for (id, level) in &found.listed {
            allowed.subtree(*id, *level);
        }
        out.push(GuardedDestination {
            which: Destination::Upstream,
            port,
            addrs,
            allowed,
        });
    }
    if let Some(gateway) = section.gateway {
        let mut allowed = AllowedCgroups::default();
        found.own.into_iter().for_each(|id| allowed.exact(id));
        for cgroup in &found.guarded {
            allowed.subtree(cgroup.id, cgroup.level);
        }
        if upstream_port == Some(gateway.port()) {
            tracing::error!(
                port = gateway.port(),
                "upstream_guard: the provider gateway listens on the upstream's port; its port is \
                 guarded as the upstream's"
            );
        } else {
            out.push(GuardedDestination {
                which: Destination::Gateway,
                port: gateway.port(),
                addrs: local_nets(gateway.ip()),
                allowed,
            });
        }
    }
    out
}

/// The upstream's port and the addresses a local connect reaches it by, whether or not the rule
/// is on (`proxyguard check` reports connections to them either way). `None` when the upstream
/// is not on this host.
pub fn local_upstream(config: &Config) -> Option<(u16, Vec<IpNet>)> {
    upstream_on_this_host(&config.proxy)
}

fn upstream_on_this_host(proxy: &ProxyConfig) -> Option<(u16, Vec<IpNet>)> {
    let (host, port) = upstream_host_port(&proxy.upstream)?;
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => return None,
    };
    if !ip.is_loopback() && !is_local(ip) {
        return None;
    }
    Some((port, local_nets(ip)))
}

/// Every address a local connect reaches a listener on `ip` by. All of 127/8 and ::1 reach a
/// listener on 0.0.0.0 or ::, and a connect to the unspecified address goes to this host too;
/// the bind rule keeps the upstream on loopback, but the guard must not depend on it.
fn local_nets(ip: IpAddr) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
        "0.0.0.0/32".parse().expect("literal CIDR"),
        "::/128".parse().expect("literal CIDR"),
    ];
    if !ip.is_loopback() && !ip.is_unspecified() {
        nets.push(IpNet::from(ip));
    }
    nets
}

/// Host and port of `proxy.upstream` (an `http://` URL; port 80 when left out), the brackets of
/// an IPv6 literal removed.
fn upstream_host_port(upstream: &str) -> Option<(String, u16)> {
    let uri = upstream.parse::<http::Uri>().ok()?;
    let authority = uri.authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Some((host.to_owned(), authority.port_u16().unwrap_or(80)))
}

/// Whether `ip` is one of this host's addresses: only those can be bound.
fn is_local(ip: IpAddr) -> bool {
    std::net::TcpListener::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The inode of this process's cgroup v2 directory: what `bpf_get_current_cgroup_id` returns
/// for its tasks.
fn own_cgroup_id(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let meta = std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?;
    Some(meta.ino())
}

/// The cgroups allowed to reach the upstream, as the map pinned under `pin_dir` holds them (what
/// the kernel enforces): [`CGROUP_EXACT`] or [`CGROUP_SUBTREE`] by id. `None` when nothing is
/// pinned there or the map cannot be read (not root, say, or pinned by a build of another
/// layout).
pub fn pinned_allowed(pin_dir: &Path) -> Option<BTreeMap<u64, u32>> {
    let data =
        aya::maps::MapData::from_pin(pin_dir.join("maps").join(MAP_UPSTREAM_CGROUPS)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let cgroups: aya::maps::HashMap<_, u64, CgroupAllow> =
        aya::maps::HashMap::try_from(map).ok()?;
    let all: Vec<(u64, CgroupAllow)> = cgroups.iter().collect::<Result<_, _>>().ok()?;
    Some(
        all.into_iter()
            .filter_map(|(id, allow)| {
                if allow.subtree & DEST_UPSTREAM != 0 {
                    Some((id, CGROUP_SUBTREE))
                } else if allow.exact & DEST_UPSTREAM != 0 {
                    Some((id, CGROUP_EXACT))
                } else {
                    None
                }
            })
            .collect(),
    )
}

/// Makes the maps equal to the plan, all or nothing.
pub fn apply(
    ebpf: &mut Ebpf,
    mode: Mode,
    destinations: &[GuardedDestination],
) -> Result<(), KernelError> {
    maps::apply(ebpf, &plan(mode, destinations))
}

/// What the maps should hold. The allowed cgroups go in first, so proxyguard is never refused
/// while a newly guarded port or a new own cgroup id is being written; with no destination (the
/// rule off, the upstream elsewhere and no gateway) nothing is guarded and the programs stay
/// attached idle.
pub fn plan(mode: Mode, destinations: &[GuardedDestination]) -> maps::Plan {
    let mut v4: HashMap<(u32, PortAddrV4), u32> = HashMap::new();
    let mut v6: HashMap<(u32, PortAddrV6), u32> = HashMap::new();
    for dest in destinations {
        let bit = dest.which.bit();
        let port = dest.port.to_be_bytes();
        for net in &dest.addrs {
            match net {
                IpNet::V4(net) => {
                    let key = PortAddrV4 {
                        port,
                        addr: net.network().octets(),
                    };
                    *v4.entry((16 + u32::from(net.prefix_len()), key))
                        .or_default() |= bit;
                }
                IpNet::V6(net) => {
                    let key = PortAddrV6 {
                        port,
                        addr: net.network().octets(),
                    };
                    *v6.entry((16 + u32::from(net.prefix_len()), key))
                        .or_default() |= bit;
                }
            }
        }
    }
    let max_level = destinations
        .iter()
        .map(|d| d.allowed.max_level)
        .max()
        .unwrap_or(0);
    vec![
        HashStep::boxed(
            MAP_UPSTREAM_CGROUPS,
            "upstream_guard.allow_cgroups",
            MAX_UPSTREAM_CGROUPS,
            cgroup_bits(destinations).into_iter().collect(),
        ),
        Box::new(TrieStep {
            map: MAP_UPSTREAM_DEST_V4,
            field: "proxy.upstream",
            capacity: MAX_UPSTREAM_DESTS,
            wanted: v4,
        }),
        Box::new(TrieStep {
            map: MAP_UPSTREAM_DEST_V6,
            field: "proxy.upstream",
            capacity: MAX_UPSTREAM_DESTS,
            wanted: v6,
        }),
        SlotStep::boxed(
            MAP_UPSTREAM_CONFIG,
            "upstream_guard.mode",
            UpstreamConfig {
                mode: mode.kernel_value(),
                max_level,
                layout: UPSTREAM_LAYOUT,
                _pad: 0,
            },
        ),
    ]
}

/// Each allowed cgroup with the bits of the destinations it may reach, itself or with its
/// subtree.
fn cgroup_bits(destinations: &[GuardedDestination]) -> BTreeMap<u64, CgroupAllow> {
    let mut cgroups: BTreeMap<u64, CgroupAllow> = BTreeMap::new();
    for dest in destinations {
        for (id, reach) in &dest.allowed.cgroups {
            let entry = cgroups.entry(*id).or_default();
            if *reach == CGROUP_SUBTREE {
                entry.subtree |= dest.which.bit();
            } else {
                entry.exact |= dest.which.bit();
            }
        }
    }
    cgroups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(config: &Config, gateway: Option<SocketAddr>) -> Section<'_> {
        Section {
            gateway,
            ..UpstreamGuard::section(config)
        }
    }

    fn ports(config: &Config, gateway: Option<SocketAddr>) -> Vec<(Destination, u16)> {
        super::ports(&destinations(&section(config, gateway), &Found::default()))
    }

    #[test]
    fn the_upstream_on_loopback_is_guarded_on_every_local_way_in() {
        let mut config = Config::default();
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        let dests = destinations(&section(&config, None), &Found::default());
        assert_eq!(dests.len(), 1, "{dests:?}");
        assert_eq!(
            (dests[0].which, dests[0].port),
            (Destination::Upstream, 4000)
        );
        let nets: Vec<String> = dests[0].addrs.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]);
        config.proxy.upstream = "http://[::1]".into();
        assert_eq!(ports(&config, None), [(Destination::Upstream, 80)]);
        config.proxy.upstream = "http://localhost:4001".into();
        assert_eq!(ports(&config, None), [(Destination::Upstream, 4001)]);
    }

    #[test]
    fn an_upstream_elsewhere_or_a_rule_turned_off_guards_nothing() {
        let mut config = Config::default();
        config.proxy.upstream = "http://litellm.internal:4000".into();
        assert!(ports(&config, None).is_empty());
        // TEST-NET-3: never an address of this host.
        config.proxy.upstream = "http://203.0.113.9:4000".into();
        assert!(ports(&config, None).is_empty());
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        config.upstream_guard.enabled = false;
        assert!(ports(&config, "127.0.0.1:8089".parse().ok()).is_empty());
        config.upstream_guard.enabled = true;
        config.proxy.enabled = false;
        assert!(ports(&config, None).is_empty());
    }

    #[test]
    fn the_gateway_is_guarded_for_proxyguard_and_the_guarded_service_only() {
        let mut config = Config::default();
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        let found = Found {
            own: Some(7),
            listed: vec![(20, 2)],
            guarded: vec![GuardedCgroup {
                id: 30,
                level: 3,
                path: "/sys/fs/cgroup/system.slice/litellm.service".into(),
            }],
        };
        let dests = destinations(&section(&config, "127.0.0.1:8089".parse().ok()), &found);
        let [upstream, gateway] = dests.as_slice() else {
            panic!("two destinations: {dests:?}");
        };
        assert_eq!(upstream.which, Destination::Upstream);
        assert_eq!(
            upstream.allowed.cgroups,
            BTreeMap::from([(7, CGROUP_EXACT), (20, CGROUP_SUBTREE)])
        );
        assert_eq!((gateway.which, gateway.port), (Destination::Gateway, 8089));
        assert_eq!(
            gateway.allowed.cgroups,
            BTreeMap::from([(7, CGROUP_EXACT), (30, CGROUP_SUBTREE)]),
            "allow_cgroups are the upstream's business, not the gateway's"
        );
        assert_eq!(gateway.allowed.max_level, 3);
        // A gateway with the upstream elsewhere is guarded alone; one on the upstream's own
        // port is not a second destination.
        config.proxy.upstream = "http://litellm.internal:4000".into();
        assert_eq!(
            ports(&config, "127.0.0.1:8089".parse().ok()),
            [(Destination::Gateway, 8089)]
        );
        config.proxy.upstream = "http://127.0.0.1:8089".into();
        assert_eq!(
            ports(&config, "127.0.0.1:8089".parse().ok()),
            [(Destination::Upstream, 8089)]
        );
    }

    #[test]
    fn each_cgroup_gets_the_bits_of_the_destinations_it_may_reach() {
        let mut config = Config::default();
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        let found = Found {
            own: Some(7),
            listed: vec![(30, 2)],
            guarded: vec![GuardedCgroup {
                id: 30,
                level: 2,
                path: "/x".into(),
            }],
        };
        let dests = destinations(&section(&config, "127.0.0.1:8089".parse().ok()), &found);
        let plan = plan(Mode::Enforce, &dests);
        let sizes: Vec<(&str, usize)> = plan.iter().map(|s| (s.map(), s.entries())).collect();
        assert_eq!(
            sizes,
            [
                (MAP_UPSTREAM_CGROUPS, 2),
                (MAP_UPSTREAM_DEST_V4, 4),
                (MAP_UPSTREAM_DEST_V6, 4),
                (MAP_UPSTREAM_CONFIG, 1)
            ]
        );
        assert_eq!(
            cgroup_bits(&dests),
            BTreeMap::from([
                (
                    7,
                    CgroupAllow {
                        exact: DEST_UPSTREAM | DEST_GATEWAY,
                        subtree: 0
                    }
                ),
                (
                    30,
                    CgroupAllow {
                        exact: 0,
                        subtree: DEST_UPSTREAM | DEST_GATEWAY
                    }
                ),
            ])
        );
        assert_eq!(
            Destination::of_bit(DEST_GATEWAY),
            Some(Destination::Gateway)
        );
        assert_eq!(Destination::of_bit(3), None);
    }

    #[test]
    fn layout_2_maps_differ_from_layout_1_so_old_pins_are_recreated_not_adopted() {
        let manifest = super::super::manifest::Manifest::of_object(
            super::super::OBJECT,
            super::super::pins::PINNED_MAPS,
        )
        .expect("the embedded object parses");
        // Layout 1: a u32 reach per cgroup and an 8-byte config.
        let cgroups = &manifest.maps[MAP_UPSTREAM_CGROUPS];
        assert_eq!((cgroups.key_size, cgroups.value_size), (8, 8));
        assert_eq!(cgroups.max_entries, MAX_UPSTREAM_CGROUPS);
        assert_eq!(manifest.maps[MAP_UPSTREAM_CONFIG].value_size, 16);
    }
}
