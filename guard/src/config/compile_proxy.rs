//! `[proxy]` compiled: every check serde cannot express (addresses, URLs, limits, regexes, key
//! entries, and the files it names), done while building the typed settings the proxy runs on.
//! A value is parsed once, here; the proxy never parses config text again.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use http::{uri::Authority, HeaderName, HeaderValue};
use regex::RegexSet;

use super::{
    proxy::{ProxyConfig, ALWAYS_RESERVED},
    FieldError,
};
use crate::proxy::{layers::auth::StoredKey, Settings};

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
    // Each part is built (and its problems reported) before any missing one ends the build.
    let upstream_auth = match &config.upstream_key_file {
        Some(path) => read_secret_key(path, "proxy.upstream_key_file", push).map(Some),
        None => Some(None),
    };
    check_listeners_and_limits(config, push);
    let tls = match &config.tls {
        Some(tls) => tls_acceptor(tls, push).map(Some),
        None => Some(None),
    };
    let reserved = reserved(config, push);
    let deny = deny_patterns(config, push);
    let keys = keys(config, push);
    Some(Settings {
        upstream: upstream?,
        upstream_auth: upstream_auth?,
        keys: keys?,
        reserved: reserved?,
        deny: deny?,
        tls: tls?,
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
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => {
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

fn check_listeners_and_limits(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) {
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
        ("max_json_depth", limits.max_json_depth),
        ("max_connections", limits.max_connections),
        ("max_concurrent_per_key", limits.max_concurrent_per_key),
        ("max_upstream_connections", limits.max_upstream_connections),
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

fn keys(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) -> Option<Vec<StoredKey>> {
    let mut names = std::collections::HashSet::new();
    let mut stored = Vec::new();
    let mut ok = true;
    for (i, key) in config.keys.iter().enumerate() {
        let mut fail = |field: &str, message: String| {
            push(format!("proxy.keys[{i}].{field}"), message);
            ok = false;
        };
        if key.name.is_empty()
            || !key
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            fail(
                "name",
                "use letters, digits, '-', '_' and '.' only (the name goes into logs and metric labels)".into(),
            );
        }
        if !names.insert(key.name.as_str()) {
            fail(
                "name",
                format!("\"{}\" is used by more than one key", key.name),
            );
        }
        let mut hash = [0u8; 32];
        let lower_hex = key
            .sha256
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !lower_hex || hex::decode_to_slice(&key.sha256, &mut hash).is_err() {
            fail(
                "sha256",
                "must be 64 lower-case hex digits; `proxyguard keys add` writes it".into(),
            );
        }
        let mut times = [None, None];
        for (slot, (field, value)) in times
            .iter_mut()
            .zip([("created", &key.created), ("expires", &key.expires)])
        {
            if let Some(value) = value {
                match humantime::parse_rfc3339_weak(value) {
                    Ok(time) => *slot = Some(time),
                    Err(_) => fail(
                        field,
                        "must be an RFC 3339 time, like \"2027-01-31T00:00:00Z\"".into(),
                    ),
                }
            }
        }
        if key.rpm == Some(0) {
            fail(
                "rpm",
                "must be at least 1 (revoke the key to stop it)".into(),
            );
        }
        stored.push(StoredKey {
            name: key.name.as_str().into(),
            hash,
            expires: times[1],
            rpm: key.rpm,
        });
    }
    for (i, name) in config.admin_routes.keys.iter().enumerate() {
        if !config.keys.iter().any(|key| &key.name == name) {
            push(
                format!("proxy.admin_routes.keys[{i}]"),
                format!("no key named \"{name}\" in [[proxy.keys]]"),
            );
            ok = false;
        }
    }
    ok.then_some(stored)
}

/// A secret file must exist, be this user's and readable by its owner only, and hold one key
/// on one line; it becomes `Bearer <key>`, marked sensitive so hyper never logs it.
fn read_secret_key(
    path: &Path,
    field: &str,
    push: &mut dyn FnMut(String, String),
) -> Option<HeaderValue> {
    let mut fail = |message: String| {
        push(field.into(), message);
        None
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) => return fail(format!("cannot read {}: {err}", path.display())),
    };
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return fail(format!(
            "{} is owned by uid {}, not by the user proxyguard runs as; a secret file must be theirs (chown it)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return fail(format!(
            "{} is readable by group or others; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => return fail(format!("cannot read {}: {err}", path.display())),
    };
    let key = text.trim();
    let value = (!key.is_empty() && !key.contains(char::is_whitespace))
        .then(|| HeaderValue::from_str(&format!("Bearer {key}")).ok())
        .flatten();
    match value {
        Some(mut value) => {
            value.set_sensitive(true);
            Some(value)
        }
        None => fail(format!(
            "{} is empty or not a single-line key; write the upstream's key alone on one line",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::KeyEntry;

    fn fields(config: &ProxyConfig) -> Vec<String> {
        let mut out = Vec::new();
        build(config, &mut |field, _| out.push(field));
        out
    }

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
            let mut problems = Vec::new();
            let got = read_secret_key(&path, "proxy.upstream_key_file", &mut |field, _| {
                problems.push(field)
            });
            assert_eq!(got.is_some(), ok, "{text:?} {mode:o}");
            assert_eq!(problems.is_empty(), ok, "{text:?} {mode:o}");
            if let Some(value) = got {
                assert_eq!(value, "Bearer sk-master");
                assert!(value.is_sensitive());
            }
        }
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
