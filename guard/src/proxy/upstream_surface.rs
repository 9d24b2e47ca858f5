//! What the upstream (a LiteLLM proxy) acts on, beyond the OpenAI request: the request headers,
//! query parameters and body fields that change who LiteLLM thinks the caller is, what it logs,
//! where it routes and connects, and which guardrails run; and the response headers it writes.
//! The request layers (`layers::auth`, `layers::upstream_controls`, `layers::query`, `forward`)
//! and the response filter (`response_headers`) take their lists from here, so the guard's idea
//! of its upstream lives in one place.
//!
//! Read from LiteLLM **1.108.7** (`pip show litellm` in the test venv), in
//! `types/proxy/auth/special_headers.py` (`SpecialHeaders`), `proxy/auth/user_api_key_auth.py`
//! (`get_api_key`, `get_api_key_from_custom_header`), `proxy/auth/auth_utils.py`
//! (`_BANNED_REQUEST_BODY_PARAMS`, `_NESTED_CONFIG_KEYS`, `_NESTED_METADATA_KEYS`),
//! `proxy/litellm_pre_call_utils.py` (the `x-litellm-*` readers, `_UNTRUSTED_METADATA_CONTROL_FIELDS`,
//! `get_openai_org_id_from_headers`, `traceparent`/`baggage`), `constants.py`
//! (`TYPESAFE_DANGER_ZONE_HEADER_PREFIX`) and `proxy/common_request_processing.py` (the response
//! headers). The test at the bottom re-reads the installed source and fails when it names a
//! credential header that [`CREDENTIAL_HEADERS`] lacks.
//!
//! Header names are lower-case. `layers::body_fields` refuses the body fields of
//! [`body::is_refused`] and caps [`body`]'s cost fields; the other body lists are for the record
//! (see docs/threats.md).

/// The LiteLLM release these lists were read from.
#[cfg_attr(not(test), allow(dead_code))]
pub const LITELLM_VERSION: &str = "1.108.7";

// ---- Credentials ------------------------------------------------------------------------------

/// Headers LiteLLM accepts a key in (`SpecialHeaders.litellm_credential_header_names`), in the
/// order `get_api_key` tries them: `x-litellm-api-key` wins over `Authorization`, so a client copy
/// of it would replace the injected master key. Plus `x-mcp-auth`, the MCP servers' credential.
/// The operator's `general_settings.litellm_key_header_name` comes on top, from
/// `proxy.upstream_custom_key_header`. Cookies (`token`, SSO state) authenticate only LiteLLM's UI,
/// SSO and MCP management routes, which `layers::path` keeps closed.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "x-litellm-api-key",
    "authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "x-mcp-auth",
];

// ---- Identity, attribution and billing ----------------------------------------------------------

/// Headers that tag, attribute or bill a request (spend logs, sessions, agents, tags, the OpenAI
/// organization LiteLLM forwards when `forward_openai_org_id` is on). LiteLLM's configurable
/// `user_header_name` / `user_header_mappings` belong here too; name them in
/// `proxy.headers.reserved`.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-litellm-tags",
    "x-litellm-spend-logs-metadata",
    "x-litellm-agent-id",
    "x-litellm-session-id",
    "x-litellm-trace-id",
    "x-litellm-team-id",
    "x-session-id",
    "x-claude-code-session-id",
    "x-claude-code-agent-id",
    "openai-organization",
    "x-mcp-client",
];

// ---- Logging and callbacks ----------------------------------------------------------------------

/// Headers that change what LiteLLM logs or which trace a call joins.
pub const LOGGING_HEADERS: &[&str] = &[
    "litellm-disable-message-redaction",
    "litellm-enable-message-redaction",
    "traceparent",
    "baggage",
];

// ---- Routing, retries and fallbacks -------------------------------------------------------------

/// Headers that change timeouts, retries and priority.
pub const ROUTING_HEADERS: &[&str] = &[
    "x-litellm-timeout",
    "x-litellm-stream-timeout",
    "x-litellm-keepalive-seconds",
    "x-litellm-num-retries",
    "x-litellm-priority",
];

// ---- Outbound destination -----------------------------------------------------------------------

