//! `[upstream_guard]`: who on this host may connect to the guarded LLM proxy's port (threat 21).
//!
//! The port and address come from `proxy.upstream`; this section says whether the kernel rule is
//! on, its mode, and which cgroups besides proxyguard's own may connect.

use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamGuardSection {
    pub enabled: bool,
    pub mode: Mode,
    /// cgroup v2 paths (such as `/system.slice/prometheus.service`) whose processes, and those of
    /// the cgroups below them, may connect to the upstream too. proxyguard's own cgroup always may.
    pub allow_cgroups: Vec<String>,
}

impl Default for UpstreamGuardSection {
    fn default() -> Self {
        Self {
            // On: a local process that dials the upstream directly skips every check proxyguard
            // makes, and the upstream holds the provider keys.
            enabled: true,
            mode: Mode::Enforce,
            allow_cgroups: Vec::new(),
        }
    }
}

pub fn validate(section: &UpstreamGuardSection, errors: &mut Vec<FieldError>) {
    for (i, path) in section.allow_cgroups.iter().enumerate() {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path == "/" {
            errors.push(FieldError {
                field: format!("upstream_guard.allow_cgroups[{i}]"),
                line: None,
                message: format!(
                    "`{path}` is not a cgroup v2 path below the root like \"/system.slice/prometheus.service\" \
                     (\"/\" would allow every process)"
                ),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_cgroups_must_be_paths_below_the_root() {
        let section = UpstreamGuardSection {
            allow_cgroups: vec![
                "/system.slice/prometheus.service".into(),
                "/".into(),
                "system.slice/x".into(),
                "/a/../b".into(),
            ],
            ..Default::default()
        };
        let mut errors = Vec::new();
        validate(&section, &mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "upstream_guard.allow_cgroups[1]",
                "upstream_guard.allow_cgroups[2]",
                "upstream_guard.allow_cgroups[3]"
            ]
        );
    }
}
