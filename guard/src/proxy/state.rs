//! The settings one request runs under, built from config in one step. A reload builds a whole
//! new `State` (reading the upstream key file and TLS files again) and swaps it in atomically;
//! requests in flight keep the `Arc` they started with.

use std::{
    collections::HashSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
    sync::Arc,
    time::Duration,
};

use http::{uri::Authority, HeaderName, HeaderValue};
use regex::RegexSet;
use tokio_rustls::TlsAcceptor;

use super::{
    error::ProxyError,
    layers::{
        auth::{KeyStore, StoredKey},
        concurrency::Concurrency,
        content::ContentRules,
        header_limits::HeaderLimits,
        rate::{quota, RateLimits},
    },
    tls,
};
use crate::config::proxy::{ProxyConfig, ALWAYS_RESERVED};

pub struct State {
    pub upstream: Authority,
    /// `Bearer <key>`, marked sensitive so hyper never logs it.
    pub upstream_auth: Option<HeaderValue>,
    pub keys: KeyStore,
    pub admin_keys: HashSet<Arc<str>>,
    pub rate: RateLimits,
    pub concurrency: Concurrency,
    pub header_limits: HeaderLimits,
    pub reserved: Vec<HeaderName>,
    pub content: ContentRules,
    pub tls: Option<TlsAcceptor>,
    max_body_bytes: u64,
    body_per_route: std::collections::BTreeMap<String, u64>,
    pub max_path_bytes: usize,
    pub max_json_depth: usize,
    pub header_read: Duration,
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    /// The cap on requests in flight upstream; the slots themselves outlive reloads (`Shared`).
    pub max_upstream_connections: usize,
}

impl State {
    /// `previous` (on reload) lends its rate limiters and concurrency counts where they apply
    /// unchanged, so a reload resets no budget.
    pub fn build(config: &ProxyConfig, previous: Option<&State>) -> Result<State, ProxyError> {
        let setting = |field: &str, message: String| ProxyError::Setting {
            field: field.into(),
            message,
        };
        let upstream = config
            .upstream
            .parse::<http::Uri>()
            .ok()
            .and_then(|uri| uri.authority().cloned())
            .ok_or_else(|| setting("proxy.upstream", "not an http://host:port URL".into()))?;
        let upstream_auth = config
            .upstream_key_file
            .as_deref()
            .map(read_upstream_key)
            .transpose()?;

        let mut stored = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&key.sha256, &mut hash)
                .map_err(|err| setting(&format!("proxy.keys[{i}].sha256"), err.to_string()))?;
            let expires = key
                .expires
                .as_deref()
                .map(humantime::parse_rfc3339_weak)
                .transpose()
                .map_err(|err| setting(&format!("proxy.keys[{i}].expires"), err.to_string()))?;
            stored.push(StoredKey {
                name: key.name.as_str().into(),
                hash,
                expires,
                rpm: key.rpm,
            });
        }
        let rate = &config.rate;
        let limits = RateLimits::new(
            quota(rate.per_ip_rpm, rate.per_ip_burst),
            stored.iter().map(|key| {
                let rpm = key.rpm.unwrap_or(rate.per_key_rpm);
                (
                    key.name.clone(),
                    quota(rpm, rate.per_key_burst.min(rpm.max(1))),
                )
            }),
            previous.map(|p| &p.rate),
        );
        let concurrency = Concurrency::new(
            stored.iter().map(|key| key.name.clone()),
            config.limits.max_concurrent_per_key,
            previous.map(|p| &p.concurrency),
        );
        let admin_keys = config
            .admin_routes
            .keys
            .iter()
            .map(|n| n.as_str().into())
            .collect();

        let reserved = ALWAYS_RESERVED
            .iter()
            .map(|name| name.to_string())
            .chain(
                config
                    .headers
                    .reserved
                    .iter()
                    .map(|n| n.to_ascii_lowercase()),
            )
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|err| setting("proxy.headers.reserved", err.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let content = &config.content;
        let deny = if content.deny_patterns.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(&content.deny_patterns)
                    .map_err(|err| setting("proxy.content.deny_patterns", err.to_string()))?,
            )
        };
        let limits_config = &config.limits;
        let timeouts = &config.timeouts;
        Ok(State {
            upstream,
            upstream_auth,
            keys: KeyStore::new(stored),
            admin_keys,
            rate: limits,
            concurrency,
            header_limits: HeaderLimits {
                max_headers: limits_config.max_headers,
                max_value_bytes: limits_config.max_header_value_bytes,
                max_total_bytes: limits_config.max_header_bytes,
            },
            reserved,
            content: ContentRules {
                max_messages: content.max_messages,
                max_message_chars: content.max_message_chars,
                deny,
            },
            tls: config.tls.as_ref().map(tls::acceptor).transpose()?,
            max_body_bytes: limits_config.max_body_bytes,
            body_per_route: limits_config.body_per_route.clone(),
            max_path_bytes: limits_config.max_path_bytes,
            max_json_depth: limits_config.max_json_depth,
            header_read: Duration::from_secs(timeouts.header_read_secs),
            body_timeout: Duration::from_secs(timeouts.body_secs),
            upstream_timeout: Duration::from_secs(timeouts.upstream_response_secs),
            max_upstream_connections: limits_config.max_upstream_connections,
        })
    }
}

