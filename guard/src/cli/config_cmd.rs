//! `proxyguard config init` and `proxyguard config check`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;
use serde_json::json;

use crate::config::{self, InitOptions};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented config with secure defaults (mode 0600). Refuses to overwrite without --force.
    Init {
        /// Where to write it [default: the --config path]
        #[arg(long, value_name = "FILE")]
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// The proxy's front address (proxy.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The guarded LLM proxy, like http://127.0.0.1:4000 (proxy.upstream).
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
        /// A root-only file with the upstream's own key (proxy.upstream_key_file).
        #[arg(long, value_name = "FILE")]
        upstream_key_file: Option<PathBuf>,
        /// The systemd unit of the LLM proxy to guard, like litellm.service (guarded.unit).
        #[arg(long, value_name = "UNIT")]
        guarded_unit: Option<String>,
        /// What the upstream is: its routes, surface and default limits (proxy.upstream_kind).
        #[arg(long, value_name = "KIND")]
        upstream_kind: Option<config::proxy::UpstreamKind>,
    },
    /// Validate the config. Each error names its field path and line.
    Check,
}

pub fn run(config_path: &Path, json: bool, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Init {
            path,
            force,
            listen,
            upstream,
            upstream_key_file,
            guarded_unit,
            upstream_kind,
        } => {
            let path = path.unwrap_or_else(|| config_path.to_owned());
            let options = InitOptions {
                force,
                listen,
                upstream,
                upstream_key_file,
                guarded_unit,
                upstream_kind,
            };
            config::write_initial(&path, &options)?;
            if json {
                println!("{}", json!({ "written": path }));
            } else {
                println!(
                    "wrote {} (mode 0600); check it with `proxyguard config check --config {}`",
                    path.display(),
                    path.display()
                );
            }
        }
        ConfigCommand::Check => {
            config::compile::load(config_path)?;
            if json {
                println!("{}", json!({ "valid": true, "path": config_path }));
            } else {
                println!("{}: valid", config_path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
