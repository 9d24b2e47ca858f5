//! The settings one request runs under, built in one step from what the config compiler made of
//! `[proxy]` (`Settings`: parsed values, the key file and TLS files read). A reload builds a
//! whole new `State` and swaps it in atomically; requests in flight keep the `Arc` they started
//! with.

use std::{collections::HashSet, sync::Arc, time::Duration};

use http::{uri::Authority, HeaderName, HeaderValue};
use regex::RegexSet;
use tokio_rustls::TlsAcceptor;

use super::layers::{
    addresses::AddressRule,
    auth::{KeyStore, StoredKey},
    concurrency::Concurrency,
    content::ContentRules,
    header_limits::HeaderLimits,
    media::MediaPolicy,
    rate::{quota, RateLimits},
    rollout::RolloutLimits,
};
use super::response_headers::ResponseAllow;
use super::rollout_token::SigningKeys;
use super::routes::RouteTable;
use super::sources::SourceCaps;
use crate::config::proxy::ProxyConfig;

pub struct State {
    pub upstream: Authority,
    /// The active route table: the profile's routes and `[[proxy.routes]]`.
    pub routes: Arc<RouteTable>,
    /// `Bearer <key>`, marked sensitive so hyper never logs it.
    pub upstream_auth: Option<HeaderValue>,
    pub keys: KeyStore,
    pub admin_keys: HashSet<Arc<str>>,
    pub rate: RateLimits,
    pub concurrency: Concurrency,
    /// Each rollout's own budget, for requests with a rollout token.
    pub rollouts: RolloutLimits,
    pub header_limits: HeaderLimits,
    pub reserved: Vec<HeaderName>,
    /// LiteLLM's custom key header, removed like the other credential headers.
    pub custom_key_header: Option<HeaderName>,
    /// Control headers let through (`proxy.headers.upstream_allow`).
    pub upstream_allow: Vec<HeaderName>,
    /// Response headers let back to clients (`proxy.headers.response_allow`).
    pub response_allow: ResponseAllow,
    pub content: ContentRules,
    /// Media URLs in messages (`proxy.body`).
    pub media: MediaPolicy,
    pub tls: Option<TlsAcceptor>,
    max_body_bytes: u64,
    body_per_route: std::collections::BTreeMap<String, u64>,
    pub max_path_bytes: usize,
    pub max_query_bytes: usize,
    pub max_json_depth: usize,
    pub header_read: Duration,
    pub body_timeout: Duration,
    pub upstream_timeout: Duration,
    /// The cap on requests in flight upstream; the slots themselves outlive reloads (`Shared`).
    pub max_upstream_connections: usize,
    /// `proxy.rate`: the defaults a key's rate comes from, and the per-address rule, for the
    /// fleet's shared windows.
    pub per_key_rpm: u32,
    pub per_key_burst: u32,
    pub per_ip: Option<AddressRule>,
    /// Per-source connection caps; the counts themselves outlive reloads (`Shared`).
    pub source_caps: SourceCaps,
    /// A response write that makes no progress for this long cuts the connection.
    pub write_stall: Duration,
    /// Prices per model (`proxy.pricing`).
    pub pricing: super::budget::Pricing,
    /// Output tokens reserved for a request that names no `max_tokens`.
    pub default_max_tokens: u64,
    /// `proxy.usage.enabled`.
    pub metering: bool,
    /// `proxy.usage.spike`, when on.
    pub spike: Option<super::budget::ledger::SpikeRule>,
    /// With `[fleet]` and more than one instance: the share limiters (each rate ÷
    /// `expected_instances`) that hold while Redis is unreachable, and that divisor.
    pub fleet_share: Option<(u32, RateLimits)>,
}

/// What the config compiler (`config::compile`) built from `[proxy]`: every value parsed and
/// every file read, so turning it into a [`State`] cannot fail.
#[derive(Clone)]
pub struct Settings {
    pub upstream: Authority,
    pub routes: Arc<RouteTable>,
    /// `Bearer <key>` from the upstream key file, marked sensitive.
    pub upstream_auth: Option<HeaderValue>,
    pub keys: Vec<StoredKey>,
    /// `proxy.rollout_tokens.key_file`, read and parsed; none when tokens are off.
    pub rollout_keys: Option<SigningKeys>,
    /// The always-reserved names first.
    pub reserved: Vec<HeaderName>,
    /// `proxy.upstream_custom_key_header`, lower-cased.
    pub custom_key_header: Option<HeaderName>,
    pub upstream_allow: Vec<HeaderName>,
    pub deny: Option<RegexSet>,
    pub tls: Option<TlsAcceptor>,
    /// `[fleet]`, compiled (the password read); none when limits are this host's own.
    pub fleet: Option<crate::fleet::FleetSettings>,
}

