//! `[xdp]`: the per-source connection rate limit in XDP (threat 9).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdpSection {
    pub enabled: bool,
    pub mode: Mode,
    /// Interfaces to attach to. Empty: those that can carry traffic to the front listener (none
    /// for a loopback one; every non-loopback interface that is up otherwise, new ones included).
    pub interfaces: Vec<String>,
    pub attach: AttachMode,
    /// Destination ports whose SYNs are limited.
    pub ports: Vec<u16>,
    /// New connections per second each source may open.
    pub rate_per_sec: u32,
    /// How many may come at once before the rate applies.
    pub burst: u32,
    /// IPv6 sources are counted per prefix of this length: one host commonly owns a whole /64.
    pub ipv6_prefix: u8,
    /// Sources new to the limiter are admitted per wider prefix of these lengths...
    pub new_source_prefix_v4: u8,
    pub new_source_prefix_v6: u8,
    /// ...at this rate and burst per prefix, so rotating through addresses gains nothing.
    pub new_sources_per_sec: u32,
    pub new_sources_burst: u32,
    /// Drop events per second over all sources (besides one per source per second).
    pub events_per_sec: u32,
    /// Sources never limited.
    pub allow: Vec<IpNet>,
    /// Sources always dropped.
    pub deny: Vec<IpNet>,
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            interfaces: Vec::new(),
            attach: AttachMode::Auto,
            // proxyguard's front port.
            ports: vec![8080],
            // Generous for a client of an LLM API (each request is seconds long), far below a flood.
            rate_per_sec: 20,
            burst: 40,
            ipv6_prefix: 64,
            // A /24 or a /48 is one customer or one network; ten new clients a second from one
            // of them is far above what an LLM API sees, and far below a rotating flood.
            new_source_prefix_v4: 24,
            new_source_prefix_v6: 48,
            new_sources_per_sec: 10,
            new_sources_burst: 32,
            events_per_sec: 100,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP where the driver supports it, generic otherwise.
    Auto,
    Native,
    Generic,
}

pub fn validate(xdp: &XdpSection, errors: &mut Vec<FieldError>) {
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("xdp.{field}"),
            line: None,
            message,
        })
    };
    if xdp.rate_per_sec == 0 {
        push(
            "rate_per_sec",
            "must be at least 1 (use `deny` to block a source entirely)".into(),
        );
    }
    if xdp.rate_per_sec > 1_000_000 {
        push(
            "rate_per_sec",
            "at most 1000000 per second per source".into(),
        );
    }
    if xdp.burst == 0 || xdp.burst > 1_000_000 {
        push("burst", "must be between 1 and 1000000".into());
    }
    if !(16..=64).contains(&xdp.ipv6_prefix) {
        push(
            "ipv6_prefix",
            "must be between 16 and 64 (64 counts one host's /64 as one source; a host never owns less)".into(),
        );
    }
    if !(8..=32).contains(&xdp.new_source_prefix_v4) {
        push(
            "new_source_prefix_v4",
            "must be between 8 and 32 (24: one /24 admits new sources at one rate)".into(),
        );
    }
    if !(16..=64).contains(&xdp.new_source_prefix_v6) || xdp.new_source_prefix_v6 > xdp.ipv6_prefix
    {
        push(
            "new_source_prefix_v6",
            format!(
                "must be between 16 and ipv6_prefix ({}): the wider prefix holds the sources (48 is a common customer allocation)",
                xdp.ipv6_prefix
            ),
        );
    }
    if xdp.new_sources_per_sec == 0 || xdp.new_sources_per_sec > 1_000_000 {
        push(
            "new_sources_per_sec",
            "must be between 1 and 1000000".into(),
        );
    }
    if xdp.new_sources_burst == 0 || xdp.new_sources_burst > 1_000_000 {
        push("new_sources_burst", "must be between 1 and 1000000".into());
    }
    if xdp.events_per_sec == 0 || xdp.events_per_sec > 100_000 {
        push(
            "events_per_sec",
            "must be between 1 and 100000 (the drop counters count every drop anyway)".into(),
        );
    }
    for (i, port) in xdp.ports.iter().enumerate() {
        if *port == 0 {
            push(
                &format!("ports[{i}]"),
                "port 0 cannot receive connections; use the listener's port".into(),
            );
        }
    }
    if xdp.enabled && !xdp.interfaces.is_empty() && xdp.ports.is_empty() {
        push(
            "ports",
            "list at least one port to protect, or set enabled = false".into(),
        );
    }
    for (i, name) in xdp.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            push(
                &format!("interfaces[{i}]"),
                format!("`{name}` is not an interface name (1 to 15 characters, no '/' or spaces)"),
            );
        }
    }
}