/// Headers LiteLLM copies into the outbound call: `typesafe-danger-zone-*` and `anthropic-beta`
/// always, any other `x-*` when `forward_client_headers_to_llm_api` is on (the guard cannot remove
/// every `x-*`; see docs/threats.md).
pub const OUTBOUND_HEADERS: &[&str] = &["anthropic-beta"];
pub const OUTBOUND_HEADER_PREFIXES: &[&str] = &["typesafe-danger-zone-"];

// ---- Guardrails ---------------------------------------------------------------------------------

/// Headers that pick MCP servers and access groups (what tools a call may reach).
pub const GUARDRAIL_HEADERS: &[&str] = &["x-mcp-servers", "x-mcp-access-groups"];

// ---- Body fields and query parameters, by effect ------------------------------------------------

/// `layers::body_fields` refuses the credential, outbound, logging, deployment and billing fields
/// (top level and inside [`body::NESTED_CONTAINERS`]) and caps the cost fields. The identity,
/// routing and guardrail lists are for the record: the guard does not act on them.
#[allow(dead_code)]
pub mod body {
    /// Body fields that carry or select credentials for the outbound call.
    pub const CREDENTIAL_BODY_FIELDS: &[&str] = &[
        "api_key",
        "user_config",
        "aws_web_identity_token",
        "aws_role_name",
        "aws_profile_name",
        "aws_session_name",
        "aws_external_id",
        "aws_session_tags",
        "vertex_credentials",
        "vertex_ai_credentials",
        "azure_ad_token",
        "tenant_id",
        "client_id",
        "client_secret",
        "azure_username",
        "azure_password",
        "azure_scope",
        "user_provider_credentials",
        "github_copilot_auth_type",
        "github_copilot_user_session",
    ];

    /// Body fields that attribute or bill a request.
    pub const IDENTITY_BODY_FIELDS: &[&str] = &[
        "user",
        "metadata",
        "litellm_metadata",
        "tags",
        "spend_logs_metadata",
        "team_id",
        "fireworks_forward_user_id",
    ];

    /// Body fields that add callbacks, redirect logging hosts or turn logging off.
    pub const LOGGING_BODY_FIELDS: &[&str] = &[
        "callbacks",
        "success_callback",
        "failure_callback",
        "service_callback",
        "litellm_disabled_callbacks",
        "no-log",
        "turn_off_message_logging",
        "langfuse_host",
        "langfuse_public_key",
        "langfuse_secret_key",
        "langsmith_api_key",
        "langsmith_base_url",
        "posthog_api_url",
        // `_build_banned_observability_params()` (auth_utils.py): hosts, keys and projects of
        // the logging integrations.
        "arize_api_key",
        "arize_space_id",
        "arize_space_key",
        "arize_error_sampling_rate",
        "arize_success_sampling_rate",
        "braintrust_api_key",
        "braintrust_host",
        "braintrust_project",
        "dd_agent_host",
        "dd_agent_port",
        "dd_api_key",
        "dd_site",
        "gcs_bucket_name",
        "gcs_path_service_account",
        "humanloop_api_key",
        "langfuse_environment",
        "langfuse_secret",
        "langsmith_project",
        "langsmith_tenant_id",
        "lunary_public_key",
        "newrelic_api_key",
        "newrelic_region",
        "posthog_api_key",
        "posthog_host",
        "signoz_ingestion_endpoint",
        "signoz_ingestion_key",
        "slack_webhook_url",
        "user_api_key_auth_metadata",
        "wandb_api_key",
        "weave_project_id",
    ];

    /// Body fields that pick deployments, retry, fall back, or mock the call.
    pub const ROUTING_BODY_FIELDS: &[&str] = &[
        "model_list",
        "num_retries",
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
        "max_retries",
        "timeout",
        "priority",
        "mock_response",
        "mock_testing_fallbacks",
    ];

