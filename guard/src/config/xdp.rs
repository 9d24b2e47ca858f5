//! `[xdp]`: the per-source connection rate limit in XDP (threat 9).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct XdpSection {
    pub enabled: bool,
    pub mode: Mode,
    /// Interfaces to attach to. Empty leaves XDP off: only the operator knows which face the
    /// network.
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
    if !(16..=128).contains(&xdp.ipv6_prefix) {
        push(
            "ipv6_prefix",
            "must be between 16 and 128 (64 counts one host's /64 as one source)".into(),
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
