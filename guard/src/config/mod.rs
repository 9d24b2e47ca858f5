//! The configuration file: serde structs with secure defaults, loaded and validated in one step.
//!
//! `Config::load` either returns a config that passed every check, or every problem found, each
//! with its field path and line. Nothing is attached or bound before that succeeds.

pub mod bind;
mod bounds;
pub mod control;
pub mod egress;
mod error;
pub mod guarded;
#[cfg(test)]
mod hostile;
pub mod kernel;
mod locate;
pub mod log_level;
pub mod proxy;
mod proxy_check;
mod template;
mod validate;
pub mod watch;
pub mod xdp;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use bind::BindConfig;
pub use egress::EgressSection;
pub use error::{ConfigError, FieldError};
pub use guarded::GuardedSection;
pub use proxy::ProxyConfig;
pub use template::{write_atomic, write_initial, InitOptions};
pub use watch::WatchSection;
pub use xdp::XdpSection;

/// Where the config lives unless `--config` or `$PROXYGUARD_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/proxyguard/proxyguard.toml";

/// The whole file. Each section's `Default` documents its own secure defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kernel: kernel::KernelSection,
    pub guarded: GuardedSection,
    pub bind: BindConfig,
    pub xdp: XdpSection,
    pub egress: EgressSection,
    pub watch: WatchSection,
    pub control: control::ControlSection,
    pub proxy: ProxyConfig,
    pub log: LogConfig,
}

/// What a kernel program does with what its rules do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse, count and report.
    Enforce,
    /// Count and report what would be refused; refuse nothing.
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }

    pub fn kernel_value(self) -> u32 {
        match self {
            Mode::Enforce => guard_common::mode::ENFORCE,
            Mode::Monitor => guard_common::mode::MONITOR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`), or levels per module such as
    /// `info,proxyguard=debug` (see `log_level.rs`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Reads, parses and validates `path`. A panic in any parser is returned as
    /// [`ConfigError::Panicked`], so no command and no reload dies on a file. (The fuzz targets
    /// call `parse`, where a panic stays a finding.)
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        crate::contain::contain(|| Self::read_and_parse(path)).unwrap_or_else(|panicked| {
            Err(ConfigError::Panicked {
                path: path.to_owned(),
                panicked,
            })
        })
    }

    fn read_and_parse(path: &Path) -> Result<Config, ConfigError> {
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
        Self::parse(&source, path)
    }

    /// Parses and validates `source`, naming `path` in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(source).map_err(|err| {
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
        let mut errors = validate::validate(&config);
        if errors.is_empty() {
            return Ok(config);
        }
        for error in &mut errors {
            error.line = locate::line_of_field(source, &error.field);
        }
        Err(ConfigError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }
}

/// The config path from `--config`, then `$PROXYGUARD_CONFIG` (clap fills both), then the default.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}
