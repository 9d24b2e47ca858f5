//! `[proxy]`: the authenticating L7 proxy in front of the LLM proxy (threats 1-5, 8-10, 14, 15).
//!
//! Every default is the secure one: loopback listeners, TLS required off loopback, admin routes of
//! the guarded proxy closed, limits on everything a client controls. `compile_proxy.rs` runs the
//! checks serde cannot express (the ones that read files too) while building the proxy's settings.

use std::{net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Off only for hosts that run the kernel half alone.
    pub enabled: bool,
    /// The front address clients use. Port 0 picks a free port (reported in the `ready` record).
    pub listen: SocketAddr,
    /// What the upstream is: it picks the route table, the upstream surface and the defaults of
    /// the limits a training load needs (`config::profile`).
    pub upstream_kind: UpstreamKind,
    /// Azure OpenAI-style routes (`/openai/deployments/{name}/chat/completions?api-version=...`)
    /// on top of the profile's table. Off by default.
    pub azure_routes: bool,
    /// Routes added to the profile's table (`[[proxy.routes]]`).
    pub routes: Vec<RouteEntry>,
    /// The guarded LLM proxy, `http://host:port`. It should itself listen on loopback only.
    pub upstream: String,
    /// A root-only file (mode 0600 or stricter) holding the upstream's own key, sent as
    /// `Authorization: Bearer`. Re-read on reload.
    pub upstream_key_file: Option<PathBuf>,
    /// The name of LiteLLM's custom key header (its `general_settings.litellm_key_header_name`),
    /// when it has one: removed from client requests like every other credential header.
    pub upstream_custom_key_header: Option<String>,
    /// Metrics (`/metrics`) and readiness (`/healthz`). Must be loopback.
    pub admin_listen: SocketAddr,
    /// Request workers (`crate::workers`): one thread and one current-thread runtime each, with
    /// its own `SO_REUSEPORT` socket on `listen` and on `providers.listen`. The control plane
    /// (kernel event readers, reloads) has a thread of its own. Read at start only.
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
    pub body: BodyConfig,
    pub admin_routes: AdminRoutesConfig,
    pub rollout_tokens: RolloutTokensConfig,
    /// Token and spend accounting (issue 14): state directory, reservations, the spike rule.
    pub usage: UsageConfig,
    /// Prices per model, for spend budgets.
    pub pricing: PricingConfig,
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
            upstream_kind: UpstreamKind::Litellm,
            azure_routes: false,
            routes: Vec::new(),
            upstream_key_file: None,
            upstream_custom_key_header: None,
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
            body: BodyConfig::default(),
            admin_routes: AdminRoutesConfig::default(),
            rollout_tokens: RolloutTokensConfig::default(),
            usage: UsageConfig::default(),
            pricing: PricingConfig::default(),
            // No keys: every request is refused until one is added. Fail closed.
            keys: Vec::new(),
        }
    }
}

/// The kind of upstream (`proxy.upstream_kind`, `config init --upstream-kind`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamKind {
    /// A LiteLLM proxy: OpenAI routes with or without `/v1`, `/v1/messages`, each optionally under
    /// `/rollout/{id}/attempt/{id}`, and LiteLLM's admin API.
    #[default]
    Litellm,
    /// agent-lightning: 0.3's LiteLLM-based proxy (the litellm table) and 1.0's server (its
    /// `/proxy/rollout/...` and `/api/rollouts/.../events` routes, its trainer API as admin routes).
    AgentLightning,
    /// A plain OpenAI-compatible server: the OpenAI routes only.
    Openai,
}

impl UpstreamKind {
    pub const ALL: &'static [UpstreamKind] = &[
        UpstreamKind::Litellm,
        UpstreamKind::AgentLightning,
        UpstreamKind::Openai,
    ];

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamKind::Litellm => "litellm",
            UpstreamKind::AgentLightning => "agent-lightning",
            UpstreamKind::Openai => "openai",
        }
    }
}

