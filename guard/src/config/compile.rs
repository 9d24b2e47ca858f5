//! The one config compiler. `compile` turns a parsed file into everything the daemon runs on, or
//! into every problem found, each with its field path (and, from `parse`, its line):
//!
//! - the section checks (`validate`), for bind, xdp, egress, upstream_guard, watch, guarded,
//!   kernel, control, log;
//! - `[proxy]` built into typed settings, with the upstream key file and TLS files read
//!   (`compile_proxy`);
//! - every list the kernel maps take, checked against the maps' capacities (`kernel::capacity`).
//!
//! `proxyguard config check`, the daemon's start, every reload and every edit (`keys`,
//! `egress`) go through here, so what one accepts the others accept.

use std::path::Path;

use super::{compile_proxy, locate, validate, Config, ConfigError, FieldError};
use crate::proxy::Settings;

/// A config that passed every check, with what was built from it.
pub struct Compiled {
    pub config: Config,
    /// `None` when `[proxy]` is off.
    pub proxy: Option<Settings>,
    /// The provider gateway (`[providers]`), keys and CA files read.
    pub providers: crate::providers::GatewaySettings,
}

/// Reads, parses and compiles `path`.
///
/// A panic in any parser is returned as [`ConfigError::Panicked`], so no command and no reload
/// dies on a file. (The fuzz targets call `parse`, where a panic stays a finding.)
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    crate::contain::contain(|| read_and_parse(path)).unwrap_or_else(|panicked| {
        Err(ConfigError::Panicked {
            path: path.to_owned(),
            panicked,
        })
    })
}

fn read_and_parse(path: &Path) -> Result<Compiled, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let source = String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        ConfigError::Invalid {
            path: path.to_owned(),
            errors: vec![FieldError {
                field: String::new(),
                line: Some(locate::line_of(valid, valid.len())),
                message: format!(
                    "byte {} is not UTF-8 text; save the file as UTF-8",
                    valid.len() + 1
                ),
            }],
        }
    })?;
    parse(&source, path)
}

/// Parses and compiles `source`, naming `path` and the lines in errors.
pub fn parse(source: &str, path: &Path) -> Result<Compiled, ConfigError> {
    let mut config: Config = toml::from_str(source).map_err(|err| {
        let line = err.span().map(|span| locate::line_of(source, span.start));
        ConfigError::Invalid {
            path: path.to_owned(),
            errors: vec![FieldError {
                field: String::new(),
                line,
                message: err.message().to_owned(),
            }],
        }
    })?;
    // The limits the file leaves out follow `proxy.upstream_kind`.
    super::profile::apply_from_source(&mut config.proxy, source);
    compile(config).map_err(|mut errors| {
        for error in &mut errors {
            error.line = locate::line_of_field(source, &error.field);
        }
        ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        }
    })
}

/// Every check, and everything built, in one pass.
pub fn compile(config: Config) -> Result<Compiled, Vec<FieldError>> {
    let mut errors = validate::validate(&config);
    let mut proxy = compile_proxy::compile(&config.proxy, &mut errors);
    let fleet = crate::fleet::compile(&config.fleet, &mut errors);
    if let Some(proxy) = &mut proxy {
        proxy.fleet = fleet;
    }
    let providers = crate::providers::compile::compile(&config.providers, &mut errors);
    for (field, message) in crate::kernel::capacity::check(&config) {
        errors.push(FieldError {
            field: field.into(),
            line: None,
            message,
        });
    }
    match providers {
        Some(providers) if errors.is_empty() => Ok(Compiled {
            config,
            proxy,
            providers,
        }),
        _ => Err(errors),
    }
}

