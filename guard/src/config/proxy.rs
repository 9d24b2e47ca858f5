//! `[proxy]`: the authenticating L7 proxy in front of the LLM proxy (threats 1-5, 8-10, 14, 15).
//!
//! Every default is the secure one: loopback listeners, TLS required off loopback, admin routes of
//! the guarded proxy closed, limits on everything a client controls. `check` holds the semantic
//! checks serde cannot express, including the ones that read files (key file mode, TLS files).

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Off only for hosts that run the kernel half alone.
    pub enabled: bool,
    /// The front address clients use. Port 0 picks a free port (reported in the `ready` record).
    pub listen: SocketAddr,
    /// The guarded LLM proxy, `http://host:port`. It should itself listen on loopback only.
    pub upstream: String,
    /// A root-only file (mode 0600 or stricter) holding the upstream's own key, sent as
    /// `Authorization: Bearer`. Re-read on reload.
    pub upstream_key_file: Option<PathBuf>,
    /// Metrics (`/metrics`) and readiness (`/healthz`). Must be loopback.
    pub admin_listen: SocketAddr,
    /// Threads of the daemon's async runtime (the proxy and the kernel event readers). Read at
    /// start only.
    pub worker_threads: usize,
    /// Allows a non-loopback `listen` without TLS. Prompts and keys then cross the network in
    /// plaintext, so it is an explicit choice and warns at start.
    pub allow_plaintext: bool,
    pub tls: Option<TlsConfig>,
    pub limits: LimitsConfig,
    pub rate: RateConfig,
    pub timeouts: TimeoutsConfig,
    pub headers: HeadersConfig,
    pub content: ContentConfig,
    pub admin_routes: AdminRoutesConfig,
    /// Client keys, by name. Only SHA-256 hashes are stored.
    pub keys: Vec<KeyEntry>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            // LiteLLM's default port.
            upstream: "http://127.0.0.1:4000".into(),
            upstream_key_file: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            // Two: the guarded LLM proxy, not this one, is the slow hop; leave it the other cores.
            worker_threads: 2,
            allow_plaintext: false,
            tls: None,
            limits: LimitsConfig::default(),
            rate: RateConfig::default(),
            timeouts: TimeoutsConfig::default(),
            headers: HeadersConfig::default(),
            content: ContentConfig::default(),
            admin_routes: AdminRoutesConfig::default(),
            // No keys: every request is refused until one is added. Fail closed.
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    /// Overrides of `max_body_bytes` by route name (`chat/completions`, `embeddings`, ...).
    pub body_per_route: std::collections::BTreeMap<String, u64>,
    pub max_headers: usize,
    pub max_header_value_bytes: usize,
    pub max_header_bytes: usize,
    pub max_path_bytes: usize,
    pub max_json_depth: usize,
    pub max_connections: usize,
    pub max_concurrent_per_key: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // 2 MiB holds long chat histories; the unguarded proxy reads any size into memory.
            max_body_bytes: 2 * 1024 * 1024,
            body_per_route: Default::default(),
            // The header defaults answer threat 5 (unbounded header parsing upstream).
            max_headers: 100,
            max_header_value_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_path_bytes: 2048,
            // Real requests nest a handful of levels; deep nesting only costs parsers.
            max_json_depth: 32,
            max_connections: 1024,
            max_concurrent_per_key: 64,
        }
    }
}

/// Requests per minute with a burst; 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    pub per_key_rpm: u32,
    pub per_key_burst: u32,
    pub per_ip_rpm: u32,
    pub per_ip_burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            per_key_rpm: 600,
            per_key_burst: 60,
            // Higher than per key: several clients may share an address (NAT, one host).
            per_ip_rpm: 1200,
            per_ip_burst: 120,
        }
    }
}

/// Seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// The whole request head must arrive within this (slowloris), and an idle keep-alive
    /// connection is closed after it.
    pub header_read_secs: u64,
    /// The whole request body must arrive within this.
    pub body_secs: u64,
    /// Until the upstream's response head. Long: completions can take minutes.
    pub upstream_response_secs: u64,
    /// How long SIGTERM waits for in-flight requests.
    pub drain_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            header_read_secs: 10,
            body_secs: 30,
            upstream_response_secs: 600,
            drain_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    /// Refused in addition to `x-rollout-id`, `x-attempt-id` and `x-sequence-id`, which are
    /// always refused (the upstream attributes requests by them).
    pub reserved: Vec<String>,
}

/// Optional content rules over request messages (threat 10). 0 or empty turns a rule off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    pub max_messages: usize,
    pub max_message_chars: usize,
    /// Regular expressions over message text. A match is refused, naming the rule's index.
    pub deny_patterns: Vec<String>,
}

