//! `[fleet]`: limits and budgets shared by every proxyguard on one Redis (issue 15). Empty
//! `redis_url` (the default) keeps every limit local to this host.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSection {
    /// `redis://host:port/db`, or `rediss://` for TLS. Empty: no fleet, every limit local.
    pub redis_url: String,
    /// `redis_url` is a node of a Redis Cluster: the client learns the others from it (and from
    /// `cluster_seeds`) and sends each call to the node that holds its slot.
    pub cluster: bool,
    /// More Cluster nodes to learn the cluster from, should `redis_url`'s be down at start.
    pub cluster_seeds: Vec<String>,
    /// A root-only file (mode 0600) holding Redis's password (`AUTH`), alone on one line.
    pub password_file: Option<PathBuf>,
    /// This instance's name in events and in Redis; empty: the host name.
    pub instance: String,
    /// How many instances share the limits: while Redis is unreachable, `local` holds each to
    /// its share, every limit divided by this.
    pub expected_instances: u32,
    /// What a request gets while Redis is unreachable.
    pub on_redis_error: OnRedisError,
    /// The most a request waits for Redis before the `on_redis_error` mode answers it.
    pub timeout_ms: u64,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            cluster: false,
            cluster_seeds: Vec::new(),
            password_file: None,
            instance: String::new(),
            expected_instances: 1,
            on_redis_error: OnRedisError::Local,
            timeout_ms: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Each instance enforces its share of every limit (the limit ÷ `expected_instances`).
    Local,
    /// Every request that passes the other checks is let through, unlimited by the fleet.
    Allow,
    /// Every request that a shared limit covers is refused (503 `fleet_unavailable`).
    Deny,
}

impl OnRedisError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Allow => "allow",
            OnRedisError::Deny => "deny",
        }
    }
}

impl FleetSection {
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }
}

pub fn validate(fleet: &FleetSection, errors: &mut Vec<FieldError>) {
    if !fleet.enabled() {
        return;
    }
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("fleet.{field}"),
            line: None,
            message,
        })
    };
    if let Some(message) = url_error(&fleet.redis_url, fleet.cluster) {
        push("redis_url", message);
    }
    if !fleet.cluster && !fleet.cluster_seeds.is_empty() {
        push(
            "cluster_seeds",
            "names Redis Cluster nodes, but fleet.cluster is false; set cluster = true, or remove them"
                .into(),
        );
    }
    for seed in &fleet.cluster_seeds {
        if let Some(message) = url_error(seed, true) {
            push("cluster_seeds", format!("{seed:?} {message}"));
        }
    }
    if fleet.expected_instances == 0 || fleet.expected_instances > 1000 {
        push(
            "expected_instances",
            "must be between 1 and 1000 (how many hosts share the Redis)".into(),
        );
    }
    if fleet.timeout_ms == 0 || fleet.timeout_ms > 2000 {
        push(
            "timeout_ms",
            "must be between 1 and 2000 milliseconds (it is waited on every request)".into(),
        );
    }
    if !fleet.instance.is_empty()
        && !fleet
            .instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        push(
            "instance",
            "may hold only letters, digits, '-', '_' and '.'".into(),
        );
    }
}

/// What is wrong with `url` as the address of Redis (a Cluster node if `cluster`), if anything.
fn url_error(url: &str, cluster: bool) -> Option<String> {
    let info = if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Some(
            "must start with redis:// (or rediss:// for TLS), like \"redis://127.0.0.1:6379/0\""
                .into(),
        );
    } else {
        match redis::IntoConnectionInfo::into_connection_info(url) {
            Ok(info) => info,
            Err(_) => {
                return Some(
                    "is not a Redis URL; write it like \"redis://127.0.0.1:6379/0\"".into(),
                )
            }
        }
    };
    if url.contains('@') {
        return Some("must not hold a password; put it in fleet.password_file (mode 0600)".into());
    }
    if cluster && info.redis_settings().db() != 0 {
        return Some(
            "names a database other than 0, which Redis Cluster does not have; end it in /0".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("http://x", "fleet.redis_url"),
            ("redis://:secret@127.0.0.1", "fleet.redis_url"),
        ];
        for (url, field) in cases {
            let mut errors = Vec::new();
            let fleet = FleetSection {
                redis_url: url.into(),
                ..FleetSection::default()
            };
            validate(&fleet, &mut errors);
            assert_eq!(errors.len(), 1, "{url}: {errors:?}");
            assert_eq!(errors[0].field, field);
        }
        let mut errors = Vec::new();
        let fleet = FleetSection {
            redis_url: "rediss://redis.internal:6380/0".into(),
            expected_instances: 0,
            timeout_ms: 0,
            instance: "a b".into(),
            ..FleetSection::default()
        };
        validate(&fleet, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "fleet.expected_instances",
                "fleet.timeout_ms",
                "fleet.instance"
            ]
        );
        // A Cluster has database 0 only; seeds without `cluster` are a mistake, and each seed is
        // checked as `redis_url` is.
        let mut errors = Vec::new();
        let fleet = FleetSection {
            redis_url: "redis://10.0.0.5:6379/2".into(),
            cluster: true,
            cluster_seeds: vec!["redis://10.0.0.6:6379".into(), "10.0.0.7:6379".into()],
            ..FleetSection::default()
        };
        validate(&fleet, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["fleet.redis_url", "fleet.cluster_seeds"],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("database other than 0"));
        assert!(errors[1]
            .message
            .starts_with("\"10.0.0.7:6379\" must start"));
        let mut errors = Vec::new();
        let fleet = FleetSection {
            redis_url: "redis://10.0.0.5:6379/0".into(),
            cluster_seeds: vec!["redis://10.0.0.6:6379".into()],
            ..FleetSection::default()
        };
        validate(&fleet, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("set cluster = true"));
        let mut errors = Vec::new();
        validate(&FleetSection::default(), &mut errors);
        assert!(errors.is_empty(), "off by default");
    }
}