/// The settings `config` compiles to; panics on a bad one (unit tests only).
#[cfg(test)]
pub fn compile_proxy_for_tests(config: &super::ProxyConfig) -> Settings {
    let mut errors = Vec::new();
    compile_proxy::compile(config, &mut errors)
        .unwrap_or_else(|| panic!("the test's [proxy] does not compile: {errors:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_of_every_part_comes_back_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("upstream.key");
        std::fs::write(&key, "").unwrap();
        // One more prefix than the XDP allow trie holds (ports are a bitmap: any list fits).
        let allow: Vec<String> = (0..=guard_common::xdp::MAX_XDP_CIDRS)
            .map(|i| format!("\"{}/32\"", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let source = format!(
            "[xdp]\nallow = [{}]\n\n[log]\nlevel = \"info\"\n\n[proxy]\nupstream = \"ftp://x\"\nupstream_key_file = \"{}\"\n\n[proxy.content]\ndeny_patterns = [\"(\"]\n",
            allow.join(", "),
            key.display()
        );
        let Err(ConfigError::Invalid { errors, .. }) = parse(&source, Path::new("pg.toml")) else {
            panic!("a bad config compiled");
        };
        let got: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("proxy.upstream", Some(8)),
                ("proxy.upstream_key_file", Some(9)),
                ("proxy.content.deny_patterns[0]", Some(12)),
                ("xdp.allow", Some(2)),
            ]
        );
    }

    #[test]
    fn route_errors_name_their_line_and_field() {
        let source = "[proxy]\nupstream_kind = \"openai\"\n\n[[proxy.routes]]\nname = \"ok\"\npath = \"/v1/rerank\"\nmethods = [\"POST\"]\nshape = \"embeddings\"\n\n[[proxy.routes]]\nname = \"bad\"\npath = \"/v1/{x:uuid}\"\nmethods = [\"POST\", \"FETCH\"]\nshape = \"xml\"\n";
        let Err(ConfigError::Invalid { errors, .. }) = parse(source, Path::new("pg.toml")) else {
            panic!("a bad route compiled");
        };
        let got: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("proxy.routes[1].methods[1]", Some(13)),
                ("proxy.routes[1].shape", Some(14)),
            ]
        );
        let fixed = source.replace("xml", "chat").replace(", \"FETCH\"", "");
        let Err(ConfigError::Invalid { errors, .. }) = parse(&fixed, Path::new("pg.toml")) else {
            panic!("a bad route compiled");
        };
        assert_eq!(errors[0].field, "proxy.routes[1].path");
        assert_eq!(errors[0].line, Some(12));
        assert!(
            errors[0].message.contains("unknown segment type `uuid`"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn egress_policy_errors_name_file_line_field_and_fix() {
        let source = "[egress]\npolicy = \"gateway-only\"\nallow_dns = false\nallow = [\"api.openai.com:443\"]\n";
        let err = parse(source, Path::new("/etc/pg.toml"))
            .err()
            .expect("refused");
        let text = err.to_string();
        let ConfigError::Invalid { errors, .. } = err else {
            panic!("not a field error: {text}");
        };
        let got: Vec<(&str, Option<usize>)> =
            errors.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(got, [("egress.allow", Some(4))]);
        assert!(
            text.contains("/etc/pg.toml: line 4: egress.allow: 1 target(s) listed"),
            "{text}"
        );
        assert!(
            text.contains("`proxyguard egress deny TARGET`")
                && text.contains("policy = \"allow-list\""),
            "the fix: {text}"
        );
        // Without the list it compiles, DNS off.
        let fixed = source.replace("allow = [\"api.openai.com:443\"]\n", "");
        let Ok(compiled) = parse(&fixed, Path::new("/etc/pg.toml")) else {
            panic!("the fixed config does not compile");
        };
        assert_eq!(
            compiled.config.egress.policy,
            super::super::egress::EgressPolicy::GatewayOnly
        );
        assert!(!compiled.config.egress.allow_dns);

        // A policy that does not exist names its line and the ones that do.
        let source = "[egress]\nmode = \"enforce\"\npolicy = \"gateway\"\n";
        let err = parse(source, Path::new("/etc/pg.toml"))
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("/etc/pg.toml: line 3:"), "{text}");
        assert!(
            text.contains("`allow-list`") && text.contains("`gateway-only`"),
            "{text}"
        );
        let source = "[egress]\nallow_dns = \"yes\"\n";
        let text = parse(source, Path::new("/etc/pg.toml"))
            .err()
            .expect("refused")
            .to_string();
        assert!(text.contains("line 2:"), "{text}");
    }

    #[test]
    fn the_default_config_compiles_with_proxy_settings() {
        let compiled = compile(Config::default()).unwrap();
        assert!(compiled.proxy.is_some());
        let mut off = Config::default();
        off.proxy.enabled = false;
        assert!(compile(off).unwrap().proxy.is_none());
    }
}
