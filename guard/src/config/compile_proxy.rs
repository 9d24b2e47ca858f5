//! `[proxy]` compiled: every check serde cannot express (addresses, URLs, limits, regexes, and
//! the files it names; keys in `compile_keys`), done while building the typed settings the proxy
//! runs on.
//! A value is parsed once, here; the proxy never parses config text again.

use http::{uri::Authority, HeaderName};
use regex::RegexSet;

use super::{
    proxy::{ProxyConfig, ALWAYS_RESERVED},
    FieldError,
};
use crate::proxy::Settings;

/// The settings of an enabled `[proxy]`, or `None` when it is off or has problems; every problem
/// is appended to `errors` with its field path.
pub fn compile(config: &ProxyConfig, errors: &mut Vec<FieldError>) -> Option<Settings> {
    let before = errors.len();
    let settings = build(config, &mut |field, message| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    });
    settings.filter(|_| errors.len() == before && config.enabled)
}

/// Builds the settings, reporting every problem to `push(field, message)`. `None` when a
/// problem leaves a value unbuildable; more problems may have been reported either way.
fn build(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) -> Option<Settings> {
    if !config.enabled {
        return None;
    }
    let upstream = upstream(&config.upstream, push);
    if !(1..=128).contains(&config.rate.ipv6_prefix) {
        push(
            "proxy.rate.ipv6_prefix".into(),
            "must be between 1 and 128 (64 counts each /64 as one client)".into(),
        );
    }
    if config.rate.max_addresses < 1024 {
        push(
            "proxy.rate.max_addresses".into(),
            "must be at least 1024 (the per-IP table's bound; 100000 is the default)".into(),
        );
    }
    // Each part is built (and its problems reported) before any missing one ends the build.
    let upstream_auth = match &config.upstream_key_file {
        Some(path) => {
            super::compile_keys::read_secret_key(path, "proxy.upstream_key_file", push).map(Some)
        }
        None => Some(None),
    };
    let routes = crate::proxy::routes::RouteTable::compile(
        config.upstream_kind,
        config.azure_routes,
        &config.routes,
        push,
    );
    check_listeners_and_limits(config, routes.as_ref(), push);
    let tls = match &config.tls {
        Some(tls) => tls_acceptor(tls, push).map(Some),
        None => Some(None),
    };
    let reserved = reserved(config, push);
    let custom_key_header = match &config.upstream_custom_key_header {
        Some(name) => header_name(name, "proxy.upstream_custom_key_header", push).map(Some),
        None => Some(None),
    };
    let upstream_allow = upstream_allow(
        config,
        custom_key_header.as_ref().and_then(Option::as_ref),
        push,
    );
    for (i, entry) in config.headers.response_allow.iter().enumerate() {
        if !crate::proxy::ResponseAllow::entry_is_valid(entry) {
            push(
                format!("proxy.headers.response_allow[{i}]"),
                format!("`{entry}` is not a header name or a `prefix*` pattern (like \"x-ratelimit-*\")"),
            );
        }
    }
    let deny = deny_patterns(config, push);
    super::compile_keys::usage_and_pricing(config, push);
    let keys = super::compile_keys::keys(
        config,
        custom_key_header.as_ref().and_then(Option::as_ref),
        push,
    );
    let rollout_keys = match &config.rollout_tokens.key_file {
        Some(path) => match crate::proxy::rollout_token::SigningKeys::read(path) {
            Ok(keys) => Some(Some(keys)),
            Err(err) => {
                push("proxy.rollout_tokens.key_file".into(), err.to_string());
                None
            }
        },
        None => Some(None),
    };
    Some(Settings {
        upstream: upstream?,
        routes: std::sync::Arc::new(routes?),
        upstream_auth: upstream_auth?,
        keys: keys?,
        rollout_keys: rollout_keys?,
        reserved: reserved?,
        custom_key_header: custom_key_header?,
        upstream_allow: upstream_allow?,
        deny: deny?,
        tls: tls?,
        fleet: None,
    })
}

