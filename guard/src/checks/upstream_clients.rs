//! Local processes connected to the upstream from outside proxyguard (threat 21): TCP sockets in
//! /proc/net/tcp{,6} whose remote end is the upstream's port on this host, mapped to the
//! processes holding them (by inode, through /proc/<pid>/fd) and to their cgroups. A connection
//! from a cgroup the upstream guard does not allow walks around the guard. The allowed cgroups
//! are the kernel's own list (the pinned map, by cgroup id) when a daemon has written one; else
//! those of running `proxyguard run` processes and the `[upstream_guard] allow_cgroups` subtrees. The kernel rule refuses new connects like it; this finds the
//! ones made before the rule was attached, or let through in monitor mode.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use super::{Finding, Severity};
use crate::config::Config;

/// One socket of /proc/net/tcp or /proc/net/tcp6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The kernel's TCP state number (`01` established, `0A` listen, ...).
    pub state: u8,
    pub inode: u64,
}

const TCP_LISTEN: u8 = 0x0a;

/// The entries of a /proc/net/tcp{,6} text; the header and lines that do not parse are skipped.
pub fn parse_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`, addresses as hex
/// `ADDR:PORT`, ADDR in the kernel's in-memory order (each 32-bit word little-endian on x86).
fn parse_line(line: &str) -> Option<TcpEntry> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    Some(TcpEntry {
        local: parse_addr(fields[1])?,
        remote: parse_addr(fields[2])?,
        state: u8::from_str_radix(fields[3], 16).ok()?,
        inode: fields[9].parse().ok()?,
    })
}

fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        // The word is printed as a native-endian u32 of the network-order bytes.
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The client sockets among `entries` connected to `port` on one of `nets` (a v4-mapped IPv6
/// address counts as its IPv4 address). Listeners and the upstream's own accepted sockets (whose
/// local end is the port) are not clients.
pub fn clients(entries: &[TcpEntry], port: u16, nets: &[IpNet]) -> Vec<TcpEntry> {
    entries
        .iter()
        .filter(|e| e.state != TCP_LISTEN && e.inode != 0 && e.remote.port() == port)
        .filter(|e| {
            let ip = match e.remote.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                v4 => v4,
            };
            nets.iter().any(|net| net.contains(&ip))
        })
        .copied()
        .collect()
}

/// Whether a process in cgroup `path` may hold such a connection: it is a proxyguard daemon's
/// cgroup, or lies at or below an allowed one.
pub fn allowed(path: &str, daemons: &BTreeSet<String>, allow: &[String]) -> bool {
    daemons.contains(path)
        || allow.iter().any(|a| {
            let a = a.trim_end_matches('/');
            path == a
                || path
                    .strip_prefix(a)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// By the kernel's own list (the pinned `UPSTREAM_CGROUPS`): whether a process whose cgroup has
/// id `own`, below the cgroups `ancestors`, may connect. As the program judges it: its own cgroup
/// listed, or an ancestor listed with its subtree.
pub fn allowed_by_ids(own: u64, ancestors: &[u64], listed: &BTreeMap<u64, u32>) -> bool {
    listed.contains_key(&own)
        || ancestors
            .iter()
            .any(|id| listed.get(id) == Some(&guard_common::upstream::CGROUP_SUBTREE))
}

/// Who may hold a connection to the upstream: the kernel's list when a daemon has pinned one,
/// else running daemons' cgroups and `allow_cgroups` by path.
enum Judge {
    Kernel {
        root: PathBuf,
        listed: BTreeMap<u64, u32>,
    },
    Paths {
        daemons: BTreeSet<String>,
    },
}

impl Judge {
    fn of(config: &Config) -> Judge {
        let root = crate::kernel::cgroup::cgroup2_root().ok();
        let listed = crate::kernel::upstream_pinned_allowed(&config.kernel.pin_dir)
            .filter(|listed| !listed.is_empty());
        match (root, listed) {
            (Some(root), Some(listed)) => Judge::Kernel { root, listed },
            _ => Judge::Paths {
                daemons: daemon_cgroups(),
            },
        }
    }

    /// Where the allowed cgroups came from, for the finding's detail.
    fn source(&self) -> &'static str {
        match self {
            Judge::Kernel { .. } => "the kernel's list, pinned by the daemon",
            Judge::Paths { .. } => "running proxyguard daemons' and allow_cgroups",
        }
    }

    fn allows(&self, cgroup: &str, config: &Config) -> bool {
        match self {
            Judge::Kernel { root, listed } => {
                let id = |dir: &Path| std::fs::metadata(dir).ok().map(|m| m.ino());
                let dir = root.join(cgroup.trim_start_matches('/'));
                let Some(own) = id(&dir) else {
                    return false;
                };
                let ancestors: Vec<u64> = dir
                    .ancestors()
                    .skip(1)
                    .take_while(|a| a.starts_with(root) && *a != root.as_path())
                    .filter_map(id)
                    .collect();
                allowed_by_ids(own, &ancestors, listed)
            }
            Judge::Paths { daemons } => {
                allowed(cgroup, daemons, &config.upstream_guard.allow_cgroups)
            }
        }
    }
}

/// Every process holding a connection to the upstream from outside proxyguard, as findings.
pub fn check(config: &Config) -> Vec<Finding> {
    let Some((port, nets)) = crate::kernel::upstream_destinations(config) else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        entries.extend(parse_tcp(
            &std::fs::read_to_string(table).unwrap_or_default(),
        ));
    }
    let clients = clients(&entries, port, &nets);
    if clients.is_empty() {
        return Vec::new();
    }
    let holders = socket_holders(&clients.iter().map(|c| c.inode).collect());
    let judge = Judge::of(config);
    let mut out = Vec::new();
    for client in &clients {
        for &pid in holders.get(&client.inode).into_iter().flatten() {
            let Some(cgroup) = cgroup_of(pid) else {
                continue;
            };
            if judge.allows(&cgroup, config) {
                continue;
            }
            out.push(Finding {
                check: "upstream_client",
                severity: Severity::High,
                pid,
                subject: format!("{} -> {}", client.local, client.remote),
                detail: format!(
                    "connected to the upstream directly from cgroup {cgroup}, outside the cgroups \
                     allowed ({}), so none of the guard's checks apply to it; point it at \
                     proxyguard's port and restart it ([upstream_guard] refuses such connects from \
                     then on, in enforce mode)",
                    judge.source()
                ),
                fixed: false,
                ownership: None,
            });
        }
    }
    out
}

/// Socket inode → the processes holding it, from /proc/<pid>/fd.
fn socket_holders(inodes: &BTreeSet<u64>) -> BTreeMap<u64, BTreeSet<u32>> {
    let mut out: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
    for pid in pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                out.entry(inode).or_default().insert(pid);
            }
        }
    }
    out
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's cgroup v2 path (`/system.slice/proxyguard.service`).
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The cgroups of running `proxyguard run` daemons (this process excluded: a check run from a
/// shell must not vouch for the shell's cgroup).
fn daemon_cgroups() -> BTreeSet<String> {
    let own = std::process::id();
    pids()
        .into_iter()
        .filter(|&pid| pid != own)
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            comm.trim_end() == "proxyguard" && cmdline.split(|&b| b == 0).any(|arg| arg == b"run")
        })
        .filter_map(cgroup_of)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Linux prints them on x86-64 (little-endian words).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:0FA0 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:0FA0 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:D432 0100007F:0FA0 06 00000000:00000000 03:00000A4B 00000000     0        0 0 3 0000000000000000
   4: 0200000A:D433 0900000A:0FA0 01 00000000:00000000 00:00000000 00000000     0        0 1004 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:D434 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D435 00000000000000000000000001000000:0FA0 01 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:D436 0000000000000000FFFF00000100007F:0FA0 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   garbage line
";

    #[test]
    fn proc_net_tcp_lines_parse_to_addresses_states_and_inodes() {
        let v4 = parse_tcp(TCP);
        assert_eq!(v4.len(), 6, "the header is skipped");
        assert_eq!(v4[0].local, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(v4[0].state, TCP_LISTEN);
        assert_eq!(v4[1].local, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(v4[1].remote, "127.0.0.1:4000".parse().unwrap());
        assert_eq!((v4[1].state, v4[1].inode), (1, 1002));
        assert_eq!(v4[4].remote, "10.0.0.9:4000".parse().unwrap());
        let v6 = parse_tcp(TCP6);
        assert_eq!(v6.len(), 2, "the garbage line is skipped");
        assert_eq!(v6[0].remote, "[::1]:4000".parse().unwrap());
        assert_eq!(v6[1].remote, "[::ffff:127.0.0.1]:4000".parse().unwrap());
    }

    #[test]
    fn clients_are_connections_to_the_port_on_this_host() {
        let mut entries = parse_tcp(TCP);
        entries.extend(parse_tcp(TCP6));
        let nets: Vec<IpNet> = ["127.0.0.0/8", "::1/128"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let inodes: Vec<u64> = clients(&entries, 4000, &nets)
            .iter()
            .map(|c| c.inode)
            .collect();
        // Not the listener (1001), not the upstream's accepted end (1003), not TIME_WAIT
        // (inode 0), not another host (1004), not another port (1005); the v4-mapped one counts.
        assert_eq!(inodes, [1002, 2001, 2002]);
    }

    #[test]
    fn the_kernels_list_allows_its_cgroups_exactly_and_subtrees_below() {
        use guard_common::upstream::{CGROUP_EXACT, CGROUP_SUBTREE};
        let listed = BTreeMap::from([(10, CGROUP_EXACT), (20, CGROUP_SUBTREE)]);
        assert!(allowed_by_ids(10, &[1], &listed), "the daemon's own cgroup");
        assert!(
            !allowed_by_ids(11, &[10], &listed),
            "below the daemon's: not allowed"
        );
        assert!(
            allowed_by_ids(21, &[20, 2], &listed),
            "below a subtree entry"
        );
        assert!(!allowed_by_ids(30, &[3], &listed));
    }

    #[test]
    fn daemons_and_allowed_subtrees_may_hold_connections() {
        let daemons = BTreeSet::from(["/system.slice/proxyguard.service".to_owned()]);
        let allow = ["/system.slice/prometheus.service".to_owned()];
        assert!(allowed(
            "/system.slice/proxyguard.service",
            &daemons,
            &allow
        ));
        assert!(allowed(
            "/system.slice/prometheus.service/x",
            &daemons,
            &allow
        ));
        assert!(!allowed(
            "/system.slice/prometheus.service2",
            &daemons,
            &allow
        ));
        assert!(!allowed(
            "/system.slice/proxyguard.service/sub",
            &daemons,
            &allow
        ));
        assert!(!allowed(
            "/user.slice/user-1000.slice/session-2.scope",
            &daemons,
            &allow
        ));
    }
}