    /// Body fields that change where LiteLLM connects (`_BANNED_REQUEST_BODY_PARAMS`, endpoint part),
    /// and the nested configs spread into the outbound call.
    pub const OUTBOUND_BODY_FIELDS: &[&str] = &[
        "api_base",
        "base_url",
        "api_version",
        "extra_headers",
        "extra_body",
        "litellm_embedding_config",
        "aws_sts_endpoint",
        "aws_bedrock_runtime_endpoint",
        "aws_bedrock_project_id",
        "workspace_id",
        "aws_workspace_id",
        "anthropic_workspace_id",
        "sagemaker_base_url",
        "deployment_url",
        "nvcf_function_id",
        "use_ssl",
        "anthropic-workspace-id",
        "bedrock_tags",
        "agentcore_runtime_session_id",
        "s3_endpoint_url",
        "rust",
        "fireworks_forward_user_id",
        // From `completion()`'s kwargs (main.py): a provider, deployment, organization, client
        // or header set chosen per request.
        "custom_llm_provider",
        "deployment_id",
        "organization",
        "azure_ad_token_provider",
        "headers",
        "provider_specific_header",
        "gigachat_auth_url",
        "gigachat_access_token",
        "ssl_verify",
        "use_litellm_proxy",
        "client",
    ];

    /// Per-request deployment and router configs (`completion(model_list=...)`, router settings).
    pub const DEPLOYMENT_BODY_FIELDS: &[&str] = &["model_list", "router_settings", "model_info"];

    /// Per-request prices (`CustomPricingLiteLLMParams`, some 200 fields): they rewrite what
    /// spend tracking bills. Every name containing [`PRICE_MARKERS`] is one, plus these.
    pub const BILLING_BODY_FIELDS: &[&str] = &["tiered_pricing", "output_vector_size"];
    pub const PRICE_MARKERS: &[&str] = &["cost_per_", "_token_cost", "uplift_multiplier"];

    /// Dicts LiteLLM reads the same fields from (`_NESTED_METADATA_KEYS`, `_NESTED_CONFIG_KEYS`).
    pub const NESTED_CONTAINERS: &[&str] = &[
        "metadata",
        "litellm_metadata",
        "extra_body",
        "litellm_embedding_config",
    ];

    /// Whether a body field (top level or nested) is refused: it redirects the outbound call,
    /// swaps its credentials, redirects logging or rewrites billing.
    pub fn is_refused(name: &str) -> bool {
        [
            CREDENTIAL_BODY_FIELDS,
            OUTBOUND_BODY_FIELDS,
            LOGGING_BODY_FIELDS,
            DEPLOYMENT_BODY_FIELDS,
            BILLING_BODY_FIELDS,
        ]
        .iter()
        .any(|list| list.contains(&name))
            || PRICE_MARKERS.iter().any(|marker| name.contains(marker))
    }

    /// Cost fields, by the cap (`proxy.body.caps`) that bounds them.
    pub const N_FIELDS: &[&str] = &["n", "best_of"];
    pub const TOKEN_FIELDS: &[&str] = &["max_tokens", "max_completion_tokens", "max_output_tokens"];
    pub const RETRY_FIELDS: &[&str] = &["num_retries", "max_retries"];
    pub const FALLBACK_FIELDS: &[&str] = &[
        "fallbacks",
        "context_window_fallbacks",
        "content_policy_fallbacks",
    ];

    /// Body (and `metadata`) fields that turn guardrails off or forge their verdicts
    /// (`_UNTRUSTED_METADATA_CONTROL_FIELDS`).
    pub const GUARDRAIL_BODY_FIELDS: &[&str] = &[
        "guardrails",
        "disable_global_guardrails",
        "disable_global_guardrail",
        "opted_out_global_guardrails",
        "applied_guardrails",
        "applied_policies",
        "pillar_response_headers",
        "pillar_flagged",
    ];

    /// Query parameters LiteLLM reads a key from: `key` on the Google generate-content routes,
    /// which `layers::path`'s route allow-list does not open (and the client's own key in any
    /// query is refused by `layers::key_leak`).
    pub const CREDENTIAL_QUERY: &[&str] = &["key"];
}

// ---- Query parameters, per route ---------------------------------------------------------------

// The query allow-list of each route is in its route table entry (`proxy::routes`, with why each
// built-in list is what it is): one source for routes and their parameters.

// ---- Profiles -----------------------------------------------------------------------------------

