//! Diagnostic logging (tracing, on stderr). `log` records, including the eBPF programs' aya-log
//! output, are bridged into it.

use tracing_subscriber::EnvFilter;

use crate::config::{log_level, LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    // `RUST_LOG` wins, so an operator can turn up one module without editing the config. It
    // passes the same check as `log.level` first: the filter parser panics on some text.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|text| !text.is_empty())
        .and_then(|text| {
            log_level::normalise(&text)
                .map_err(|why| eprintln!("proxyguard: RUST_LOG is ignored: {why}"))
                .ok()
        });
    // `Config::load` checked `log.level`; "info" is only a fallback for a config built in code.
    let level = from_env
        .or_else(|| log_level::normalise(&config.level).ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::new(level);
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
