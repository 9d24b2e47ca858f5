//! `[providers]`: the provider gateway's listener and its `[[providers.routes]]`, one per
//! provider. Each route says where requests go (`base_url`), which key file holds the real key,
//! and how the key is sent (`auth`). The kernel side takes the gateway's address from
//! [`ProvidersSection::gateway_addr`] and the providers' hosts from
//! [`ProvidersSection::provider_hosts`].

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// The gateway's default address: loopback only, beside LiteLLM's 4000 and the front's 8080.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvidersSection {
    /// Loopback only; the compiler refuses anything else.
    pub listen: SocketAddr,
    /// Seconds to open a connection to a provider (TCP and TLS).
    pub connect_timeout_secs: u64,
    /// Seconds to wait for a provider's response head (a long completion's first byte).
    pub response_timeout_secs: u64,
    /// Connections the gateway serves at once.
    pub max_connections: usize,
    pub routes: Vec<ProviderRoute>,
}

impl Default for ProvidersSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid default address"),
            connect_timeout_secs: 10,
            response_timeout_secs: 600,
            max_connections: 1024,
            routes: Vec::new(),
        }
    }
}

impl ProvidersSection {
    /// The address the gateway listens on, when it runs (some provider is configured): the one
    /// port the kernel rule keeps for the guarded service and proxyguard.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        (!self.routes.is_empty()).then_some(self.listen)
    }

    /// Every provider's `(host, port)` from its `base_url`: where proxyguard itself connects.
    /// Entries whose URL does not parse are left out (the compiler reports them).
    pub fn provider_hosts(&self) -> Vec<(String, u16)> {
        let mut hosts: Vec<(String, u16)> = self
            .routes
            .iter()
            .filter_map(|route| {
                let uri: http::Uri = route.base_url.parse().ok()?;
                let host = uri.host()?.trim_matches(['[', ']']).to_owned();
                Some((host, uri.port_u16().unwrap_or(443)))
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderRoute {
    /// The first path segment: `http://LISTEN/NAME/REST` goes to `BASE_URL/REST`.
    pub name: String,
    /// `https://` only; a path here is kept in front of REST.
    pub base_url: String,
    /// The provider's key, alone on one line; owned by proxyguard's user, mode 0600 or stricter.
    /// `$CREDENTIALS_DIRECTORY/NAME` reads a systemd credential (`LoadCredential=`).
    pub key_file: PathBuf,
    #[serde(default)]
    pub auth: AuthScheme,
    /// Fixed headers added to every request, e.g. `{ "anthropic-version" = "2023-06-01" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An extra trust anchor (PEM) beside the system roots; empty for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Path prefixes (below NAME) that may be requested; empty allows every path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods that may be used.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "POST".into()]
}

/// How the real key is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthScheme {
    /// `Authorization: Bearer KEY` (OpenAI and most others).
    #[default]
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Bearer => "bearer",
            AuthScheme::XApiKey => "x-api-key",
            AuthScheme::ApiKey => "api-key",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_address_is_there_only_with_providers() {
        let mut section = ProvidersSection::default();
        assert_eq!(section.gateway_addr(), None);
        section.routes.push(ProviderRoute {
            name: "openai".into(),
            base_url: "https://api.openai.com/v1".into(),
            key_file: "/k".into(),
            auth: AuthScheme::Bearer,
            headers: BTreeMap::new(),
            ca_file: None,
            paths: Vec::new(),
            methods: default_methods(),
        });
        let mut second = section.routes[0].clone();
        second.base_url = "https://[::1]:8443".into();
        section.routes.push(second);
        assert_eq!(
            section.gateway_addr(),
            Some("127.0.0.1:8089".parse().unwrap())
        );
        assert_eq!(
            section.provider_hosts(),
            [("::1".to_owned(), 8443), ("api.openai.com".to_owned(), 443)]
        );
    }
}