/// agent-lightning 1.0's server, read from **1.0.2** (`agentlightning/server/app.py`
/// `_build_auth_dependency`): it takes its key as `Authorization: Bearer KEY` or `x-api-key: KEY`
/// on every route but `GET /healthz`. Both are in [`CREDENTIAL_HEADERS`], so a client copy never
/// reaches it; the injected upstream key goes as `Authorization: Bearer`, which it accepts. It
/// forwards no client header to its model server (`server/proxy.py` sends only
/// `content-type`), and it overwrites `model` and `temperature` in the body it forwards.
#[cfg_attr(not(test), allow(dead_code))]
pub const AGENT_LIGHTNING_VERSION: &str = "1.0.2";
#[cfg_attr(not(test), allow(dead_code))]
pub const AGENT_LIGHTNING_CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key"];

/// What each `proxy.upstream_kind` strips and refuses. The three share one surface, the lists
/// above, on purpose:
/// - `litellm`: the lists are LiteLLM's own.
/// - `agent-lightning`: 0.3's proxy *is* LiteLLM's app, and the guard cannot tell 0.3 from 1.0 by
///   the request, so LiteLLM's lists hold; 1.0 reads its key from
///   [`AGENT_LIGHTNING_CREDENTIAL_HEADERS`], a subset of [`CREDENTIAL_HEADERS`], and acts on no
///   other header, so removing LiteLLM's control headers costs it nothing.
/// - `openai`: an OpenAI-compatible server reads `Authorization` (Azure: `api-key`), both listed.
///   Behind it there is often a LiteLLM or a gateway of the same family, and a header it ignores
///   loses nothing by being removed, so the control family is removed too; the body fields that
///   redirect or bill LiteLLM's calls are refused for the same reason.
///
/// What differs per profile is the route table (`proxy::routes`) and the defaults of the limits
/// (`config::profile`).
#[cfg_attr(not(test), allow(dead_code))]
pub fn credential_headers(kind: crate::config::proxy::UpstreamKind) -> &'static [&'static str] {
    let _ = kind;
    CREDENTIAL_HEADERS
}

// ---- The whole control family -------------------------------------------------------------------

/// Prefixes of LiteLLM's control families: every header under them is removed from requests
/// unless `proxy.headers.upstream_allow` names it.
pub const CONTROL_HEADER_PREFIXES: &[&str] = &["x-litellm-", "litellm-", "x-mcp-"];

/// Every named control header (all groups but credentials, which are always removed).
pub fn control_headers() -> impl Iterator<Item = &'static str> + Clone {
    IDENTITY_HEADERS
        .iter()
        .chain(LOGGING_HEADERS)
        .chain(ROUTING_HEADERS)
        .chain(OUTBOUND_HEADERS)
        .chain(GUARDRAIL_HEADERS)
        .copied()
}

/// Whether `name` (lower-case) is one of LiteLLM's control headers.
pub fn is_control_header(name: &str) -> bool {
    control_headers().any(|known| known == name)
        || CONTROL_HEADER_PREFIXES
            .iter()
            .chain(OUTBOUND_HEADER_PREFIXES)
            .any(|prefix| name.starts_with(prefix))
}

// ---- Client address -----------------------------------------------------------------------------

/// Headers that claim the client's address, in every spelling proxies and CDNs use. LiteLLM reads
/// `x-forwarded-for` for IP allow-lists (`use_x_forwarded_for`); the rest reach its logs and any
/// callback. The guard removes them all and sets `x-forwarded-for` and `x-forwarded-proto` itself.
pub const CLIENT_IP_HEADERS: &[&str] = &[
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "akamai-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-envoy-external-address",
    "x-appengine-user-ip",
    "x-azure-clientip",
    "x-azure-socketip",
    "wl-proxy-client-ip",
    "proxy-client-ip",
];

/// Every `x-forwarded-*` (`-for`, `-host`, `-proto`, `-port`, `-server`, `-prefix`, ...).
pub const CLIENT_IP_PREFIX: &str = "x-forwarded-";

