//! `proxyguard run`: the daemon.

use std::{
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::json;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
};

use crate::{
    audit, checks,
    config::{
        compile::{self, Compiled},
        egress::EgressTarget,
        Config,
    },
    control,
    kernel::{pins, Kernel},
    providers::Gateway,
    proxy::Proxy,
    resolve, systemd, telemetry,
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run only the user-space half (for hosts without BPF rights). Nothing is attached.
    #[arg(long)]
    pub no_kernel: bool,
    /// Detach every pinned program and remove the pinned maps (a clean uninstall), then exit.
    /// Without this, enforcement deliberately outlives the daemon.
    #[arg(long, conflicts_with = "no_kernel")]
    pub detach_kernel: bool,
}

pub fn run(config_path: &Path, args: RunArgs) -> anyhow::Result<ExitCode> {
    // Bad config exits before anything is attached or bound.
    let compiled = compile::load(config_path)?;
    let config = &compiled.config;
    telemetry::init(&config.log);
    if args.detach_kernel {
        return detach(config);
    }
    // The request path: `worker_threads` threads, a current-thread runtime each, serving the
    // front and gateway listeners (`crate::workers`). The control plane (signals, the control
    // socket, reloads, the kernel's event readers, the admin listener) gets one thread of its
    // own, so it neither steals from the workers nor waits behind them.
    let workers = crate::workers::Workers::start(config.proxy.worker_threads)
        .context("cannot start the request workers")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("proxyguard-ctl")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(config_path, compiled, args, &workers));
    // The listeners have drained by now; what is left on the workers ends with them.
    drop(runtime);
    drop(workers);
    served?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    config_path: &Path,
    compiled: Compiled,
    args: RunArgs,
    workers: &crate::workers::Workers,
) -> anyhow::Result<()> {
    let Compiled {
        config,
        proxy: settings,
        providers,
    } = compiled;
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    // Before the kernel half, so its first events are exported too.
    crate::export::start(&config.export)?;
    let mut kernel = if args.no_kernel {
        tracing::warn!("--no-kernel: running the user-space half only (the L7 proxy); no kernel rules are enforced");
        None
    } else {
        Some(Kernel::start(&config)?)
    };

    let (programs, features) = match &kernel {
        Some(k) => (json!(k.programs), json!(k.features)),
        None => (json!([]), json!([])),
    };
    // Bound before `ready`, so a client that waits for `ready` can connect at once.
    let proxy = match settings {
        Some(settings) => Some(Proxy::start(&config.proxy, settings, &workers.handles()).await?),
        None => None,
    };
    // The provider gateway binds only once a provider is configured.
    let mut gateway = Gateway::new(workers.handles());
    providers.require_keys().map_err(anyhow::Error::msg)?;
    gateway
        .bind_if_needed(
            config.providers.listen,
            config.providers.max_connections,
            providers.has_providers(),
        )
        .map_err(anyhow::Error::msg)?;
    gateway.commit(providers.table);
    let proxy_fields = proxy
        .as_ref()
        .map(|p| json!({ "listen": p.listen, "admin": p.admin, "tls": p.tls }));

    let control = control::server::bind(&config.control.socket)?;
    let (control_tx, mut control_rx) = mpsc::channel(16);
    let started = Instant::now();
    let snapshots = control::server::Snapshots {
        started,
        kernel: kernel.is_some(),
        metrics: proxy.as_ref().map(|p| p.metrics_text()),
        one_at_a_time: tokio::sync::Mutex::new(()),
    };
    tokio::spawn(control::server::serve(
        control,
        control_tx,
        snapshots.into(),
    ));

    audit::emit(
        "ready",
        audit::fields(json!({
            "config": config_path,
            "kernel": kernel.is_some(),
            "mode": if kernel.is_some() { "full" } else { "no-kernel" },
            "proxy": proxy_fields,
            "providers": { "listen": gateway.addr() },
            "programs": programs,
            "features": features,
        })),
    );
    systemd::notify("READY=1");

    // The audits of the guarded process run beside the loop and follow config reloads.
    let (checks_tx, checks_rx) = watch::channel(config.clone());
    tokio::spawn(checks::continuous::run(checks_rx));
    // Host-name egress targets are resolved off the main loop and arrive as whole answer sets.
    let mut config = config;
    let (hosts_tx, hosts_rx) = watch::channel(host_targets(&config));
    let (resolved_tx, mut resolved_rx) = mpsc::channel(4);
    tokio::spawn(resolve::follow(hosts_rx, resolved_tx));
    // The guarded service's cgroups are re-read at this pace, so a restart is covered within it.
    let mut guarded_tick = tokio::time::interval(Duration::from_millis(250));
    // Pinged from this loop, so a wedged loop (not just a dead process) gets restarted.
    let watchdog = systemd::watchdog_interval();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    guarded_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Ok(new) = reload(config_path, kernel.as_mut(), proxy.as_ref(), &mut gateway) {
                    config = new;
                    hosts_tx.send_replace(host_targets(&config));
                    checks_tx.send_replace(config.clone());
                }
            }
            Some(request) = control_rx.recv() => match request {
                control::server::Request::Status(reply) => {
                    let _ = reply.send(status(config_path, &config, kernel.as_ref(), &gateway, started));
                }
                control::server::Request::Reload(reply) => {
                    let outcome = reload(config_path, kernel.as_mut(), proxy.as_ref(), &mut gateway).map(|new| {
                        config = new;
                        hosts_tx.send_replace(host_targets(&config));
                        checks_tx.send_replace(config.clone());
                    });
                    let _ = reply.send(outcome);
                }
            },
            _ = guarded_tick.tick() => {
                if let Some(kernel) = kernel.as_mut() {
                    if let Ok(counters) = kernel.counters() {
                        crate::kernel::publish_counters(&counters);
                    }
                    match kernel.refresh_guarded(&config) {
                        Ok(true) => {
                            let cgroups: Vec<_> = kernel.guarded.iter().map(|c| json!({ "path": c.path, "id": c.id })).collect();
                            audit::emit("guarded_cgroups", audit::fields(json!({ "cgroups": cgroups })));
                        }
                        Ok(false) => {}
                        Err(err) => tracing::error!("cannot update the guarded cgroups: {err}"),
                    }
                }
            }
            Some(resolved) = resolved_rx.recv() => {
                let hosts: serde_json::Map<_, _> = resolved
                    .iter()
                    .map(|((host, port), addrs)| (format!("{host}:{port}"), json!(addrs)))
                    .collect();
                if let Some(kernel) = kernel.as_mut() {
                    match kernel.set_resolved(resolved, &config) {
                        Ok(()) => audit::emit("egress_resolved", audit::fields(json!({ "hosts": hosts }))),
                        Err(err) => tracing::error!("cannot update resolved egress targets: {err}"),
                    }
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => systemd::notify("WATCHDOG=1"),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    systemd::notify("STOPPING=1");
    let _ = std::fs::remove_file(&config.control.socket);
    if let Some(proxy) = proxy {
        // Stop accepting, let in-flight requests (and streams) finish within drain_secs.
        proxy.shutdown().await;
    }
    gateway.shutdown().await;
    let counters = match &kernel {
        Some(k) => json!(k.counters().ok()),
        None => json!({}),
    };
    audit::emit("stopping", audit::fields(json!({ "counters": counters })));
    Ok(())
}

/// `run --detach-kernel`: removes the pinned links (detaching the programs) and maps.
fn detach(config: &Config) -> anyhow::Result<ExitCode> {
    let dir = &config.kernel.pin_dir;
    let removed = pins::remove_all(dir)
        .with_context(|| format!("cannot remove the pins under {}", dir.display()))?;
    audit::emit(
        "detached",
        audit::fields(json!({ "pin_dir": dir, "removed": removed })),
    );
    tracing::info!(
        "removed {} pins under {}; proxyguard's kernel programs are detached",
        removed.len(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What `proxyguard status` shows: the attached programs and their modes, the features that are
/// missing and why, the guarded cgroups, and the counters.
fn status(
    config_path: &Path,
    config: &Config,
    kernel: Option<&Kernel>,
    gateway: &Gateway,
    started: Instant,
) -> serde_json::Value {
    let modes = json!({
        "bind": config.bind.mode.as_str(),
        "xdp": config.xdp.mode.as_str(),
        "egress": config.egress.mode.as_str(),
        "upstream_guard": config.upstream_guard.mode.as_str(),
        "watch": config.watch.mode.as_str(),
    });
    let guarded_pids = kernel.map(|k| k.guarded_pids()).unwrap_or_default();
    let (programs, unavailable, counters, guarded) = match kernel {
        Some(k) => (
            json!(k.programs),
            json!(k
                .features
                .iter()
                .filter(|f| !f.available)
                .collect::<Vec<_>>()),
            json!(k.counters().ok()),
            json!(k
                .guarded
                .iter()
                .map(|c| json!({ "path": c.path, "id": c.id }))
                .collect::<Vec<_>>()),
        ),
        None => (
            json!([]),
            json!([{ "name": "kernel", "available": false, "detail": "started with --no-kernel" }]),
            json!(null),
            json!([]),
        ),
    };
    json!({
        "pid": std::process::id(),
        "uptime_secs": started.elapsed().as_secs(),
        "config": config_path,
        "kernel": kernel.is_some(),
        "modes": modes,
        "programs": programs,
        "unavailable": unavailable,
        "guarded": guarded,
        "guarded_pids": guarded_pids,
        "created_files": kernel.and_then(Kernel::created_files),
        "created_files_detail": kernel.and_then(Kernel::created_files_detail),
        "environ_watch": kernel.and_then(Kernel::environ_watch),
        "xdp": super::status::xdp_fields(config, kernel),
        "egress": super::status::egress_fields(config, kernel),
        "checks": checks::continuous::summary(),
        "providers": crate::providers::status_json(
            &config.providers,
            gateway.addr(),
            super::status::gateway_kernel_guarded(kernel),
        ),
        "fleet": crate::fleet::status_json(),
        "counters": counters,
    })
}

/// The host-name egress targets and the re-resolve floor.
fn host_targets(config: &Config) -> (Vec<(String, u16)>, Duration) {
    let hosts = config
        .egress
        .allow
        .iter()
        .filter_map(|target| match target {
            EgressTarget::Host { host, port } => Some((host.clone(), *port)),
            EgressTarget::Net { .. } => None,
        })
        .collect();
    (hosts, Duration::from_secs(config.egress.min_refresh_secs))
}

/// Compiles the new config first (every check, every file it names read); an invalid one is
/// refused and the old one keeps running. Then the kernel maps are written, all or nothing, and
/// only when they are in place does the proxy switch to its new settings. So a failure at any
/// step leaves the old config in force, kernel and proxy alike.
/// Returns the config now in force, or why the reload was refused.
fn reload(
    config_path: &Path,
    kernel: Option<&mut Kernel>,
    proxy: Option<&Proxy>,
    gateway: &mut Gateway,
) -> Result<Config, String> {
    systemd::notify("RELOADING=1");
    // A panic anywhere here (a parser on the new file, staging, the kernel apply) refuses the
    // reload like an error: it must not end the daemon.
    let outcome = crate::contain::contain(|| {
        compile::load(config_path)
            .map_err(anyhow::Error::from)
            .and_then(|Compiled { config, proxy: settings, providers }| {
                let staged = match (proxy, settings) {
                    (Some(proxy), Some(settings)) => Some(proxy.prepare(&config.proxy, settings)),
                    (Some(_), None) => {
                        tracing::warn!("proxy.enabled = false applies at the next restart; the proxy keeps its settings");
                        None
                    }
                    (None, _) => None,
                };
                providers.require_keys().map_err(anyhow::Error::msg)?;
                gateway
                    .bind_if_needed(
                        config.providers.listen,
                        config.providers.max_connections,
                        providers.has_providers(),
                    )
                    .map_err(anyhow::Error::msg)?;
                if let Some(kernel) = kernel {
                    kernel.apply(&config)?;
                }
                if let (Some(proxy), Some(staged)) = (proxy, staged) {
                    proxy.commit(staged);
                }
                gateway.commit(providers.table);
                Ok(config)
            })
    })
    .unwrap_or_else(|panicked| Err(anyhow::Error::from(panicked).context("the new config")));
    let result = match outcome {
        Ok(config) => {
            tracing::info!("config reloaded");
            crate::export::reloaded(&config.export);
            audit::emit("reloaded", audit::fields(json!({ "config": config_path })));
            Ok(config)
        }
        Err(err) => {
            tracing::error!("reload refused, the previous config stays in force: {err:#}");
            audit::emit(
                "reload_failed",
                audit::fields(json!({ "config": config_path, "error": format!("{err:#}") })),
            );
            Err(format!("{err:#}"))
        }
    };
    systemd::notify("READY=1");
    result
}
