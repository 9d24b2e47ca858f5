//! The command line (clap derive): one file per subcommand, doc comments as help text.
//!
//! Exit codes: 0 ok, 1 findings, denial or a runtime failure, 2 usage or config error.

mod check;
mod completions;
mod config_cmd;
mod edit;
mod egress;
mod events;
mod keys;
mod providers;
mod reference;
mod reload;
mod run;
mod status;
mod systemd_cmd;
mod top;
mod usage;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::ConfigError;

pub use reference::markdown as cli_reference;

#[derive(Debug, Parser)]
#[command(
    name = "proxyguard",
    version,
    about = "A host-level guard for LLM proxies"
)]
pub struct Cli {
    /// Config file [default: /etc/proxyguard/proxyguard.toml]
    #[arg(long, global = true, env = "PROXYGUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document (or one JSON object per line for streams) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the kernel programs and stream their events until SIGTERM.
    Run(run::RunArgs),
    /// Write or validate the config file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// What is running: attached programs and their mode, unavailable features and why, counters.
    Status,
    /// Ask the running daemon to reload its config (the same as SIGHUP).
    Reload,
    /// Security events from the kernel and from L7.
    Events(events::EventsArgs),
    /// A live view of the daemon, redrawn every second: requests by decision and reason, top
    /// keys, refused clients, upstream latency, kernel counters and the last security events.
    Top(top::TopArgs),
    /// Print the hardened unit for proxyguard, or a hardening drop-in for the guarded service.
    #[command(subcommand)]
    Systemd(systemd_cmd::SystemdCommand),
    /// Add, list or revoke client keys of the L7 proxy.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Audit the guarded service (or --pid / --unit): secrets in its environment, endpoints, temp
    /// files, listeners; and local processes connected to the upstream around the guard. Exit 1
    /// when there are findings.
    Check(check::CheckArgs),
    /// Add, list or remove the LLM providers whose keys the provider gateway holds.
    #[command(subcommand)]
    Providers(providers::ProvidersCommand),
    /// Edit the guarded service's egress allow-list.
    #[command(subcommand)]
    Egress(egress::EgressCommand),
    /// Print shell completions.
    Completions(completions::CompletionsArgs),
    /// Per key and model: tokens in and out, requests, spend, and what is left of each budget.
    Usage(usage::UsageArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let Cli {
        config,
        json,
        command,
    } = cli;
    let config_path = crate::config::resolve_path(config);
    let result = match command {
        Command::Run(args) => run::run(&config_path, args),
        Command::Config(command) => config_cmd::run(&config_path, json, command),
        Command::Status => status::run(&config_path, json),
        Command::Reload => reload::run(&config_path, json),
        Command::Events(args) => events::run(&config_path, json, args),
        Command::Top(args) => top::run(&config_path, json, args),
        Command::Systemd(command) => systemd_cmd::run(&config_path, command),
        Command::Keys(command) => keys::run(&config_path, json, command),
        Command::Check(args) => check::run(&config_path, json, args),
        Command::Egress(command) => egress::run(&config_path, json, command),
        Command::Providers(command) => providers::run(&config_path, json, command),
        Command::Completions(args) => completions::run(args),
        Command::Usage(args) => usage::run(&config_path, json, args),
    };
    // The log and audit lines are written by the outbox's thread: out before the process ends
    // (bounded, since a stdout nobody reads never drains).
    crate::export::flush(std::time::Duration::from_secs(2));
    crate::outbox::flush(std::time::Duration::from_secs(5));
    result
}

/// 2 for config problems (the operator must edit something), 1 for everything else.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    if err.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
