//! Semantic checks that serde cannot express. Returns every problem, each with its field path.

use std::collections::HashSet;

use super::{Config, FieldError};

pub fn validate(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: String| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    };

    let mut ports = HashSet::new();
    for (i, rule) in config.bind.rules.iter().enumerate() {
        if rule.port == 0 {
            push(
                format!("bind.rules[{i}].port"),
                "port 0 means \"any free port\" and cannot be guarded; use the service's real port"
                    .into(),
            );
        }
        if !ports.insert(rule.port) {
            push(
                format!("bind.rules[{i}].port"),
                format!(
                    "port {} has more than one rule; merge their `allow` lists",
                    rule.port
                ),
            );
        }
        if rule.allow.is_empty() {
            push(
                format!("bind.rules[{i}].allow"),
                "an empty list would make the port unbindable; list at least one address (loopback: \"127.0.0.1\", \"::1\")".into(),
            );
        }
    }

    if let Err(err) = config.log.level.parse::<tracing_subscriber::EnvFilter>() {
        push(
            "log.level".into(),
            format!("not a valid log filter ({err}); use one of error, warn, info, debug, trace"),
        );
    }
    super::proxy_check::validate(&config.proxy, &mut errors);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::bind::BindRule;

    #[test]
    fn default_config_is_valid() {
        assert!(validate(&Config::default()).is_empty());
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut config = Config::default();
        config.bind.rules.push(BindRule {
            port: 4000,
            allow: vec![],
        });
        config.bind.rules.push(BindRule {
            port: 0,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
        });
        config.log.level = "proxyguard=loud".into();
        let fields: Vec<_> = validate(&config).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "bind.rules[1].port",
                "bind.rules[1].allow",
                "bind.rules[2].port",
                "log.level"
            ]
        );
    }
}
