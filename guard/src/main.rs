//! `proxyguard`: a host-level guard for LLM proxies. The code lives in the library (`lib.rs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = proxyguard::Cli::parse();
    match proxyguard::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("proxyguard: {err:#}");
            proxyguard::exit_code_for(&err)
        }
    }
}