/// The guarded proxy's own admin routes (`/key/*`, `/user/*`, `/team/*`, `/model/*`, `/config/*`,
/// the UI). Closed unless opened to named keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminRoutesConfig {
    /// Names of keys (from `[[proxy.keys]]`) that may use the admin routes.
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Goes into logs and metrics; the key never does.
    pub name: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// RFC 3339, informational.
    pub created: Option<String>,
    /// RFC 3339; the key is refused from then on.
    pub expires: Option<String>,
    /// Overrides `rate.per_key_rpm` for this key.
    pub rpm: Option<u32>,
}

/// Reserved header names that no config can un-reserve.
pub const ALWAYS_RESERVED: &[&str] = &["x-rollout-id", "x-attempt-id", "x-sequence-id"];

/// Appends every problem in `config` to `push(field, message)`.
pub fn check(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) {
    if !config.enabled {
        return;
    }
    match config.upstream.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
            if uri.path() != "/" && !uri.path().is_empty() {
                push(
                    "proxy.upstream".into(),
                    "give only scheme, host and port, like \"http://127.0.0.1:4000\"".into(),
                );
            }
        }
        _ => push(
            "proxy.upstream".into(),
            "must be an http:// URL with a host and port, like \"http://127.0.0.1:4000\" (the guarded proxy listens on loopback, so TLS to it adds nothing)".into(),
        ),
    }
    if let Some(path) = &config.upstream_key_file {
        check_secret_file(path, "proxy.upstream_key_file", push);
    }
    if !config.admin_listen.ip().is_loopback() {
        push(
            "proxy.admin_listen".into(),
            "metrics must stay on loopback; use 127.0.0.1 or ::1".into(),
        );
    }
    if !config.listen.ip().is_loopback() && config.tls.is_none() && !config.allow_plaintext {
        push(
            "proxy.listen".into(),
            "a non-loopback listener needs [proxy.tls] (or allow_plaintext = true, which sends keys and prompts in the clear)".into(),
        );
    }
    if let Some(tls) = &config.tls {
        for (field, path) in [("proxy.tls.cert", &tls.cert), ("proxy.tls.key", &tls.key)] {
            if !path.is_file() {
                push(
                    field.into(),
                    format!("{} is not a readable file", path.display()),
                );
            }
        }
    }
    if config.worker_threads == 0 {
        push("proxy.worker_threads".into(), "must be at least 1".into());
    }
    let limits = &config.limits;
    for (field, value) in [
        ("max_body_bytes", limits.max_body_bytes as usize),
        ("max_headers", limits.max_headers),
        ("max_header_value_bytes", limits.max_header_value_bytes),
        ("max_header_bytes", limits.max_header_bytes),
        ("max_path_bytes", limits.max_path_bytes),
        ("max_json_depth", limits.max_json_depth),
        ("max_connections", limits.max_connections),
        ("max_concurrent_per_key", limits.max_concurrent_per_key),
    ] {
        if value == 0 {
            push(format!("proxy.limits.{field}"), "must be at least 1".into());
        }
    }
    for (route, bytes) in &limits.body_per_route {
        let field = format!("proxy.limits.body_per_route.{route}");
        if !crate::proxy::layers::path::API_ROUTES
            .iter()
            .any(|(name, _, _)| name == route)
        {
            push(field, "not a route name; use one of chat/completions, completions, embeddings, models, responses, moderations, messages".into());
        } else if *bytes == 0 {
            push(field, "must be at least 1".into());
        }
    }
    let timeouts = &config.timeouts;
    for (field, value) in [
        ("header_read_secs", timeouts.header_read_secs),
        ("body_secs", timeouts.body_secs),
        ("upstream_response_secs", timeouts.upstream_response_secs),
    ] {
        if value == 0 {
            push(
                format!("proxy.timeouts.{field}"),
                "must be at least 1".into(),
            );
        }
    }
    for (i, name) in config.headers.reserved.iter().enumerate() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            push(
                format!("proxy.headers.reserved[{i}]"),
                "not a valid header name".into(),
            );
        }
    }
    for (i, pattern) in config.content.deny_patterns.iter().enumerate() {
        if let Err(err) = regex::Regex::new(pattern) {
            push(
                format!("proxy.content.deny_patterns[{i}]"),
                format!("not a valid regular expression: {err}"),
            );
        }
    }
    check_keys(config, push);
}