/// The TLS acceptor from the certificate and key files, read and checked now.
fn tls_acceptor(
    tls: &super::proxy::TlsConfig,
    push: &mut dyn FnMut(String, String),
) -> Option<tokio_rustls::TlsAcceptor> {
    let mut readable = true;
    for (field, path) in [("proxy.tls.cert", &tls.cert), ("proxy.tls.key", &tls.key)] {
        if !path.is_file() {
            push(
                field.into(),
                format!("{} is not a readable file", path.display()),
            );
            readable = false;
        }
    }
    if !readable {
        return None;
    }
    match crate::proxy::tls::acceptor(tls) {
        Ok(acceptor) => Some(acceptor),
        Err(err) => {
            let field = match &err {
                crate::proxy::ProxyError::Tls { path, .. } if path == &tls.key => "proxy.tls.key",
                _ => "proxy.tls.cert",
            };
            push(field.into(), err.to_string());
            None
        }
    }
}

fn upstream(text: &str, push: &mut dyn FnMut(String, String)) -> Option<Authority> {
    match text.parse::<http::Uri>() {
        // A port that is written must be one: the client would drop it and dial port 80.
        Ok(uri)
            if uri.scheme_str() == Some("http")
                && uri.authority().is_some_and(|authority| {
                    !authority.host().is_empty()
                        && (authority.port().is_some()
                            || authority.as_str().ends_with(authority.host()))
                }) =>
        {
            if uri.path() != "/" && !uri.path().is_empty() {
                push(
                    "proxy.upstream".into(),
                    "give only scheme, host and port, like \"http://127.0.0.1:4000\"".into(),
                );
                return None;
            }
            uri.authority().cloned()
        }
        _ => {
            push(
                "proxy.upstream".into(),
                "must be an http:// URL with a host and port, like \"http://127.0.0.1:4000\" (the guarded proxy listens on loopback, so TLS to it adds nothing)".into(),
            );
            None
        }
    }
}

/// `routes` is the active route table, when it compiled: `limits.body_per_route` keys are its
/// route names.
fn check_listeners_and_limits(
    config: &ProxyConfig,
    routes: Option<&crate::proxy::routes::RouteTable>,
    push: &mut dyn FnMut(String, String),
) {
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
        ("max_query_bytes", limits.max_query_bytes),
        ("max_json_depth", limits.max_json_depth),
        ("max_connections", limits.max_connections),
        (
            "max_connections_per_source",
            limits.max_connections_per_source,
        ),
        (
            "max_pending_heads_per_source",
            limits.max_pending_heads_per_source,
        ),
        ("max_concurrent_per_key", limits.max_concurrent_per_key),
        ("max_upstream_connections", limits.max_upstream_connections),
    ] {
        if value == 0 {
            push(format!("proxy.limits.{field}"), "must be at least 1".into());
        }
    }
    for (route, bytes) in &limits.body_per_route {
        let field = format!("proxy.limits.body_per_route.{route}");
        let names: Vec<&str> = routes
            .map(|table| table.names())
            .unwrap_or_default()
            .into_iter()
            .filter(|name| *name != "admin")
            .collect();
        if routes.is_some() && !names.contains(&route.as_str()) {
            push(
                field,
                format!(
                    "not a route name of the {} profile's table and proxy.routes; use one of {}",
                    config.upstream_kind.name(),
                    names.join(", ")
                ),
            );
        } else if *bytes == 0 {
            push(field, "must be at least 1".into());
        }
    }
    let timeouts = &config.timeouts;
    for (field, value) in [
        ("header_read_secs", timeouts.header_read_secs),
        ("body_secs", timeouts.body_secs),
        ("upstream_response_secs", timeouts.upstream_response_secs),
        ("write_stall_secs", timeouts.write_stall_secs),
    ] {
        if value == 0 {
            push(
                format!("proxy.timeouts.{field}"),
                "must be at least 1".into(),
            );
        }
    }
}