/// One `[[proxy.routes]]` entry: a route added to the profile's table. `proxy::routes` checks and
/// compiles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntry {
    /// The route's name: metrics group by its template, `limits.body_per_route` keys by this.
    pub name: String,
    /// The path template: literal segments and typed ones, `{rid:id}` (`[A-Za-z0-9_-]{1,128}`),
    /// `{model:name}` (the same and `.`), `{mode:train|val}` (one of the words), and a last `*`
    /// for any further segments.
    pub path: String,
    /// Methods it takes (`GET`, `POST`, ...; `*` for any).
    pub methods: Vec<String>,
    /// The body shape of its POST bodies (`chat`, `completions`, `embeddings`, `responses`,
    /// `anthropic-messages`, `moderations`, `agent-events`, `none`).
    #[serde(default = "RouteEntry::no_shape")]
    pub shape: String,
    /// The query parameter names it takes; none by default.
    #[serde(default)]
    pub query: Vec<String>,
    /// The `id` segments that name the rollout and its attempt: the route is attributed to them.
    pub rollout: Option<String>,
    pub attempt: Option<String>,
    /// An upstream management route: closed unless `admin_routes.keys` names the caller.
    #[serde(default)]
    pub admin: bool,
}

impl RouteEntry {
    fn no_shape() -> String {
        "none".into()
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
    /// Query strings longer than this get 400 `query`.
    pub max_query_bytes: usize,
    pub max_json_depth: usize,
    pub max_connections: usize,
    /// Open connections from one source: an IPv4 address, or an IPv6 /64 (one host's usual
    /// allocation, so rotating addresses inside it buys nothing). More are refused at once.
    /// Keep it below `max_connections`, or one source can take every slot.
    pub max_connections_per_source: usize,
    /// Connections from one source whose first request head has not yet arrived (slowloris).
    /// More are refused at once. Above `max_connections_per_source` it has no effect.
    pub max_pending_heads_per_source: usize,
    pub max_concurrent_per_key: usize,
    /// Requests in flight to the upstream at once (and so its connections); more wait their turn.
    pub max_upstream_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let profile = super::profile::defaults(UpstreamKind::Litellm);
        Self {
            // 2 MiB holds long chat histories; the unguarded proxy reads any size into memory.
            max_body_bytes: 2 * 1024 * 1024,
            body_per_route: Default::default(),
            // The header defaults answer threat 5 (unbounded header parsing upstream).
            max_headers: 100,
            max_header_value_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_path_bytes: 2048,
            // The inference routes take one short parameter at most; admin queries stay short too.
            max_query_bytes: 1024,
            // Real requests nest a handful of levels; deep nesting only costs parsers.
            max_json_depth: 32,
            max_connections: 1024,
            // A quarter of the global cap: one source cannot fill it, and a busy local client
            // (a trainer's parallel rollouts, an app server's pool) still fits.
            max_connections_per_source: 256,
            // Half the source's cap: a legitimate burst of new connections is pending only for
            // the moment before its heads are parsed; only stalled heads pile up.
            max_pending_heads_per_source: 128,
            // These two depend on the profile (`config::profile`).
            max_concurrent_per_key: profile.max_concurrent_per_key,
            max_upstream_connections: profile.max_upstream_connections,
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
    /// IPv6 clients are counted per prefix of this length (as `xdp.ipv6_prefix`): one host
    /// commonly owns a whole /64.
    pub ipv6_prefix: u8,
    /// The most client addresses (or IPv6 prefixes) the per-IP limit keeps state for; past it,
    /// new clients share one overflow budget and no active client is forgotten.
    pub max_addresses: usize,
}

impl Default for RateConfig {
    /// The litellm profile's; `config::profile` has every profile's.
    fn default() -> Self {
        let profile = super::profile::defaults(UpstreamKind::Litellm);
        Self {
            per_key_rpm: profile.per_key_rpm,
            per_key_burst: profile.per_key_burst,
            per_ip_rpm: profile.per_ip_rpm,
            per_ip_burst: profile.per_ip_burst,
            ipv6_prefix: 64,
            max_addresses: 100_000,
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
    /// A response whose client accepts no byte for this long is cut (the client stopped
    /// reading), releasing its key's concurrency permit and its upstream slot. Progress resets
    /// it, so a slow but steady reader is never cut.
    pub write_stall_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            header_read_secs: 10,
            body_secs: 30,
            upstream_response_secs: 600,
            drain_secs: 30,
            // nginx's send_timeout default.
            write_stall_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    /// Refused in addition to `x-rollout-id`, `x-attempt-id` and `x-sequence-id`, which are
    /// always refused (the upstream attributes requests by them).
    pub reserved: Vec<String>,
    /// LiteLLM control headers (`x-litellm-*` and the others it acts on) let through to the
    /// upstream for every key (a key's own `upstream_allow` adds more); all others are removed.
    /// Credential headers cannot be named.
    pub upstream_allow: Vec<String>,
    /// Response headers passed back to clients (`prefix*` matches a prefix); all others are
    /// dropped. Replaces the default list.
    pub response_allow: Vec<String>,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            reserved: Vec::new(),
            upstream_allow: Vec::new(),
            response_allow: crate::proxy::upstream_surface::RESPONSE_ALLOW_DEFAULT
                .iter()
                .map(|entry| entry.to_string())
                .collect(),
        }
    }
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

/// What a request body may ask of the upstream beyond the model call (issue 12): control fields
/// that redirect the call or swap its credentials are always refused; cost multipliers are capped;
/// media URLs are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BodyConfig {
    /// Media URLs in message parts (`image_url`, `file_url`, `audio_url`, ...): `https` to a
    /// public address only. Off refuses every one.
    pub allow_media_urls: bool,
    /// `data:` URLs (inline media, no outbound fetch).
    pub allow_data_urls: bool,
    /// The default caps; a key's `caps` overrides them by name.
    pub caps: Caps,
}

impl Default for BodyConfig {
    fn default() -> Self {
        Self {
            allow_media_urls: true,
            allow_data_urls: true,
            caps: Caps::default(),
        }
    }
}

/// Caps on the body fields that multiply a request's cost. 0 turns a cap off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Caps {
    /// `n` (completions per request) and `best_of` (completions generated, on `/completions`).
    pub n: u64,
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens`.
    pub max_tokens: u64,
    /// Models in a comma-separated `model` list (LiteLLM calls each one).
    pub models: u64,
    /// `num_retries`, `max_retries`.
    pub retries: u64,
    /// Entries of `fallbacks`, `context_window_fallbacks`, `content_policy_fallbacks`.
    pub fallbacks: u64,
    /// Inputs in one embeddings or moderations request (`input` array items; one string or one
    /// array of token ids is one input).
    pub inputs: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            n: 4,
            max_tokens: 32768,
            models: 1,
            retries: 2,
            fallbacks: 2,
            // OpenAI's own limit for one embeddings request.
            inputs: 2048,
        }
    }
}

impl Caps {
    pub const NAMES: &'static [&'static str] = &[
        "n",
        "max_tokens",
        "models",
        "retries",
        "fallbacks",
        "inputs",
    ];

    /// Sets the cap `name`; false when there is no such cap.
    pub fn set(&mut self, name: &str, value: u64) -> bool {
        let slot = match name {
            "n" => &mut self.n,
            "max_tokens" => &mut self.max_tokens,
            "models" => &mut self.models,
            "retries" => &mut self.retries,
            "fallbacks" => &mut self.fallbacks,
            "inputs" => &mut self.inputs,
            _ => return false,
        };
        *slot = value;
        true
    }
}

/// The guarded proxy's own admin routes (`/key/*`, `/user/*`, `/team/*`, `/model/*`, `/config/*`,
/// the UI). Closed unless opened to named keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminRoutesConfig {
    /// Names of keys (from `[[proxy.keys]]`) that may use the admin routes.
    pub keys: Vec<String>,
}

/// Rollout-scoped tokens (docs/rollout-tokens.md): signed, stateless credentials bound to one
/// rollout (and optionally one attempt), each rollout with its own limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutTokensConfig {
    /// The signing-key file (mode 0600, `KEY_ID HEX_KEY` per line; the first signs). Unset: tokens
    /// are refused. `keys mint` creates it and sets this on first use.
    pub key_file: Option<PathBuf>,
    /// Requests per minute per rollout; 0 turns it off.
    pub rpm: u32,
    pub burst: u32,
    /// Requests in flight per rollout; 0 turns it off.
    pub concurrency: usize,
}

impl Default for RolloutTokensConfig {
    fn default() -> Self {
        Self {
            key_file: None,
            // The per-key rate, per rollout; 32 in flight leaves one agent's loop room for
            // parallel tool calls while a runaway rollout cannot take the upstream's workers.
            rpm: 600,
            burst: 60,
            concurrency: 32,
        }
    }
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
    /// LiteLLM control headers this key may send upstream, on top of
    /// `proxy.headers.upstream_allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_allow: Vec<String>,
    /// Overrides of `proxy.body.caps` for this key, by name (`caps = { n = 8 }`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub caps: std::collections::BTreeMap<String, u64>,
    /// Tokens (in and out) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens (in and out) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Input (prompt) tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens_per_day: Option<u64>,
    /// Output (completion) tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_day: Option<u64>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Spend per UTC day and per UTC month, in US dollars, at `proxy.pricing`'s prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_day: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_month: Option<f64>,
    /// Models this key may call (globs: `*` any run, `?` one character); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Source addresses this key may come from (CIDRs); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<String>,
}

impl KeyEntry {
    /// A key with a name and hash and nothing else set.
    #[cfg(test)]
    pub fn new(name: &str, sha256: &str) -> KeyEntry {
        KeyEntry {
            name: name.into(),
            sha256: sha256.into(),
            created: None,
            expires: None,
            rpm: None,
            upstream_allow: Vec::new(),
            caps: Default::default(),
            tpm: None,
            tokens_per_day: None,
            input_tokens_per_day: None,
            output_tokens_per_day: None,
            requests_per_day: None,
            usd_per_day: None,
            usd_per_month: None,
            models: Vec::new(),
            from: Vec::new(),
        }
    }
}

/// `[proxy.usage]`: token and spend accounting (issue 14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Reads answers for their usage and enforces the token, request and spend budgets. Off, no
    /// answer is read, no `include_usage` is added, and only the model and source lists of the
    /// keys apply (for measuring what accounting costs).
    pub enabled: bool,
    /// Where the usage counters and suspensions are kept (`usage.json`). Unset: `$STATE_DIRECTORY`
    /// (systemd's StateDirectory, `/var/lib/proxyguard` in the unit); neither: kept in memory only,
    /// so a restart forgets what was spent.
    pub state_dir: Option<PathBuf>,
    /// How often the counters are written, in seconds: the most a kill -9 can lose.
    pub persist_secs: u64,
    /// The output tokens reserved for a request that names no `max_tokens`.
    pub default_max_tokens: u64,
    pub spike: SpikeConfig,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            state_dir: None,
            persist_secs: 2,
            default_max_tokens: 4096,
            spike: SpikeConfig::default(),
        }
    }
}

/// A key's tokens in the last 5 minutes above `factor` times its trailing average (the 5-minute
/// windows of the hour before) and above `floor` raise `usage_spike`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpikeConfig {
    /// Tokens in 5 minutes below which no spike is raised; 0 turns the rule off.
    pub floor: u64,
    pub factor: f64,
    /// `alert` reports the spike; `suspend` also refuses the key (403 `key_suspended`) until
    /// `proxyguard keys resume NAME`.
    pub action: SpikeAction,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self {
            floor: 0,
            factor: 10.0,
            action: SpikeAction::Alert,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpikeAction {
    #[default]
    Alert,
    Suspend,
}

/// `[proxy.pricing]`: US dollars per million tokens, by model name as the request names it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// What a model missing from `models` costs: `default` charges `default_price`; `refuse`
    /// refuses it (403 `model_not_priced`) for keys with a spend budget.
    pub unknown: UnknownModel,
    pub default_price: Price,
    pub models: std::collections::BTreeMap<String, Price>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownModel {
    #[default]
    Default,
    Refuse,
}

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// Reserved header names that no config can un-reserve.
pub const ALWAYS_RESERVED: &[&str] = &["x-rollout-id", "x-attempt-id", "x-sequence-id"];
