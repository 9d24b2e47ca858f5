//! The provider gateway (issue 13, threat 19): proxyguard holds the LLM providers' keys in
//! root-only files and adds them to the guarded LLM proxy's outbound requests, so the LLM proxy
//! runs with no provider key at all.
//!
//! `config` is the `[providers]` section; `compile` builds it (part of the one config compiler);
//! `gateway` is the listener and forwarding; `connector` the verified TLS way out; `pool` each
//! worker's connections to the providers; `key` the key files; `migrate` what `check` prints to
//! move keys out of a LiteLLM deployment.

pub mod compile;
pub mod config;
mod connector;
pub mod gateway;
mod key;
pub mod migrate;
mod pool;

pub use compile::GatewaySettings;
pub use config::ProvidersSection;
pub use gateway::Gateway;

/// What `status` shows about the gateway. `kernel_guarded` says whether a kernel rule limits
/// who may connect to its port; without one, any local process could use the provider keys.
pub fn status_json(
    section: &ProvidersSection,
    listening: Option<std::net::SocketAddr>,
    kernel_guarded: bool,
) -> serde_json::Value {
    let names: Vec<&str> = section.routes.iter().map(|r| r.name.as_str()).collect();
    let access = if section.routes.is_empty() {
        "no providers configured; the gateway is not listening".to_owned()
    } else if kernel_guarded {
        "only the guarded service and proxyguard may connect (kernel rule)".to_owned()
    } else {
        "NOT GUARDED: no kernel rule limits who connects to the gateway's port, so any local process could use it (and the provider keys behind it)".to_owned()
    };
    serde_json::json!({
        "listen": listening.or(section.gateway_addr()),
        "provider_hosts": section.provider_hosts(),
        "providers": names,
        "kernel_guarded": kernel_guarded,
        "access": access,
    })
}
