//! Semantic checks of the sections that serde cannot express. Returns every problem, each with its
//! field path. `[proxy]` is checked as it is built (`compile_proxy`), and map capacities by the
//! kernel half (`kernel::capacity`); `compile` runs all three.

use super::{Config, FieldError};

pub fn validate(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    super::bind::validate(&config.bind, &mut errors);
    super::kernel::validate(&config.kernel, &mut errors);
    super::guarded::validate(&config.guarded, &mut errors);
    super::xdp::validate(&config.xdp, &mut errors);
    super::fleet::validate(&config.fleet, &mut errors);
    super::egress::validate(&config.egress, &mut errors);
    super::upstream_guard::validate(&config.upstream_guard, &mut errors);
    super::watch::validate(&config.watch, &mut errors);
    super::control::validate(&config.control, &mut errors);
    super::export::validate(config, &mut errors);
    // Checked by our own grammar: tracing-subscriber's parser panics on some hostile text.
    if let Err(message) = super::log_level::normalise(&config.log.level) {
        errors.push(FieldError {
            field: "log.level".into(),
            line: None,
            message,
        });
    }
    super::bounds::validate(config, &mut errors);
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
    fn a_log_level_that_crashes_the_filter_parser_is_a_config_error() {
        let source = "[log]\nformat = \"text\"\nlevel = \"\\tב[\"\n";
        let err = Config::parse(source, std::path::Path::new("/etc/pg.toml")).unwrap_err();
        let crate::config::ConfigError::Invalid { errors, .. } = err else {
            panic!("not a field error: {err}");
        };
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "log.level");
        assert_eq!(errors[0].line, Some(3));
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut config = Config::default();
        config.bind.rules.push(BindRule {
            port: 4000,
            allow: vec![],
            owner: None,
        });
        config.bind.rules.push(BindRule {
            port: 0,
            allow: vec!["127.0.0.1/32".parse().unwrap()],
            owner: None,
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
