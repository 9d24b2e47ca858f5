//! Bind rules: attaches `bind_rule_v4` / `bind_rule_v6` at the cgroup v2 root and keeps their maps
//! equal to the config.
//!
//! Updates add the new entries before removing stale ones, so a reload never opens a window in
//! which a guarded port is unguarded or an allowed bind is refused.

use std::{collections::HashSet, fs::File, path::Path};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    Ebpf, Pod,
};
use guard_common::bind::{
    BindAddrV4, BindAddrV6, BindPortRule, MAP_BIND_ALLOW_V4, MAP_BIND_ALLOW_V6, MAP_BIND_PORTS,
    MAP_BIND_STATS, PROG_BIND_V4, PROG_BIND_V6, STAT_ALLOWED, STAT_DENIED, STAT_EVENTS_LOST,
    STAT_WOULD_DENY,
};
use ipnet::IpNet;
use serde::Serialize;

use super::{AttachedProgram, KernelError};
use crate::config::BindConfig;

/// Loads both programs and attaches them to `cgroup_root` through BPF links.
///
/// A link attachment always coexists with other programs on the same hook (systemd's socket-bind
/// filters among them), and the kernel insists on flags 0 for it: that is aya's `Single` mode.
pub fn attach(
    ebpf: &mut Ebpf,
    cgroup_root: &Path,
    config: &BindConfig,
) -> Result<Vec<AttachedProgram>, KernelError> {
    let cgroup = File::open(cgroup_root).map_err(|source| KernelError::OpenCgroup {
        path: cgroup_root.to_owned(),
        source,
    })?;
    let target = cgroup_root.display().to_string();
    let mut attached = Vec::new();
    for (name, hook) in [
        (PROG_BIND_V4, "cgroup/bind4"),
        (PROG_BIND_V6, "cgroup/bind6"),
    ] {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })?;
        program
            .load()
            .map_err(|source| KernelError::LoadProgram { name, source })?;
        program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|source| KernelError::Attach {
                name,
                target: target.clone(),
                source,
            })?;
        attached.push(AttachedProgram {
            name,
            hook,
            target: target.clone(),
            mode: config.mode.as_str(),
        });
    }
    Ok(attached)
}

/// Makes the rule maps equal to `config`. With `enabled = false` every port is left unguarded,
/// while the programs stay attached so re-enabling needs no attach.
pub fn apply(ebpf: &mut Ebpf, config: &BindConfig) -> Result<(), KernelError> {
    let rule = BindPortRule {
        mode: config.mode.kernel_value(),
        _pad: 0,
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
                    BindAddrV4 {
                        port: r.port.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                )),
                IpNet::V6(net) => v6.insert((
                    16 + u32::from(net.prefix_len()),
                    BindAddrV6 {
                        port: r.port.to_be_bytes(),
                        addr: net.network().octets(),
                    },
                )),
            };
        }
    }
    // Allow entries first, so a newly guarded port never exists without its allowed addresses.
    sync_trie(ebpf, MAP_BIND_ALLOW_V4, &v4)?;
    sync_trie(ebpf, MAP_BIND_ALLOW_V6, &v6)?;

    let mut ports: HashMap<_, u16, BindPortRule> = map(ebpf, MAP_BIND_PORTS)?;
    let wanted: HashSet<u16> = rules.iter().map(|r| r.port).collect();
    for port in &wanted {
        ports
            .insert(port, rule, 0)
            .map_err(|source| KernelError::Map {
                name: MAP_BIND_PORTS,
                source,
            })?;
    }
    let stale: Vec<u16> = ports
        .keys()
        .filter_map(Result::ok)
        .filter(|p| !wanted.contains(p))
        .collect();
    for port in stale {
        ports.remove(&port).map_err(|source| KernelError::Map {
            name: MAP_BIND_PORTS,
            source,
        })?;
    }
    Ok(())
}

fn sync_trie<K>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &HashSet<(u32, K)>,
) -> Result<(), KernelError>
where
    K: Pod + Eq + std::hash::Hash,
{
    let mut trie: LpmTrie<_, K, u32> = map(ebpf, name)?;
    for (prefix_len, data) in wanted {
        trie.insert(&Key::new(*prefix_len, *data), 1, 0)
            .map_err(|source| KernelError::Map { name, source })?;
    }
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in stale {
        trie.remove(&key)
            .map_err(|source| KernelError::Map { name, source })?;
    }
    Ok(())
}

fn map<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// Counters summed over CPUs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct BindStats {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub events_lost: u64,
}

pub fn stats(ebpf: &Ebpf) -> Result<BindStats, KernelError> {
    let name = MAP_BIND_STATS;
    let map = ebpf
        .map(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(|source| KernelError::Map { name, source })?;
    let sum = |index| -> Result<u64, KernelError> {
        let values = counters
            .get(&index, 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(values.iter().sum())
    };
    Ok(BindStats {
        allowed: sum(STAT_ALLOWED)?,
        denied: sum(STAT_DENIED)?,
        would_deny: sum(STAT_WOULD_DENY)?,
        events_lost: sum(STAT_EVENTS_LOST)?,
    })
}
