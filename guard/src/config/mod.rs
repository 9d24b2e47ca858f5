//! The configuration file: serde structs with secure defaults, loaded and validated in one step.
//!
//! `Config::load` either returns a config that passed every check of the compiler (`compile`), or
//! every problem found, each with its field path and line. Nothing is attached or bound before
//! that succeeds.

pub mod bind;
mod bounds;
pub mod compile;
mod compile_keys;
mod compile_proxy;
pub mod control;
pub mod egress;
mod error;
pub mod export;
pub mod fleet;
pub mod guarded;
#[cfg(test)]
mod hostile;
pub mod kernel;
mod locate;
pub mod log_level;
pub mod profile;
pub mod proxy;
mod template;
pub mod upstream_guard;
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
pub use upstream_guard::UpstreamGuardSection;
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
    pub upstream_guard: UpstreamGuardSection,
    pub watch: WatchSection,
    pub control: control::ControlSection,
    pub proxy: ProxyConfig,
    pub providers: crate::providers::ProvidersSection,
    pub fleet: fleet::FleetSection,
    pub log: LogConfig,
    pub export: export::ExportSection,
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
    /// Lines (audit records and log events) waiting for stdout and stderr; past it new ones are
    /// dropped and counted (`crate::outbox`).
    pub queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
            queue: crate::outbox::DEFAULT_DEPTH,
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
    /// Reads, parses and compiles `path` (see [`compile`]), keeping only the config.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        compile::load(path).map(|compiled| compiled.config)
    }

    /// Parses and compiles `source`, naming `path` in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        compile::parse(source, path).map(|compiled| compiled.config)
    }
}

/// The config path from `--config`, then `$PROXYGUARD_CONFIG` (clap fills both), then the default.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}
