//! `proxyguard`: a host-level guard for LLM proxies.
#![forbid(unsafe_code)]

mod audit;
mod checks;
mod cli;
mod config;
mod control;
mod guarded;
mod guarded_pids;
mod kernel;
mod proxy;
mod resolve;
mod systemd;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("proxyguard: {err:#}");
            cli::exit_code_for(&err)
        }
    }
}
