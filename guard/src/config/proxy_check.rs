//! Checks of `[proxy]` that serde cannot express: addresses, URLs, limits, regexes, key entries,
//! and the files it names (the upstream key file must be owner-only and owned by this user).

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use super::{proxy::ProxyConfig, FieldError};

/// Appends every problem of `[proxy]` to `errors`, each with its field path.
pub fn validate(config: &ProxyConfig, errors: &mut Vec<FieldError>) {
    check(config, &mut |field, message| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    });
}

/// Appends every problem in `config` to `push(field, message)`.
fn check(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) {
    if !config.enabled {
        return;
    }
    match config.upstream.parse::<http::Uri>() {
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
        Ok(meta) if meta.uid() != nix::unistd::geteuid().as_raw() => push(
            field.into(),
            format!(
                "{} is owned by uid {}, not by the user proxyguard runs as; a secret file must be theirs (chown it)",
                path.display(),
                meta.uid()
            ),
        ),
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
    use crate::config::proxy::KeyEntry;

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