impl State {
    /// `previous` (on reload) lends its rate limiters and concurrency counts where they apply
    /// unchanged, so a reload resets no budget.
    pub fn build(config: &ProxyConfig, settings: Settings, previous: Option<&State>) -> State {
        let stored = settings.keys;
        let rate = &config.rate;
        let limits_with = |share: u32, previous: Option<&RateLimits>| {
            let part = |n: u32| if n == 0 { 0 } else { (n / share).max(1) };
            RateLimits::new(
                AddressRule::new(
                    part(rate.per_ip_rpm),
                    part(rate.per_ip_burst),
                    rate.ipv6_prefix,
                    rate.max_addresses,
                ),
                stored.iter().map(|key| {
                    let rpm = part(key.rpm.unwrap_or(rate.per_key_rpm));
                    (
                        key.name.clone(),
                        quota(rpm, part(rate.per_key_burst).min(rpm.max(1))),
                    )
                }),
                previous,
            )
        };
        let limits = limits_with(1, previous.map(|p| &p.rate));
        let fleet_share = settings
            .fleet
            .as_ref()
            .map(|fleet| fleet.expected_instances)
            .filter(|n| *n > 1)
            .map(|n| {
                let kept = previous.and_then(|p| p.fleet_share.as_ref());
                (n, limits_with(n, kept.map(|(_, limits)| limits)))
            });
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
        let content = &config.content;
        let limits_config = &config.limits;
        let timeouts = &config.timeouts;
        let tokens = &config.rollout_tokens;
        State {
            upstream: settings.upstream,
            routes: settings.routes,
            upstream_auth: settings.upstream_auth,
            keys: KeyStore::new(stored, settings.rollout_keys, config.body.caps),
            admin_keys,
            rate: limits,
            concurrency,
            rollouts: RolloutLimits::new(
                tokens.rpm,
                tokens.burst,
                tokens.concurrency,
                previous.map(|p| &p.rollouts),
            ),
            header_limits: HeaderLimits {
                max_headers: limits_config.max_headers,
                max_value_bytes: limits_config.max_header_value_bytes,
                max_total_bytes: limits_config.max_header_bytes,
            },
            reserved: settings.reserved,
            custom_key_header: settings.custom_key_header,
            upstream_allow: settings.upstream_allow,
            response_allow: ResponseAllow::new(
                config.headers.response_allow.iter().map(String::as_str),
            ),
            content: ContentRules {
                max_messages: content.max_messages,
                max_message_chars: content.max_message_chars,
                deny: settings.deny,
            },
            media: MediaPolicy {
                allow_urls: config.body.allow_media_urls,
                allow_data: config.body.allow_data_urls,
            },
            tls: settings.tls,
            max_body_bytes: limits_config.max_body_bytes,
            body_per_route: limits_config.body_per_route.clone(),
            max_path_bytes: limits_config.max_path_bytes,
            max_query_bytes: limits_config.max_query_bytes,
            max_json_depth: limits_config.max_json_depth,
            header_read: Duration::from_secs(timeouts.header_read_secs),
            body_timeout: Duration::from_secs(timeouts.body_secs),
            upstream_timeout: Duration::from_secs(timeouts.upstream_response_secs),
            max_upstream_connections: limits_config.max_upstream_connections,
            per_key_rpm: rate.per_key_rpm,
            per_key_burst: rate.per_key_burst,
            per_ip: AddressRule::new(
                rate.per_ip_rpm,
                rate.per_ip_burst,
                rate.ipv6_prefix,
                rate.max_addresses,
            ),
            source_caps: SourceCaps {
                open: limits_config.max_connections_per_source,
                pending: limits_config.max_pending_heads_per_source,
            },
            write_stall: Duration::from_secs(timeouts.write_stall_secs),
            pricing: super::budget::Pricing::new(&config.pricing),
            default_max_tokens: config.usage.default_max_tokens,
            metering: config.usage.enabled,
            spike: (config.usage.spike.floor > 0).then_some(super::budget::ledger::SpikeRule {
                floor: config.usage.spike.floor,
                factor: config.usage.spike.factor,
                suspend: config.usage.spike.action == crate::config::proxy::SpikeAction::Suspend,
            }),
            fleet_share,
        }
    }

    /// The state `config` compiles to, for tests.
    #[cfg(test)]
    pub fn for_tests(config: &ProxyConfig) -> State {
        let settings = crate::config::compile::compile_proxy_for_tests(config);
        State::build(config, settings, None)
    }
}

impl State {
    /// The per-key rate of `key` (rpm, burst), as the fleet counts it; none when off.
    pub fn key_rate(&self, rpm: Option<u32>) -> Option<(u32, u32)> {
        let rpm = rpm.unwrap_or(self.per_key_rpm);
        (rpm > 0).then(|| (rpm, self.per_key_burst.min(rpm).max(1)))
    }

    /// Each key's policy, for the ledger's reports.
    pub fn policies(&self) -> Vec<(Arc<str>, super::budget::policy::Policy)> {
        self.keys.policies()
    }

    /// The body limit of `route`: its override, or the general one.
    pub fn body_limit(&self, route: &str) -> u64 {
        self.body_per_route
            .get(route)
            .copied()
            .unwrap_or(self.max_body_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds() {
        let state = State::for_tests(&ProxyConfig::default());
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
            upstream_allow: Vec::new(),
            caps: Default::default(),
            ..crate::config::proxy::KeyEntry::new("", "")
        };
        let config = ProxyConfig {
            keys: vec![key("slow", Some(2)), key("default", None)],
            ..ProxyConfig::default()
        };
        let state = State::for_tests(&config);
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
        let state = State::for_tests(&config);
        for (route, limit) in [
            ("embeddings", 8 << 20),
            ("chat/completions", 2 << 20),
            ("admin", 2 << 20),
        ] {
            assert_eq!(state.body_limit(route), limit, "{route}");
        }
    }
}