/// `name` as a lower-case header name, or a problem at `field`.
fn header_name(
    name: &str,
    field: &str,
    push: &mut dyn FnMut(String, String),
) -> Option<HeaderName> {
    let parsed = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok();
    if parsed.is_none() {
        push(
            field.into(),
            format!(
                "`{name}` is not a valid header name (letters, digits and `-`, like \"x-my-key\")"
            ),
        );
    }
    parsed
}

/// `proxy.headers.upstream_allow`.
fn upstream_allow(
    config: &ProxyConfig,
    custom: Option<&HeaderName>,
    push: &mut dyn FnMut(String, String),
) -> Option<Vec<HeaderName>> {
    allow_list(
        &config.headers.upstream_allow,
        "proxy.headers.upstream_allow",
        custom,
        push,
    )
}

/// A list of control headers to let through (at `field`): header names, none a credential.
pub(super) fn allow_list(
    list: &[String],
    field: &str,
    custom: Option<&HeaderName>,
    push: &mut dyn FnMut(String, String),
) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    let mut ok = true;
    for (i, name) in list.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match header_name(name, &field, push) {
            Some(parsed) if crate::proxy::layers::auth::is_credential(&parsed, custom) => {
                push(
                    field,
                    format!("`{name}` carries a credential and is always removed; take it out of the list"),
                );
                ok = false;
            }
            Some(parsed) => names.push(parsed),
            None => ok = false,
        }
    }
    ok.then_some(names)
}

/// The always-reserved names, then the configured ones (lower-cased).
fn reserved(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = ALWAYS_RESERVED
        .iter()
        .map(|name| HeaderName::from_static(name))
        .collect();
    let mut ok = true;
    for (i, name) in config.headers.reserved.iter().enumerate() {
        match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
            Ok(name) => names.push(name),
            Err(_) => {
                push(
                    format!("proxy.headers.reserved[{i}]"),
                    "not a valid header name".into(),
                );
                ok = false;
            }
        }
    }
    ok.then_some(names)
}