fn check_keys(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) {
    let mut names = std::collections::HashSet::new();
    for (i, key) in config.keys.iter().enumerate() {
        if key.name.is_empty()
            || !key
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            push(
                format!("proxy.keys[{i}].name"),
                "use letters, digits, '-', '_' and '.' only (the name goes into logs and metric labels)".into(),
            );
        }
        if !names.insert(key.name.as_str()) {
            push(
                format!("proxy.keys[{i}].name"),
                format!("\"{}\" is used by more than one key", key.name),
            );
        }
        let valid_hash = key.sha256.len() == 64
            && key
                .sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !valid_hash {
            push(
                format!("proxy.keys[{i}].sha256"),
                "must be 64 lower-case hex digits; `proxyguard keys add` writes it".into(),
            );
        }
        for (field, value) in [("created", &key.created), ("expires", &key.expires)] {
            if let Some(value) = value {
                if humantime::parse_rfc3339_weak(value).is_err() {
                    push(
                        format!("proxy.keys[{i}].{field}"),
                        "must be an RFC 3339 time, like \"2027-01-31T00:00:00Z\"".into(),
                    );
                }
            }
        }
        if key.rpm == Some(0) {
            push(
                format!("proxy.keys[{i}].rpm"),
                "must be at least 1 (revoke the key to stop it)".into(),
            );
        }
    }
    for (i, name) in config.admin_routes.keys.iter().enumerate() {
        if !config.keys.iter().any(|key| &key.name == name) {
            push(
                format!("proxy.admin_routes.keys[{i}]"),
                format!("no key named \"{name}\" in [[proxy.keys]]"),
            );
        }
    }
}

/// A secret file must exist and be readable by its owner only.
fn check_secret_file(path: &Path, field: &str, push: &mut dyn FnMut(String, String)) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => push(
            field.into(),
            format!(
                "{} is readable by group or others; run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ),
        Ok(_) => {}
        Err(err) => push(
            field.into(),
            format!("cannot read {}: {err}", path.display()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(config: &ProxyConfig) -> Vec<String> {
        let mut out = Vec::new();
        check(config, &mut |field, _| out.push(field));
        out
    }

    #[test]
    fn default_is_valid() {
        assert!(fields(&ProxyConfig::default()).is_empty());
    }

    #[test]
    fn table_of_bad_settings() {
        type Edit = fn(&mut ProxyConfig);
        let cases: &[(&str, Edit)] = &[
            ("proxy.upstream", |c| c.upstream = "ftp://x".into()),
            ("proxy.upstream", |c| {
                c.upstream = "http://127.0.0.1:4000/v1".into()
            }),
            ("proxy.admin_listen", |c| {
                c.admin_listen = "0.0.0.0:9464".parse().unwrap()
            }),
            ("proxy.listen", |c| {
                c.listen = "0.0.0.0:8080".parse().unwrap()
            }),
            ("proxy.limits.max_body_bytes", |c| {
                c.limits.max_body_bytes = 0
            }),
            ("proxy.timeouts.body_secs", |c| c.timeouts.body_secs = 0),
            ("proxy.limits.body_per_route.key/generate", |c| {
                c.limits.body_per_route.insert("key/generate".into(), 10);
            }),
            ("proxy.headers.reserved[0]", |c| {
                c.headers.reserved = vec!["bad header".into()]
            }),
            ("proxy.content.deny_patterns[0]", |c| {
                c.content.deny_patterns = vec!["(".into()]
            }),
            ("proxy.upstream_key_file", |c| {
                c.upstream_key_file = Some("/nonexistent/key".into())
            }),
            ("proxy.admin_routes.keys[0]", |c| {
                c.admin_routes.keys = vec!["ghost".into()]
            }),
        ];
        for (field, edit) in cases {
            let mut config = ProxyConfig::default();
            edit(&mut config);
            assert_eq!(fields(&config), [field.to_string()], "case {field}");
        }
    }

    #[test]
    fn plaintext_off_loopback_needs_the_explicit_switch() {
        let mut config = ProxyConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            allow_plaintext: true,
            ..ProxyConfig::default()
        };
        assert!(fields(&config).is_empty());
        config.allow_plaintext = false;
        assert_eq!(fields(&config), ["proxy.listen"]);
    }

    #[test]
    fn keys_are_checked() {
        let good = KeyEntry {
            name: "ci".into(),
            sha256: "a".repeat(64),
            created: None,
            expires: Some("2030-01-01T00:00:00Z".into()),
            rpm: Some(10),
        };
        let config = ProxyConfig {
            keys: vec![
                good.clone(),
                KeyEntry {
                    name: "ci".into(),
                    ..good.clone()
                },
                KeyEntry {
                    name: "bad name".into(),
                    sha256: "XYZ".into(),
                    expires: Some("soon".into()),
                    rpm: Some(0),
                    ..good
                },
            ],
            ..ProxyConfig::default()
        };
        assert_eq!(
            fields(&config),
            [
                "proxy.keys[1].name",
                "proxy.keys[2].name",
                "proxy.keys[2].sha256",
                "proxy.keys[2].expires",
                "proxy.keys[2].rpm"
            ]
        );
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstream.key");
        std::fs::write(&path, "sk-test").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let config = ProxyConfig {
            upstream_key_file: Some(path.clone()),
            ..ProxyConfig::default()
        };
        assert_eq!(fields(&config), ["proxy.upstream_key_file"]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(fields(&config).is_empty());
    }
}
