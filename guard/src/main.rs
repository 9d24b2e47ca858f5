//! `proxyguard`: a host-level guard for LLM proxies. The code lives in the library (`lib.rs`).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// jemalloc instead of glibc's malloc: the request path allocates and frees about fifty small
/// blocks per request, and at 1,000 connections glibc's heaps kept more resident memory
/// (docs/design-request-path.md has the numbers, mimalloc's among them).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