/// `Some(None)` when there are no patterns.
fn deny_patterns(
    config: &ProxyConfig,
    push: &mut dyn FnMut(String, String),
) -> Option<Option<RegexSet>> {
    let patterns = &config.content.deny_patterns;
    let mut ok = true;
    for (i, pattern) in patterns.iter().enumerate() {
        if let Err(err) = regex::Regex::new(pattern) {
            push(
                format!("proxy.content.deny_patterns[{i}]"),
                format!("not a valid regular expression: {err}"),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    if patterns.is_empty() {
        return Some(None);
    }
    match RegexSet::new(patterns) {
        Ok(set) => Some(Some(set)),
        Err(err) => {
            // Each compiles alone; together they can still pass the size limit.
            push(
                "proxy.content.deny_patterns".into(),
                format!("the patterns together are too large ({err}); use fewer or simpler ones"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn fields(config: &ProxyConfig) -> Vec<String> {
        let mut out = Vec::new();
        build(config, &mut |field, _| out.push(field));
        out
    }

    #[test]
    fn a_good_section_compiles_and_a_bad_one_does_not() {
        let mut errors = Vec::new();
        let settings = compile(&ProxyConfig::default(), &mut errors).expect("default compiles");
        assert!(errors.is_empty());
        assert_eq!(settings.reserved.len(), 3);
        let bad = ProxyConfig {
            upstream: "ftp://x".into(),
            ..ProxyConfig::default()
        };
        assert!(compile(&bad, &mut errors).is_none());
        assert_eq!(errors.len(), 1);
        let off = ProxyConfig {
            enabled: false,
            upstream: "ftp://x".into(),
            ..ProxyConfig::default()
        };
        assert!(compile(&off, &mut errors).is_none());
        assert_eq!(errors.len(), 1, "an off section is not checked");
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
            ("proxy.timeouts.write_stall_secs", |c| {
                c.timeouts.write_stall_secs = 0
            }),
            ("proxy.limits.max_pending_heads_per_source", |c| {
                c.limits.max_pending_heads_per_source = 0
            }),
            ("proxy.limits.body_per_route.key/generate", |c| {
                c.limits.body_per_route.insert("key/generate".into(), 10);
            }),
            ("proxy.headers.reserved[0]", |c| {
                c.headers.reserved = vec!["bad header".into()]
            }),
            ("proxy.upstream_custom_key_header", |c| {
                c.upstream_custom_key_header = Some("bad header".into())
            }),
            ("proxy.headers.upstream_allow[0]", |c| {
                c.headers.upstream_allow = vec!["x-litellm-api-key".into()]
            }),
            ("proxy.headers.upstream_allow[1]", |c| {
                c.headers.upstream_allow = vec!["x-litellm-tags".into(), "bad header".into()]
            }),
            ("proxy.headers.response_allow[0]", |c| {
                c.headers.response_allow = vec!["*".into()]
            }),
            ("proxy.keys[0].upstream_allow[0]", |c| {
                c.keys = vec![crate::config::proxy::KeyEntry {
                    name: "k".into(),
                    sha256: "a".repeat(64),
                    created: None,
                    expires: None,
                    rpm: None,
                    upstream_allow: vec!["authorization".into()],
                    caps: Default::default(),
                    ..crate::config::proxy::KeyEntry::new("", "")
                }]
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
            // A route of another profile's table is not a name here.
            ("proxy.limits.body_per_route.events", |c| {
                c.limits.body_per_route.insert("events".into(), 10);
            }),
            ("proxy.routes[0].shape", |c| {
                c.routes = vec![route_entry("/v1/rerank", "xml")]
            }),
            ("proxy.routes[0].path", |c| {
                c.routes = vec![route_entry("/v1/embeddings", "embeddings")]
            }),
        ];
        for (field, edit) in cases {
            let mut config = ProxyConfig::default();
            edit(&mut config);
            assert_eq!(fields(&config), [field.to_string()], "case {field}");
        }
    }

    fn route_entry(path: &str, shape: &str) -> crate::config::proxy::RouteEntry {
        crate::config::proxy::RouteEntry {
            name: "rerank".into(),
            path: path.into(),
            methods: vec!["POST".into()],
            shape: shape.into(),
            query: Vec::new(),
            rollout: None,
            attempt: None,
            admin: false,
        }
    }

    #[test]
    fn body_limits_name_routes_of_the_active_table() {
        let mut config = ProxyConfig {
            upstream_kind: crate::config::proxy::UpstreamKind::AgentLightning,
            ..ProxyConfig::default()
        };
        config
            .limits
            .body_per_route
            .insert("events".into(), 1 << 20);
        assert!(fields(&config).is_empty());
        config.upstream_kind = crate::config::proxy::UpstreamKind::Litellm;
        config.routes = vec![route_entry("/v1/rerank", "embeddings")];
        config.limits.body_per_route.clear();
        config
            .limits
            .body_per_route
            .insert("rerank".into(), 1 << 20);
        assert!(fields(&config).is_empty());
        // A bad route is reported once, not again as an unknown body limit name.
        config.routes[0].shape = "xml".into();
        assert_eq!(fields(&config), ["proxy.routes[0].shape"]);
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

    #[test]
    fn the_rollout_token_key_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollout-tokens.key");
        let mut config = ProxyConfig::default();
        config.rollout_tokens.key_file = Some(path.clone());
        // Missing, group-readable, malformed: each names the field; good compiles.
        let field = ["proxy.rollout_tokens.key_file"];
        assert_eq!(fields(&config), field);
        std::fs::write(&path, format!("k1 {}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(fields(&config), field);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut errors = Vec::new();
        let settings = compile(&config, &mut errors).expect("a good key file compiles");
        assert_eq!(settings.rollout_keys.unwrap().current_id(), "k1");
        std::fs::write(&path, "k1 not-hex\n").unwrap();
        assert_eq!(fields(&config), field);
    }
}
