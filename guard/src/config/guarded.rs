//! `[guarded]`: which service proxyguard guards (its cgroup and processes).

use serde::{Deserialize, Serialize};

use super::FieldError;

/// Exactly one of the three names the service; none leaves the per-service controls idle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardedSection {
    /// A systemd unit, such as `litellm.service`: its cgroup, followed across restarts.
    pub unit: Option<String>,
    /// A cgroup v2 path relative to the hierarchy's root, such as `/system.slice/litellm.service`.
    pub cgroup: Option<String>,
    /// An executable path: the cgroups of every process running it.
    pub exe: Option<String>,
}

impl GuardedSection {
    pub fn is_set(&self) -> bool {
        self.unit.is_some() || self.cgroup.is_some() || self.exe.is_some()
    }
}

pub fn validate(guarded: &GuardedSection, errors: &mut Vec<FieldError>) {
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("guarded.{field}"),
            line: None,
            message,
        })
    };
    let set = [
        guarded.unit.is_some(),
        guarded.cgroup.is_some(),
        guarded.exe.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        push("unit", "set only one of `unit`, `cgroup` and `exe`".into());
    }
    if let Some(unit) = &guarded.unit {
        if unit.is_empty() || unit.contains('/') || !unit.contains('.') {
            push(
                "unit",
                format!("`{unit}` is not a unit name; use the full name, like \"litellm.service\""),
            );
        }
    }
    if let Some(cgroup) = &guarded.cgroup {
        if !cgroup.starts_with('/') || cgroup.split('/').any(|part| part == "..") {
            push("cgroup", format!("`{cgroup}` must be an absolute path inside the cgroup hierarchy, like \"/system.slice/litellm.service\""));
        }
    }
    if let Some(exe) = &guarded.exe {
        if !exe.starts_with('/') {
            push(
                "exe",
                format!("`{exe}` must be an absolute path, like \"/opt/litellm/bin/python3\""),
            );
        }
    }
}
