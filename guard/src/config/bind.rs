//! `[bind]`: kernel bind rules (threat 12).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

/// Kernel bind rules (threat 12): a guarded port may be bound only on allowed addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BindConfig {
    pub enabled: bool,
    pub mode: Mode,
    pub rules: Vec<BindRule>,
}

impl Default for BindConfig {
    fn default() -> Self {
        Self {
            // On: an LLM proxy binding 0.0.0.0 exposes an unauthenticated, money-spending port.
            enabled: true,
            mode: Mode::Enforce,
            // LiteLLM's default port, loopback only.
            rules: vec![BindRule {
                port: 4000,
                allow: loopback(),
                owner: None,
            }],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRule {
    pub port: u16,
    /// Addresses (or CIDRs) the port may be bound to. Loopback when left out.
    #[serde(default = "loopback")]
    pub allow: Vec<IpNet>,
    /// When set, only this cgroup (or one below it) may bind the port at all: `"self"` for
    /// proxyguard's own cgroup, or a cgroup v2 path such as `/system.slice/litellm.service`.
    #[serde(default)]
    pub owner: Option<String>,
}

fn loopback() -> Vec<IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("literal CIDR"),
        "::1/128".parse().expect("literal CIDR"),
    ]
}

pub fn validate(bind: &BindConfig, errors: &mut Vec<FieldError>) {
    let mut push = |field: String, message: String| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    };
    let mut ports = std::collections::HashSet::new();
    for (i, rule) in bind.rules.iter().enumerate() {
        if rule.port == 0 {
            push(
                format!("bind.rules[{i}].port"),
                "port 0 means \"any free port\" and cannot be guarded; use the service's real port"
                    .into(),
            );
        }
        if !ports.insert(rule.port) {
            push(
                format!("bind.rules[{i}].port"),
                format!(
                    "port {} has more than one rule; merge their `allow` lists",
                    rule.port
                ),
            );
        }
        if let Some(owner) = &rule.owner {
            if owner != "self" && (!owner.starts_with('/') || owner.split('/').any(|p| p == "..")) {
                push(
                    format!("bind.rules[{i}].owner"),
                    format!("`{owner}` is neither \"self\" nor an absolute cgroup path like \"/system.slice/litellm.service\""),
                );
            }
        }
        if rule.allow.is_empty() {
            push(
                format!("bind.rules[{i}].allow"),
                "an empty list would make the port unbindable; list at least one address (loopback: \"127.0.0.1\", \"::1\")".into(),
            );
        }
    }
}
