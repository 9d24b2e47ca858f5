//! Diagnostic logging (tracing, on stderr). `log` records, including the eBPF programs' aya-log
//! output, are bridged into it.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    // `RUST_LOG` wins, so an operator can turn up one module without editing the config.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(err) = result {
        eprintln!("proxyguard: logging already initialised: {err}");
    }
}
