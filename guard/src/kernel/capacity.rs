//! The kernel maps' capacities against a config, before any map is touched: the lists of a
//! config as each family would plan them (with nothing resolved or discovered yet), checked
//! against the maps' `max_entries` from guard-common (which the eBPF map definitions use too).
//! `config check` and every reload run it through the config compiler; a reload checks its
//! full plan (resolved names and found cgroups included) again before writing.

use std::collections::BTreeSet;

use super::family;
use crate::config::Config;

/// Each list that does not fit its map: (field path, message), family by family in the table's
/// order.
pub fn check(config: &Config) -> Vec<(&'static str, String)> {
    let plan: Vec<_> = family::all()
        .iter()
        .flat_map(|family| family.config_plan(config))
        .collect();
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
