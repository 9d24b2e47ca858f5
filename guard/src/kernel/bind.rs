//! Bind rules: attaches `bind_rule_v4` / `bind_rule_v6` at the cgroup v2 root and keeps their maps
//! equal to the config.
//!
//! Updates add the new entries before removing stale ones, so a reload never opens a window in
//! which a guarded port is unguarded or an allowed bind is refused.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::MetadataExt,
    path::Path,
};

use aya::Ebpf;
use guard_common::bind::{
    BindPortRule, MAP_BIND_ALLOW_V4, MAP_BIND_ALLOW_V6, MAP_BIND_EVENTS, MAP_BIND_PORTS,
    MAP_BIND_STATS, MAX_BIND_ADDRS, MAX_BIND_PORTS, PROG_BIND_V4, PROG_BIND_V6, STAT_ALLOWED,
    STAT_DENIED, STAT_EVENTS_LOST, STAT_WOULD_DENY,
};
use guard_common::{PortAddrV4, PortAddrV6};
use ipnet::IpNet;

use super::{
    cgroup_programs, events,
    family::{Family, Host, Refresh, RuleStats, Start, Started},
    maps::{self, HashStep, TrieStep},
    Counters, KernelError,
};
use crate::config::{BindConfig, Config};

/// The bind rules as a program family: attached at the cgroup root while `[bind]` is on, their
/// owners' cgroups followed.
#[derive(Default)]
pub struct BindRules {
    /// The rules' owner cgroups as last resolved.
    owners: Owners,
    attached: bool,
}

impl Family for BindRules {
    type Section<'a> = &'a BindConfig;
    /// The owners the plan was made with.
    type Pending = Owners;

    fn section(config: &Config) -> &BindConfig {
        &config.bind
    }

    fn needs_cgroup(&mut self, section: &&BindConfig) -> bool {
        section.enabled
    }

    fn start(&mut self, section: &&BindConfig, cx: &mut Start<'_>) -> Started {
        let (true, Some(root)) = (section.enabled, cx.root) else {
            return Ok(Vec::new());
        };
        self.owners = owners(section, root);
        apply(cx.ebpf, section, &self.owners)?;
        let programs =
            cgroup_programs::attach(cx.ebpf, cx.pins, root, section.mode.as_str(), PROGRAMS)?;
        self.attached = true;
        Ok(programs)
    }

    fn events(&self) -> Vec<events::Source> {
        let source = events::audited!("bind events", MAP_BIND_EVENTS, events::bind_record);
        self.attached.then_some(source).into_iter().collect()
    }

    /// Planned whether or not the programs are attached: the maps exist either way.
    fn plan(&self, section: &&BindConfig, host: &Host<'_>) -> (maps::Plan, Owners) {
        let owners = match host.root {
            Some(root) => owners(section, root),
            None => self.owners.clone(),
        };
        (plan(section, &owners), owners)
    }

    fn commit(&mut self, owners: Owners) {
        self.owners = owners;
    }

    fn config_plan(section: &&BindConfig) -> maps::Plan {
        plan(section, &Owners::new())
    }

    /// A restarted bind-rule owner gets a new cgroup id.
    fn refresh(&mut self, section: &&BindConfig, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        let Some(root) = cx.root else {
            return Ok(());
        };
        let owners = owners(section, root);
        if owners != self.owners {
            self.owners = owners;
            apply(cx.ebpf, section, &self.owners)?;
        }
        Ok(())
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        out.add(
            "bind",
            RuleStats::read(
                ebpf,
                MAP_BIND_STATS,
                [STAT_ALLOWED, STAT_DENIED, STAT_WOULD_DENY, STAT_EVENTS_LOST],
            )?,
        );
        Ok(())
    }
}

/// The programs, attached at the cgroup root, and their hooks.
const PROGRAMS: &[(&str, &str)] = &[
    (PROG_BIND_V4, "cgroup/bind4"),
    (PROG_BIND_V6, "cgroup/bind6"),
];

/// Owner cgroups by port: (cgroup id, level). A configured owner that does not exist gets an id
/// no cgroup has, so nobody may bind the port until it appears.
pub type Owners = BTreeMap<u16, (u64, u32)>;

/// Resolves each rule's `owner` against the cgroup v2 `root`.
pub fn owners(config: &BindConfig, root: &Path) -> Owners {
    let mut out = Owners::new();
    for rule in &config.rules {
        let Some(owner) = &rule.owner else { continue };
        let relative = if owner == "self" {
            own_cgroup()
        } else {
            Some(owner.clone())
        };
        let dir = relative.map(|r| root.join(r.trim_start_matches('/')));
        let found = dir.as_deref().and_then(|dir| {
            let meta = std::fs::metadata(dir).ok()?;
            Some((
                meta.ino(),
                dir.strip_prefix(root).ok()?.components().count() as u32,
            ))
        });
        out.insert(rule.port, found.unwrap_or((u64::MAX, 0)));
    }
    out
}

/// This process's cgroup v2 path.
fn own_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Makes the rule maps equal to `config`, all or nothing.
pub fn apply(ebpf: &mut Ebpf, config: &BindConfig, owners: &Owners) -> Result<(), KernelError> {
    maps::apply(ebpf, &plan(config, owners))
}

/// What the rule maps should hold for `config`. With `enabled = false` every port is left
/// unguarded, while the programs stay attached so re-enabling needs no attach.
pub fn plan(config: &BindConfig, owners: &Owners) -> maps::Plan {
    let rule = |port: u16| {
        let (owner_cgroup, owner_level) = owners.get(&port).copied().unwrap_or((0, 0));
        BindPortRule {
            mode: config.mode.kernel_value(),
            owner_level,
            owner_cgroup,
        }
    };
    let rules: Vec<_> = if config.enabled {
        config.rules.iter().collect()
    } else {
        Vec::new()
    };

    let mut v4 = HashSet::new();
    let mut v6 = HashSet::new();
    for r in &rules {
        for net in &r.allow {
            match net.trunc() {
                IpNet::V4(net) => v4.insert((
                    16 + u32::from(net.prefix_len()),
                    PortAddrV4 {
                        port: r.port.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                )),
                IpNet::V6(net) => v6.insert((
                    16 + u32::from(net.prefix_len()),
                    PortAddrV6 {
                        port: r.port.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                )),
            };
        }
    }
    let ports: Vec<(u16, BindPortRule)> = rules
        .iter()
        .map(|r| (r.port, rule(r.port)))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    // Allow entries first, so a newly guarded port never exists without its allowed addresses.
    vec![
        TrieStep::ones(MAP_BIND_ALLOW_V4, "bind.rules", MAX_BIND_ADDRS, v4),
        TrieStep::ones(MAP_BIND_ALLOW_V6, "bind.rules", MAX_BIND_ADDRS, v6),
        HashStep::boxed(MAP_BIND_PORTS, "bind.rules", MAX_BIND_PORTS, ports),
    ]
}
