//! `proxyguard` as a library, so the binary (`main.rs`) and the fuzz targets (`fuzz/`) drive the
//! same code. Only the command line (and its reference page, for `examples/cli_reference.rs`) and
//! the fuzz entries are public; every other module stays private to the crate, so dead code is
//! still reported.
// `deny`, not `forbid`: one module (kernel/link_update.rs, a raw bpf(2) call aya lacks) allows it.
#![deny(unsafe_code)]

mod audit;
mod checks;
mod cli;
mod config;
mod contain;
mod control;
mod export;
mod fleet;
pub mod fuzz;
mod guarded;
mod guarded_pids;
mod kernel;
mod outbox;
mod providers;
mod proxy;
mod resolve;
mod systemd;
mod telemetry;
mod workers;

pub use cli::{cli_reference, dispatch, exit_code_for, Cli};
