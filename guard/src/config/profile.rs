//! The limits whose defaults depend on `proxy.upstream_kind` (issue 21): a training run's load
//! is not an interactive one. A profile's value applies only where the file does not write the
//! field, so an operator's number always wins, and switching `upstream_kind` moves every
//! unwritten limit with it.
//!
//! The agent-lightning figure: 8 rollouts × 10 calls in flight (80 requests at once) on one key
//! and from one address, with room to spare: a burst of 200 refilled at 100 requests a second, 256
//! requests in flight per key and 512 upstream. The litellm and openai values are the interactive
//! defaults they always were.

use super::proxy::{ProxyConfig, UpstreamKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileDefaults {
    pub per_key_rpm: u32,
    pub per_key_burst: u32,
    pub per_ip_rpm: u32,
    pub per_ip_burst: u32,
    pub max_concurrent_per_key: usize,
    pub max_upstream_connections: usize,
}

pub fn defaults(kind: UpstreamKind) -> ProfileDefaults {
    match kind {
        UpstreamKind::Litellm | UpstreamKind::Openai => ProfileDefaults {
            per_key_rpm: 600,
            per_key_burst: 60,
            // Higher than per key: several clients may share an address (NAT, one host).
            per_ip_rpm: 1200,
            per_ip_burst: 120,
            max_concurrent_per_key: 64,
            // Caps the pool: the guarded proxy is protected from floods of parallel requests, and
            // memory stays bounded when many clients connect at once.
            max_upstream_connections: 256,
        },
        // The rollouts of one trainer usually share its key and its host's address.
        UpstreamKind::AgentLightning => ProfileDefaults {
            per_key_rpm: 6000,
            per_key_burst: 200,
            per_ip_rpm: 12000,
            per_ip_burst: 400,
            max_concurrent_per_key: 256,
            max_upstream_connections: 512,
        },
    }
}

/// The profile-dependent fields, as `(table under [proxy], field)`.
pub const FIELDS: &[(&str, &str)] = &[
    ("rate", "per_key_rpm"),
    ("rate", "per_key_burst"),
    ("rate", "per_ip_rpm"),
    ("rate", "per_ip_burst"),
    ("limits", "max_concurrent_per_key"),
    ("limits", "max_upstream_connections"),
];

/// Sets each profile-dependent field that `written(table, field)` says the file leaves out to
/// `proxy.upstream_kind`'s default.
pub fn apply(proxy: &mut ProxyConfig, written: &dyn Fn(&str, &str) -> bool) {
    let d = defaults(proxy.upstream_kind);
    for (table, field) in FIELDS {
        if written(table, field) {
            continue;
        }
        match *field {
            "per_key_rpm" => proxy.rate.per_key_rpm = d.per_key_rpm,
            "per_key_burst" => proxy.rate.per_key_burst = d.per_key_burst,
            "per_ip_rpm" => proxy.rate.per_ip_rpm = d.per_ip_rpm,
            "per_ip_burst" => proxy.rate.per_ip_burst = d.per_ip_burst,
            "max_concurrent_per_key" => {
                proxy.limits.max_concurrent_per_key = d.max_concurrent_per_key
            }
            "max_upstream_connections" => {
                proxy.limits.max_upstream_connections = d.max_upstream_connections
            }
            _ => {}
        }
    }
}

/// [`apply`] with what `source` (a config file's text) writes under `[proxy]`.
pub fn apply_from_source(proxy: &mut ProxyConfig, source: &str) {
    let table: Option<toml::Table> = source.parse().ok();
    let proxy_table = table.as_ref().and_then(|t| t.get("proxy"));
    apply(proxy, &|sub, field| {
        proxy_table
            .and_then(|p| p.get(sub))
            .and_then(|t| t.get(field))
            .is_some()
    });
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(source: &str) -> Config {
        Config::parse(source, Path::new("p.toml")).unwrap()
    }

    #[test]
    fn the_defaults_of_the_structs_are_litellms() {
        let config = ProxyConfig::default();
        let d = defaults(UpstreamKind::Litellm);
        assert_eq!(
            (config.rate.per_key_rpm, config.rate.per_key_burst),
            (d.per_key_rpm, d.per_key_burst)
        );
        assert_eq!(
            (config.rate.per_ip_rpm, config.rate.per_ip_burst),
            (d.per_ip_rpm, d.per_ip_burst)
        );
        assert_eq!(
            (
                config.limits.max_concurrent_per_key,
                config.limits.max_upstream_connections
            ),
            (d.max_concurrent_per_key, d.max_upstream_connections)
        );
    }

    #[test]
    fn a_profile_default_applies_only_where_the_file_is_silent() {
        let agl = defaults(UpstreamKind::AgentLightning);
        let config = parse("[proxy]\nupstream_kind = \"agent-lightning\"\n");
        assert_eq!(config.proxy.rate.per_key_burst, agl.per_key_burst);
        assert_eq!(config.proxy.rate.per_key_rpm, agl.per_key_rpm);
        assert_eq!(config.proxy.rate.per_ip_burst, agl.per_ip_burst);
        assert_eq!(
            config.proxy.limits.max_concurrent_per_key,
            agl.max_concurrent_per_key
        );
        assert_eq!(
            config.proxy.limits.max_upstream_connections,
            agl.max_upstream_connections
        );

        let config = parse(
            "[proxy]\nupstream_kind = \"agent-lightning\"\n[proxy.rate]\nper_key_burst = 7\n[proxy.limits]\nmax_concurrent_per_key = 9\n",
        );
        assert_eq!(config.proxy.rate.per_key_burst, 7);
        assert_eq!(config.proxy.limits.max_concurrent_per_key, 9);
        assert_eq!(config.proxy.rate.per_key_rpm, agl.per_key_rpm);

        // The same written value on the litellm profile is kept too.
        let config = parse("[proxy.rate]\nper_key_burst = 7\n");
        assert_eq!(config.proxy.rate.per_key_burst, 7);
        assert_eq!(config.proxy.rate.per_key_rpm, 600);
    }

    #[test]
    fn the_agent_lightning_defaults_carry_eighty_calls_at_once() {
        let agl = defaults(UpstreamKind::AgentLightning);
        let in_flight = 8 * 10;
        assert!(agl.per_key_burst as usize >= 2 * in_flight);
        assert!(agl.per_ip_burst as usize >= 2 * in_flight);
        assert!(agl.max_concurrent_per_key >= 2 * in_flight);
        assert!(agl.max_upstream_connections >= 2 * in_flight);
        // Sustained: every call in flight restarted each second.
        assert!(agl.per_key_rpm as usize >= in_flight * 60);
    }
}
