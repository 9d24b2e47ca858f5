//! The upstream guard: attaches `upstream_connect_v4` / `upstream_connect_v6` at the cgroup v2
//! root and keeps their maps equal to the config: the upstream's port on this host's addresses
//! (from `proxy.upstream`), and the cgroups that may connect to it (proxyguard's own, found at
//! every start, reload and rescan, and `[upstream_guard] allow_cgroups`).
//!
//! The links and maps are pinned, so while no daemon runs the rule keeps refusing everyone else;
//! the next daemon writes its own cgroup id before anything else changes.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::Path,
};

use aya::Ebpf;
use guard_common::upstream::{
    UpstreamConfig, CGROUP_EXACT, CGROUP_SUBTREE, MAP_UPSTREAM_CGROUPS, MAP_UPSTREAM_CONFIG,
    MAP_UPSTREAM_DEST_V4, MAP_UPSTREAM_DEST_V6, MAP_UPSTREAM_STATS, MAX_UPSTREAM_CGROUPS,
    MAX_UPSTREAM_DESTS, PROG_UPSTREAM_CONNECT_V4, PROG_UPSTREAM_CONNECT_V6, STAT_ALLOWED,
    STAT_DENIED, STAT_EVENTS_LOST, STAT_WOULD_DENY,
};
use guard_common::{PortAddrV4, PortAddrV6};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    cgroup_programs,
    maps::{self, HashStep, SlotStep, TrieStep},
    pins::PinDir,
    AttachedProgram, KernelError,
};
use crate::config::Config;

pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    root: &Path,
    config: &Config,
) -> Result<Vec<AttachedProgram>, KernelError> {
    cgroup_programs::attach(
        ebpf,
        pins,
        root,
        config.upstream_guard.mode.as_str(),
        &[
            (PROG_UPSTREAM_CONNECT_V4, "cgroup/connect4"),
            (PROG_UPSTREAM_CONNECT_V6, "cgroup/connect6"),
        ],
    )
}

/// The guarded destinations: the upstream's port on every address a local connect reaches it
/// by. `None` when the rule is off, `[proxy]` is off, or the upstream is not on this host.
pub fn target(config: &Config) -> Option<(u16, Vec<IpNet>)> {
    if !config.upstream_guard.enabled || !config.proxy.enabled {
        return None;
    }
    destinations(config)
}

/// The upstream's port and the addresses a local connect reaches it by, whether or not the rule
/// is on (`proxyguard check` reports connections to them either way). `None` when the upstream
/// is not on this host.
pub fn destinations(config: &Config) -> Option<(u16, Vec<IpNet>)> {
    let (host, port) = upstream_host_port(&config.proxy.upstream)?;
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host.eq_ignore_ascii_case("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => return None,
    };
    if !ip.is_loopback() && !is_local(ip) {
        return None;
    }
    // All of 127/8 and ::1 reach a listener on 0.0.0.0 or ::, and a connect to the unspecified
    // address goes to this host too; the bind rule keeps the upstream on loopback, but the guard
    // must not depend on it.
    let mut nets: Vec<IpNet> = vec![
        "127.0.0.0/8".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
        "0.0.0.0/32".parse().expect("literal CIDR"),
        "::/128".parse().expect("literal CIDR"),
    ];
    if !ip.is_loopback() {
        nets.push(IpNet::from(ip));
    }
    Some((port, nets))
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

/// Allowed cgroup id → [`CGROUP_EXACT`] or [`CGROUP_SUBTREE`], and the deepest subtree level.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    pub cgroups: BTreeMap<u64, u32>,
    pub max_level: u32,
}

/// proxyguard's own cgroup (exactly: when the daemon runs in the root cgroup, "and below" would
/// be everyone) and each configured `allow_cgroups` path that exists, with its subtree.
pub fn allowed(config: &Config, root: &Path) -> Allowed {
    let mut out = Allowed::default();
    match own_cgroup_id(root) {
        Some(id) => {
            out.cgroups.insert(id, CGROUP_EXACT);
        }
        None => tracing::error!(
            "upstream_guard: cannot find proxyguard's own cgroup; it cannot reach the upstream"
        ),
    }
    for path in &config.upstream_guard.allow_cgroups {
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
        out.cgroups.insert(meta.ino(), CGROUP_SUBTREE);
        out.max_level = out.max_level.max(level);
    }
    out
}

