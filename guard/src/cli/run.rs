//! `proxyguard run`: the daemon.

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use crate::{audit, config::Config, kernel::Kernel, proxy::Proxy, systemd, telemetry};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run only the user-space half (for hosts without BPF rights). Nothing is attached.
    #[arg(long)]
    pub no_kernel: bool,
}

pub fn run(config_path: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Bad config exits before anything is attached or bound.
    let config = Config::load(config_path)?;
    telemetry::init(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.proxy.worker_threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config_path, config, args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config_path: &Path, config: Config, args: RunArgs) -> anyhow::Result<()> {
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let mut kernel = if args.no_kernel {
        tracing::warn!(
            "--no-kernel: running the user-space half only (the L7 proxy); no bind rules are enforced"
        );
        None
    } else {
        Some(Kernel::start(&config)?)
    };
    // Bound before `ready`, so a client that waits for `ready` can connect at once.
    let proxy = if config.proxy.enabled {
        Some(Proxy::start(&config.proxy).await?)
    } else {
        None
    };
    let proxy_fields = proxy
        .as_ref()
        .map(|p| json!({ "listen": p.listen, "admin": p.admin, "tls": p.tls }));

    let (programs, features) = match &kernel {
        Some(k) => (json!(k.programs), json!(k.features)),
        None => (json!([]), json!([])),
    };
    audit::emit(
        "ready",
        audit::fields(json!({
            "config": config_path,
            "kernel": kernel.is_some(),
            "mode": if kernel.is_some() { "full" } else { "no-kernel" },
            "proxy": proxy_fields,
            "programs": programs,
            "features": features,
        })),
    );
    systemd::notify("READY=1");

    loop {
        tokio::select! {
            _ = hangup.recv() => reload(config_path, kernel.as_mut(), proxy.as_ref()),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    systemd::notify("STOPPING=1");
    if let Some(proxy) = proxy {
        // Stop accepting, let in-flight requests (and streams) finish within drain_secs.
        proxy.shutdown().await;
    }
    let counters = match &kernel {
        Some(k) => json!({ "bind": k.bind_stats().ok() }),
        None => json!({}),
    };
    audit::emit("stopping", audit::fields(json!({ "counters": counters })));
    Ok(())
}

/// Validates the new config first; an invalid one is refused and the old one keeps running.
/// The proxy's new settings (key file and TLS files included) are built before anything is
/// applied, so a bad file refuses the whole reload.
fn reload(config_path: &Path, kernel: Option<&mut Kernel>, proxy: Option<&Proxy>) {
    systemd::notify("RELOADING=1");
    let outcome = Config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(|config| {
            let staged = match proxy {
                Some(proxy) => Some(proxy.prepare(&config.proxy)?),
                None => None,
            };
            if let Some(kernel) = kernel {
                kernel.apply(&config)?;
            }
            if let (Some(proxy), Some(staged)) = (proxy, staged) {
                proxy.commit(staged);
            }
            Ok(())
        });
    match outcome {
        Ok(()) => {
            tracing::info!("config reloaded");
            audit::emit("reloaded", audit::fields(json!({ "config": config_path })));
        }
        Err(err) => {
            tracing::error!("reload refused, the previous config stays in force: {err:#}");
            audit::emit(
                "reload_failed",
                audit::fields(json!({ "config": config_path, "error": format!("{err:#}") })),
            );
        }
    }
    systemd::notify("READY=1");
}
