//! Keys, compiled: the client keys of `[[proxy.keys]]` (names, hashes, times, limits) and the
//! upstream key file (owner, mode, one key on one line), as the proxy uses them.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use http::HeaderValue;

use super::proxy::{KeyEntry, ProxyConfig};
use crate::proxy::{budget::policy::Policy, layers::auth::StoredKey};

pub(super) fn keys(
    config: &ProxyConfig,
    custom: Option<&http::HeaderName>,
    push: &mut dyn FnMut(String, String),
) -> Option<Vec<StoredKey>> {
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
        let mut caps = config.body.caps;
        for (name, value) in &key.caps {
            if !caps.set(name, *value) {
                fail(
                    &format!("caps.{name}"),
                    format!(
                        "no such cap; use one of {}",
                        crate::config::proxy::Caps::NAMES.join(", ")
                    ),
                );
            }
        }
        let policy = policy(key, &mut fail);
        let upstream_allow = super::compile_proxy::allow_list(
            &key.upstream_allow,
            &format!("proxy.keys[{i}].upstream_allow"),
            custom,
            push,
        )
        .unwrap_or_default();
        stored.push(StoredKey {
            name: key.name.as_str().into(),
            hash,
            expires: times[1],
            rpm: key.rpm,
            upstream_allow,
            caps,
            policy,
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

/// `[proxy.usage]` and `[proxy.pricing]`: numbers the ledger can use.
pub(super) fn usage_and_pricing(config: &ProxyConfig, push: &mut dyn FnMut(String, String)) {
    let usage = &config.usage;
    if usage.persist_secs == 0 {
        push(
            "proxy.usage.persist_secs".into(),
            "must be at least 1 (it is the most usage a kill -9 can lose)".into(),
        );
    }
    if !usage.spike.factor.is_finite() || usage.spike.factor < 0.0 {
        push(
            "proxy.usage.spike.factor".into(),
            "must be a non-negative number, like 10.0".into(),
        );
    }
    let prices = std::iter::once((
        "proxy.pricing.default_price".to_string(),
        config.pricing.default_price,
    ))
    .chain(
        config
            .pricing
            .models
            .iter()
            .map(|(model, price)| (format!("proxy.pricing.models.\"{model}\""), *price)),
    );
    for (field, price) in prices {
        for (side, usd) in [("input", price.input), ("output", price.output)] {
            if !usd.is_finite() || usd < 0.0 {
                push(
                    format!("{field}.{side}"),
                    "must be a non-negative price in US dollars per million tokens".into(),
                );
            }
        }
    }
}

/// The key's budgets, models and sources (issue 14); every one is off unless set.
fn policy(key: &KeyEntry, fail: &mut dyn FnMut(&str, String)) -> Policy {
    let mut from = Vec::new();
    for (j, cidr) in key.from.iter().enumerate() {
        match cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(net) => from.push(net.trunc()),
            Err(_) => fail(
                &format!("from[{j}]"),
                "must be an address or a CIDR, like \"10.0.0.0/8\" or \"::1\"".into(),
            ),
        }
    }
    for (j, glob) in key.models.iter().enumerate() {
        if glob.trim().is_empty() {
            fail(
                &format!("models[{j}]"),
                "must name a model or a glob like \"gpt-4o*\"".into(),
            );
        }
    }
    for (field, value) in [
        ("usd_per_day", key.usd_per_day),
        ("usd_per_month", key.usd_per_month),
    ] {
        if value.is_some_and(|usd| !usd.is_finite() || usd < 0.0) {
            fail(field, "must be a non-negative number of US dollars".into());
        }
    }
    for (field, value) in [
        ("tpm", key.tpm),
        ("tokens_per_day", key.tokens_per_day),
        ("input_tokens_per_day", key.input_tokens_per_day),
        ("output_tokens_per_day", key.output_tokens_per_day),
        ("requests_per_day", key.requests_per_day),
    ] {
        if value == Some(0) {
            fail(
                field,
                "must be at least 1 (leave it out for no limit; revoke the key to stop it)".into(),
            );
        }
    }
    Policy {
        tpm: key.tpm,
        tokens_per_day: key.tokens_per_day,
        input_tokens_per_day: key.input_tokens_per_day,
        output_tokens_per_day: key.output_tokens_per_day,
        requests_per_day: key.requests_per_day,
        usd_per_day: key.usd_per_day,
        usd_per_month: key.usd_per_month,
        models: key.models.clone(),
        from,
    }
}

/// A secret file must exist, be this user's and readable by its owner only, and hold one key
/// on one line; it becomes `Bearer <key>`, marked sensitive so hyper never logs it.
pub(super) fn read_secret_key(
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

    fn fields(config: &ProxyConfig) -> Vec<String> {
        let mut out = Vec::new();
        keys(config, None, &mut |field, _| out.push(field));
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
    fn keys_are_checked() {
        let good = KeyEntry {
            name: "ci".into(),
            sha256: "a".repeat(64),
            created: None,
            expires: Some("2030-01-01T00:00:00Z".into()),
            rpm: Some(10),
            upstream_allow: Vec::new(),
            caps: Default::default(),
            ..crate::config::proxy::KeyEntry::new("", "")
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
                    caps: [("n".to_string(), 8), ("tokens".to_string(), 1)].into(),
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
                "proxy.keys[2].rpm",
                "proxy.keys[2].caps.tokens"
            ]
        );
    }

    #[test]
    fn usage_pricing_and_key_policy_are_checked() {
        let mut config = ProxyConfig::default();
        config.usage.persist_secs = 0;
        config.usage.spike.factor = -1.0;
        config.pricing.models.insert(
            "m".into(),
            crate::config::proxy::Price {
                input: -1.0,
                output: f64::NAN,
            },
        );
        config.keys = vec![KeyEntry {
            tpm: Some(0),
            usd_per_day: Some(-2.0),
            models: vec![" ".into()],
            from: vec!["10.0.0.0/8".into(), "not-an-address".into(), "::1".into()],
            ..KeyEntry::new("k", &"a".repeat(64))
        }];
        let mut problems = Vec::new();
        usage_and_pricing(&config, &mut |field, _| problems.push(field));
        assert_eq!(
            problems,
            [
                "proxy.usage.persist_secs",
                "proxy.usage.spike.factor",
                "proxy.pricing.models.\"m\".input",
                "proxy.pricing.models.\"m\".output"
            ]
        );
        assert_eq!(
            fields(&config),
            [
                "proxy.keys[0].from[1]",
                "proxy.keys[0].models[0]",
                "proxy.keys[0].usd_per_day",
                "proxy.keys[0].tpm"
            ]
        );
        config.keys[0] = KeyEntry {
            from: vec!["10.1.2.3/8".into()],
            models: vec!["gpt-*".into()],
            ..KeyEntry::new("k", &"a".repeat(64))
        };
        let stored = keys(&config, None, &mut |field, message| {
            panic!("{field}: {message}")
        })
        .unwrap();
        assert_eq!(
            stored[0].policy.from,
            ["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
        );
    }

    #[test]
    fn a_key_caps_override_the_defaults_by_name() {
        let key = |name: &str, caps: &[(&str, u64)]| KeyEntry {
            name: name.into(),
            sha256: "a".repeat(64),
            created: None,
            expires: None,
            rpm: None,
            upstream_allow: Vec::new(),
            caps: caps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..KeyEntry::new("", "")
        };
        let mut config = ProxyConfig {
            keys: vec![
                key("wide", &[("n", 64), ("max_tokens", 0)]),
                key("plain", &[]),
            ],
            ..ProxyConfig::default()
        };
        config.body.caps.n = 2;
        let stored = keys(&config, None, &mut |field, message| {
            panic!("{field}: {message}")
        })
        .unwrap();
        assert_eq!((stored[0].caps.n, stored[0].caps.max_tokens), (64, 0));
        assert_eq!(stored[0].caps.retries, config.body.caps.retries);
        assert_eq!(stored[1].caps, config.body.caps);
    }
}
