//! The kernel maps' capacities against a config, before any map is touched: the lists of a
//! config as each family would plan them (with nothing resolved or discovered yet), checked
//! against the maps' `max_entries` from guard-common (which the eBPF map definitions use too).
//! `config check` and every reload run it through the config compiler; a reload checks its
//! full plan (resolved names and found cgroups included) again before writing.

use std::collections::BTreeSet;

use super::{bind, egress, environ, upstream, xdp};
use crate::{config::Config, resolve::Resolved};

/// Each list that does not fit its map: (field path, message).
pub fn check(config: &Config) -> Vec<(&'static str, String)> {
    let mut plan = bind::plan(&config.bind, &bind::Owners::new());
    plan.extend(xdp::plan(&config.xdp));
    let gateway = super::gateway(config);
    let targets = egress::targets(
        &config.egress,
        &Resolved::new(),
        &config.egress.dns,
        gateway,
    );
    plan.extend(egress::plan(&config.egress, &targets, &[]));
    let mut exes = config.watch.allow_exe.clone();
    if let Ok(own) = std::env::current_exe() {
        exes.push(own);
    }
    plan.extend(environ::plan(
        &config.watch,
        Default::default(),
        &Default::default(),
        &environ::exe_ids(&exes),
    ));
    // The allowed cgroups are proxyguard's own and the listed ones (none found yet: count them).
    let found = upstream::Found {
        own: Some(0),
        listed: (1..=config.upstream_guard.allow_cgroups.len() as u64)
            .map(|id| (id, 1))
            .collect(),
        guarded: Vec::new(),
    };
    plan.extend(upstream::plan(
        config.upstream_guard.mode,
        &upstream::destinations(config, gateway, &found),
    ));
    let mut seen = BTreeSet::new();
    plan.iter()
        .filter(|step| step.entries() > step.capacity())
        // bind.rules fills three maps; one message per field and map is enough.
        .filter(|step| seen.insert((step.field(), step.map())))
        .map(|step| {
            (
                step.field(),
                format!(
                    "{} entries for kernel map {}, which holds at most {}; {}",
                    step.entries(),
                    step.map(),
                    step.capacity(),
                    advice(step.field())
                ),
            )
        })
        .collect()
}

/// What to do about a list that does not fit, by the field it comes from.
pub fn advice(field: &str) -> &'static str {
    match field {
        "bind.rules" => "use fewer rules or merge their addresses into wider prefixes",
        "guarded" => "the guarded service has more cgroups or tasks than the map can track",
        "watch.allow_exe" => "allow fewer executables",
        "upstream_guard.allow_cgroups" => {
            "allow fewer cgroups (a parent cgroup covers its children)"
        }
        _ => "shorten the list (merge addresses into wider prefixes)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_past_a_map_capacity_are_named_by_field() {
        let mut config = Config::default();
        assert!(check(&config).is_empty());
        // One more /32 than the XDP allow and deny tries hold. Ports are a bitmap: all fit.
        let cidrs = guard_common::xdp::MAX_XDP_CIDRS + 1;
        config.xdp.allow = (0..cidrs)
            .map(|i| ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)).into())
            .collect();
        config.xdp.deny = config.xdp.allow.clone();
        config.xdp.ports = (1..=u16::MAX).collect();
        let problems = check(&config);
        let fields: Vec<_> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["xdp.allow", "xdp.deny"]);
        assert!(
            problems[0]
                .1
                .contains(&format!("holds at most {}", cidrs - 1)),
            "{problems:?}"
        );
        // A list exactly at capacity fits.
        config.xdp.allow.pop();
        config.xdp.deny.pop();
        assert!(check(&config).is_empty());
    }
}