impl State {
    /// The body limit of `route`: its override, or the general one.
    pub fn body_limit(&self, route: &str) -> u64 {
        self.body_per_route
            .get(route)
            .copied()
            .unwrap_or(self.max_body_bytes)
    }
}

/// The key file must be owner-only (validation checks it too; checked again here because the file
/// can change between `config check` and a reload).
fn read_upstream_key(path: &std::path::Path) -> Result<HeaderValue, ProxyError> {
    let fail = |source| ProxyError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(fail)?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "owned by another user; chown it to the user proxyguard runs as",
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "readable by group or others; chmod 600 it",
        )));
    }
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let key = text.trim();
    let content_error = || ProxyError::KeyFileContent {
        path: path.to_owned(),
    };
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(content_error());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| content_error())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_key_file_table() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("sk-master\n", 0o600, true),
            ("  sk-master  ", 0o400, true),
            ("", 0o600, false),
            ("two words", 0o600, false),
            ("sk-master", 0o644, false),
        ];
        for (i, (text, mode, ok)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("key{i}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = read_upstream_key(&path);
            assert_eq!(got.is_ok(), ok, "{text:?} {mode:o}");
            if let Ok(value) = got {
                assert_eq!(value, "Bearer sk-master");
                assert!(value.is_sensitive());
            }
        }
    }

    #[test]
    fn default_config_builds() {
        let state = State::build(&ProxyConfig::default(), None).unwrap();
        assert_eq!(state.reserved.len(), 3);
        assert!(state.keys.keys().is_empty());
    }

    #[test]
    fn a_key_rpm_overrides_the_default_rate() {
        let key = |name: &str, rpm| crate::config::proxy::KeyEntry {
            name: name.into(),
            sha256: "a".repeat(64),
            created: None,
            expires: None,
            rpm,
        };
        let config = ProxyConfig {
            keys: vec![key("slow", Some(2)), key("default", None)],
            ..ProxyConfig::default()
        };
        let state = State::build(&config, None).unwrap();
        // The burst never exceeds the key's own rpm; the default key keeps the default burst (60).
        let allowed = |name: &str| {
            (0..100)
                .take_while(|_| state.rate.check_key(name).is_ok())
                .count()
        };
        assert_eq!(allowed("slow"), 2);
        assert_eq!(allowed("default"), 60);
    }

    #[test]
    fn body_limits_per_route() {
        let mut config = ProxyConfig::default();
        config
            .limits
            .body_per_route
            .insert("embeddings".into(), 8 << 20);
        let state = State::build(&config, None).unwrap();
        for (route, limit) in [
            ("embeddings", 8 << 20),
            ("chat/completions", 2 << 20),
            ("admin", 2 << 20),
        ] {
            assert_eq!(state.body_limit(route), limit, "{route}");
        }
    }
}