/// The inode of this process's cgroup v2 directory: what `bpf_get_current_cgroup_id` returns
/// for its tasks.
fn own_cgroup_id(root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let meta = std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?;
    Some(meta.ino())
}

/// The allowed cgroups as the map pinned under `pin_dir` holds them (what the kernel enforces),
/// or `None` when nothing is pinned there or the map cannot be read (not root, say).
pub fn pinned_allowed(pin_dir: &Path) -> Option<BTreeMap<u64, u32>> {
    let data =
        aya::maps::MapData::from_pin(pin_dir.join("maps").join(MAP_UPSTREAM_CGROUPS)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let cgroups: aya::maps::HashMap<_, u64, u32> = aya::maps::HashMap::try_from(map).ok()?;
    cgroups.iter().collect::<Result<_, _>>().ok()
}

/// Makes the maps equal to the plan, all or nothing.
pub fn apply(ebpf: &mut Ebpf, config: &Config, allowed: &Allowed) -> Result<(), KernelError> {
    maps::apply(ebpf, &plan(config, allowed))
}

/// What the maps should hold. The allowed cgroups go in first, so proxyguard is never refused
/// while a newly guarded port or a new own cgroup id is being written; with the rule off (or
/// the upstream elsewhere) no destination is guarded and the programs stay attached idle.
pub fn plan(config: &Config, allowed: &Allowed) -> maps::Plan {
    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    if let Some((port, nets)) = target(config) {
        let port = port.to_be_bytes();
        for net in nets {
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
    }
    let cgroups: Vec<(u64, u32)> = allowed.cgroups.iter().map(|(k, v)| (*k, *v)).collect();
    vec![
        HashStep::boxed(
            MAP_UPSTREAM_CGROUPS,
            "upstream_guard.allow_cgroups",
            MAX_UPSTREAM_CGROUPS,
            cgroups,
        ),
        TrieStep::ones(
            MAP_UPSTREAM_DEST_V4,
            "proxy.upstream",
            MAX_UPSTREAM_DESTS,
            v4,
        ),
        TrieStep::ones(
            MAP_UPSTREAM_DEST_V6,
            "proxy.upstream",
            MAX_UPSTREAM_DESTS,
            v6,
        ),
        SlotStep::boxed(
            MAP_UPSTREAM_CONFIG,
            "upstream_guard.mode",
            UpstreamConfig {
                mode: config.upstream_guard.mode.kernel_value(),
                max_level: allowed.max_level,
            },
        ),
    ]
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct UpstreamStats {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub events_lost: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<UpstreamStats, KernelError> {
    let [allowed, denied, would_deny, events_lost] = maps::percpu_sums(
        ebpf,
        MAP_UPSTREAM_STATS,
        [STAT_ALLOWED, STAT_DENIED, STAT_WOULD_DENY, STAT_EVENTS_LOST],
    )?;
    Ok(UpstreamStats {
        allowed,
        denied,
        would_deny,
        events_lost,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_on_loopback_is_guarded_on_every_local_way_in() {
        let mut config = Config::default();
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        let (port, nets) = target(&config).expect("loopback upstream is guarded");
        assert_eq!(port, 4000);
        let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"]);
        config.proxy.upstream = "http://[::1]".into();
        assert_eq!(target(&config).map(|t| t.0), Some(80));
        config.proxy.upstream = "http://localhost:4001".into();
        assert_eq!(target(&config).map(|t| t.0), Some(4001));
    }

    #[test]
    fn an_upstream_elsewhere_or_a_rule_turned_off_guards_nothing() {
        let mut config = Config::default();
        config.proxy.upstream = "http://litellm.internal:4000".into();
        assert!(target(&config).is_none());
        // TEST-NET-3: never an address of this host.
        config.proxy.upstream = "http://203.0.113.9:4000".into();
        assert!(target(&config).is_none());
        config.proxy.upstream = "http://127.0.0.1:4000".into();
        config.upstream_guard.enabled = false;
        assert!(target(&config).is_none());
        config.upstream_guard.enabled = true;
        config.proxy.enabled = false;
        assert!(target(&config).is_none());
    }
}