pub fn is_client_ip_header(name: &str) -> bool {
    name.starts_with(CLIENT_IP_PREFIX) || CLIENT_IP_HEADERS.contains(&name)
}

// ---- Responses ----------------------------------------------------------------------------------

/// The response headers let through by default (`*` at the end matches a prefix): what SDKs read.
/// Everything else is dropped, among it LiteLLM's `x-litellm-*` (key spend, budget and limits,
/// model id, api base, region, cost, timings, version), its raw `llm_provider-*` copies of the
/// provider's headers (with `openai-organization`), and `access-control-allow-origin: *`.
pub const RESPONSE_ALLOW_DEFAULT: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "cache-control",
    "date",
    "retry-after",
    "retry-after-ms",
    "x-request-id",
    "request-id",
    "x-ratelimit-*",
    "anthropic-ratelimit-*",
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The installed LiteLLM package, or why there is none.
    fn litellm_dir() -> Result<PathBuf, String> {
        let venv = std::env::var_os("PROXYGUARD_VENV")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/proxyguard/venv"))
            })
            .ok_or("neither PROXYGUARD_VENV nor HOME is set")?;
        let lib = venv.join("lib");
        let entries = std::fs::read_dir(&lib)
            .map_err(|err| format!("no venv at {}: {err}", venv.display()))?;
        entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path().join("site-packages/litellm"))
            .find(|dir| dir.is_dir())
            .ok_or_else(|| format!("no litellm package under {}", lib.display()))
    }

    /// Every string literal of `text` that is assigned in `class SpecialHeaders` or passed as an
    /// `APIKeyHeader(name="...")`.
    fn named_headers(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut in_class = false;
        let mut in_key_header = false;
        for line in text.lines() {
            if line.contains("APIKeyHeader(") {
                in_key_header = true;
            }
            if line.starts_with("class ") {
                in_class = line.starts_with("class SpecialHeaders");
                continue;
            }
            let trimmed = line.trim();
            let literal = |s: &str| {
                let s = s.trim().trim_end_matches(',');
                (s.len() >= 2 && s.starts_with('"') && s.ends_with('"'))
                    .then(|| s[1..s.len() - 1].to_ascii_lowercase())
            };
            if in_class && !line.starts_with(' ') && !trimmed.is_empty() {
                in_class = false;
            }
            if in_class {
                if let Some((_, value)) = trimmed.split_once(" = ") {
                    names.extend(literal(value));
                }
            }
            if in_key_header {
                if let Some(value) = trimmed.strip_prefix("name=") {
                    names.extend(literal(value));
                }
                in_key_header = !trimmed.starts_with(')');
            }
        }
        names
    }

    #[test]
    fn every_credential_header_litellm_names_is_listed() {
        let dir = match litellm_dir() {
            Ok(dir) => dir,
            Err(why) => {
                let pointed = std::env::var_os("PROXYGUARD_VENV").is_some();
                if pointed || std::env::var_os("CI").is_some() {
                    panic!("the LiteLLM source to check against is missing: {why}");
                }
                eprintln!("SKIPPED: {why} (set PROXYGUARD_VENV; CI fails here)");
                return;
            }
        };
        let read = |rel: &str| {
            std::fs::read_to_string(dir.join(rel))
                .unwrap_or_else(|err| panic!("read {}: {err}", dir.join(rel).display()))
        };
        let mut named = named_headers(&read("types/proxy/auth/special_headers.py"));
        named.extend(named_headers(&read("proxy/auth/user_api_key_auth.py")));
        assert!(
            named.iter().any(|n| n == "x-litellm-api-key"),
            "the reader found no SpecialHeaders in {}; LiteLLM moved them",
            dir.display()
        );
        let known =
            |name: &str| CREDENTIAL_HEADERS.contains(&name) || GUARDRAIL_HEADERS.contains(&name);
        let missing: Vec<&String> = named.iter().filter(|name| !known(name)).collect();
        assert!(
            missing.is_empty(),
            "LiteLLM at {} accepts headers upstream_surface.rs does not list: {missing:?}",
            dir.display()
        );
        let metadata = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|name| name.starts_with("litellm-") && name.ends_with(".dist-info"));
        if metadata.as_deref() != Some(&format!("litellm-{LITELLM_VERSION}.dist-info")) {
            eprintln!(
                "note: the lists were read from LiteLLM {LITELLM_VERSION}; installed: {metadata:?}"
            );
        }
    }

    /// LiteLLM's own list of banned body fields (`_BANNED_REQUEST_BODY_PARAMS`, evaluated by the
    /// venv's Python): every one must be refused by the guard too.
    #[test]
    fn every_body_field_litellm_bans_is_refused() {
        let dir = match litellm_dir() {
            Ok(dir) => dir,
            Err(why) => {
                if std::env::var_os("PROXYGUARD_VENV").is_some() || std::env::var_os("CI").is_some()
                {
                    panic!("the LiteLLM source to check against is missing: {why}");
                }
                eprintln!("SKIPPED: {why} (set PROXYGUARD_VENV; CI fails here)");
                return;
            }
        };
        // site-packages/litellm -> lib/pythonX/site-packages -> venv
        let venv = dir.ancestors().nth(4).expect("venv above site-packages");
        let output = std::process::Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "from litellm.proxy.auth import auth_utils as a\nprint('\\n'.join(a._BANNED_REQUEST_BODY_PARAMS))",
            ])
            .output()
            .expect("run the venv's python");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let banned: Vec<&str> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            banned.contains(&"api_base"),
            "LiteLLM printed no list: {stdout}"
        );
        let missing: Vec<&&str> = banned
            .iter()
            .filter(|name| !body::is_refused(name))
            .collect();
        assert!(
            missing.is_empty(),
            "LiteLLM bans body fields upstream_surface::body does not refuse: {missing:?}"
        );
    }

    #[test]
    fn every_profile_strips_the_headers_its_upstream_reads_a_key_from() {
        use crate::config::proxy::UpstreamKind;
        for name in AGENT_LIGHTNING_CREDENTIAL_HEADERS {
            assert!(
                credential_headers(UpstreamKind::AgentLightning).contains(name),
                "{name}"
            );
        }
        for name in ["authorization", "api-key"] {
            assert!(credential_headers(UpstreamKind::Openai).contains(&name));
        }
        assert_eq!(
            credential_headers(UpstreamKind::Litellm),
            CREDENTIAL_HEADERS
        );
    }

    /// agent-lightning 1.0's own auth code, when its source is on this machine: the headers it
    /// compares to its key are the ones listed.
    #[test]
    fn agent_lightning_reads_its_key_from_the_listed_headers() {
        let app = std::path::Path::new("/tmp/agl/v1/agentlightning/server/app.py");
        let Ok(text) = std::fs::read_to_string(app) else {
            eprintln!(
                "SKIPPED: no agent-lightning {AGENT_LIGHTNING_VERSION} source at {}",
                app.display()
            );
            return;
        };
        let auth = text
            .split("def _build_auth_dependency")
            .nth(1)
            .and_then(|rest| rest.split("\ndef ").next())
            .expect("app.py has _build_auth_dependency");
        let read: Vec<&str> = auth
            .split("request.headers.get(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(
            !read.is_empty(),
            "no header reads found in {}",
            app.display()
        );
        for name in &read {
            assert!(
                AGENT_LIGHTNING_CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str()),
                "agent-lightning reads a key from {name}, which the list lacks"
            );
        }
    }

    #[test]
    fn control_and_client_ip_families() {
        for (name, control) in [
            ("x-litellm-api-key", true),
            ("x-litellm-anything-new", true),
            ("litellm-disable-message-redaction", true),
            ("x-mcp-servers", true),
            ("typesafe-danger-zone-x", true),
            ("openai-organization", true),
            ("traceparent", true),
            ("x-request-id", false),
            ("x-stainless-lang", false),
            ("content-type", false),
        ] {
            assert_eq!(is_control_header(name), control, "{name}");
        }
        for (name, ip) in [
            ("x-forwarded-for", true),
            ("x-forwarded-port", true),
            ("true-client-ip", true),
            ("cf-connecting-ip", true),
            ("x-request-id", false),
        ] {
            assert_eq!(is_client_ip_header(name), ip, "{name}");
        }
    }
}
