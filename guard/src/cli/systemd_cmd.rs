//! `proxyguard systemd unit` and `proxyguard systemd harden UNIT`.

use std::{path::Path, process::ExitCode};

use clap::Subcommand;

use crate::{config::Config, systemd};

#[derive(Debug, Subcommand)]
pub enum SystemdCommand {
    /// Print the hardened unit file for proxyguard itself.
    Unit {
        /// The proxyguard binary the unit runs.
        #[arg(long, default_value = "/usr/bin/proxyguard")]
        exec: String,
    },
    /// Print a hardening drop-in for the guarded service's unit (egress from the config), with
    /// `UnsetEnvironment=` for the provider keys in its environment that the gateway holds.
    Harden {
        /// The guarded service's unit, such as litellm.service.
        unit: String,
    },
}

pub fn run(config_path: &Path, command: SystemdCommand) -> anyhow::Result<ExitCode> {
    match command {
        SystemdCommand::Unit { exec } => {
            print!(
                "{}",
                systemd::unit::render(&exec, &config_path.display().to_string())
            );
        }
        SystemdCommand::Harden { unit } => {
            if unit.contains('/') || !unit.contains('.') {
                anyhow::bail!(crate::config::ConfigError::Invalid {
                    path: config_path.to_owned(),
                    errors: vec![crate::config::FieldError {
                        field: String::new(),
                        line: None,
                        message: format!(
                            "`{unit}` is not a unit name; use the full name, like litellm.service"
                        ),
                    }],
                });
            }
            // The config is optional here: without one, the drop-in allows loopback and DNS only.
            let config = if config_path.exists() {
                Config::load(config_path)?
            } else {
                Config::default()
            };
            // Provider keys in the running unit's environment (names only) leave it.
            let section = crate::config::GuardedSection {
                unit: Some(unit.clone()),
                ..Default::default()
            };
            let root = crate::kernel::cgroup::cgroup2_root().ok();
            let pids = crate::guarded_pids::tgids(&section, root.as_deref());
            let unset = crate::providers::migrate::unset_lines(&pids);
            print!("{}", systemd::harden::render(&unit, &config, &unset));
        }
    }
    Ok(ExitCode::SUCCESS)
}
