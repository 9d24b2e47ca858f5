//! The L7 guard proxy (threats 1-5, 8-10, 14, 15): it authenticates and checks every request
//! before the LLM proxy sees it, and streams the answers back.
//!
//! `Proxy` owns the listeners and the swappable settings; `pipeline` holds the checks in order;
//! `layers` holds one policy per file.

mod admin;
mod alerts;
mod audit_queue;
pub mod budget;
mod error;
mod forward;
pub(crate) mod framing_watch;
pub(crate) mod hop;
pub mod layers;
mod metrics;
mod pipeline;
mod record;
pub(crate) mod reject;
mod response_headers;
pub mod rollout_token;
pub mod routes;
mod server;
pub mod shapes;
mod sources;
mod state;
pub(crate) mod tls;
mod upstream_slots;
pub mod upstream_surface;
pub mod usage;
mod write_stall;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use error::ProxyError;
use metrics::Metrics;
pub(crate) use reject::Reject;
pub use response_headers::ResponseAllow;
pub use state::Settings;
use state::State;

use crate::config::ProxyConfig;

/// What every connection shares, on every worker: the current settings (swapped on reload) and
/// the metrics. The upstream connections are not shared: each worker owns its own
/// (`forward`'s per-thread pool).
pub struct Shared {
    state: ArcSwap<State>,
    metrics: Arc<Metrics>,
    /// Outlives reloads, so a reload does not re-arm every alert.
    alerts: alerts::SpikeAlerts,
    /// Outlives reloads and is resized by them, so streams running across a reload still count
    /// against the cap (a fresh set per reload would let each reload add a full cap's worth).
    upstream_slots: upstream_slots::UpstreamSlots,
    /// Open and pending connections per source; outlives reloads like the slots, so a reload
    /// does not forget who holds what.
    sources: Arc<sources::Sources>,
    /// What each key has used and reserved (issue 14); outlives reloads, and restarts on disk.
    ledger: Arc<budget::Ledger>,
    persister: std::sync::Mutex<Option<budget::persist::Persister>>,
    /// `[fleet]`: the shared limits in Redis; fixed at start.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// Settings built and checked, not yet in force.
pub struct Staged(State);

pub struct Proxy {
    shared: Arc<Shared>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub tls: bool,
    configured_listen: SocketAddr,
    /// Where the usage counters are written; fixed at start.
    state_dir: Option<std::path::PathBuf>,
    stop: watch::Sender<bool>,
    /// One accept loop per worker.
    fronts: Vec<JoinHandle<()>>,
    admin_task: JoinHandle<()>,
}

impl Proxy {
    /// Binds both listeners and serves `settings`, which the config compiler built (files read).
    /// The front address gets one `SO_REUSEPORT` socket per worker, each served on its worker;
    /// the admin listener stays on the caller's runtime.
    pub async fn start(
        config: &ProxyConfig,
        settings: Settings,
        workers: &[tokio::runtime::Handle],
    ) -> Result<Proxy, ProxyError> {
        let fleet = match settings.fleet.clone() {
            Some(fleet) => Some(crate::fleet::Fleet::start(fleet).map_err(ProxyError::Fleet)?),
            None => None,
        };
        crate::fleet::publish(fleet.clone());
        let state = State::build(config, settings, None);
        let tls = state.tls.is_some();
        if !config.listen.ip().is_loopback() && !tls {
            tracing::warn!(listen = %config.listen, "plaintext listener off loopback (allow_plaintext = true): keys and prompts cross the network unencrypted");
        }
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let fronts = crate::workers::bind(config.listen, workers.len()).map_err(|source| {
            ProxyError::Bind {
                addr: config.listen,
                source,
            }
        })?;
        let admin = bind(config.admin_listen).await?;
        let listen = fronts[0].local_addr().map_err(|source| ProxyError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.admin_listen,
            source,
        })?;

        let state_dir = budget::persist::state_dir(&config.usage);
        let book = state_dir
            .as_deref()
            .map(budget::persist::load)
            .unwrap_or_default();
        let ledger = Arc::new(budget::Ledger::new(book));
        ledger.configure(state.policies(), state.spike);
        let persister = state_dir.clone().map(|dir| {
            budget::persist::Persister::spawn(
                ledger.clone(),
                dir,
                Duration::from_secs(config.usage.persist_secs.max(1)),
            )
        });
        budget::publish(ledger.clone());
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            metrics: Arc::new(Metrics::new()),
            alerts: alerts::SpikeAlerts::default(),
            upstream_slots: upstream_slots::UpstreamSlots::new(
                config.limits.max_upstream_connections,
            ),
            sources: Arc::default(),
            ledger,
            persister: std::sync::Mutex::new(persister),
            fleet,
        });
        let (stop, stopped) = watch::channel(false);
        let drain = Duration::from_secs(config.timeouts.drain_secs);
        // The cap is global: one semaphore across the workers, taken once per connection.
        let slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
        let front_tasks = fronts
            .into_iter()
            .zip(workers)
            .enumerate()
            .map(|(index, (listener, worker))| {
                worker.spawn(server::serve(
                    listener,
                    index,
                    shared.clone(),
                    slots.clone(),
                    stopped.clone(),
                    drain,
                ))
            })
            .collect();
        let admin_task = tokio::spawn(admin::serve(admin, shared.clone(), stopped.clone()));
        // Idle per-IP limiter entries are forgotten once a minute.
        let pruned = shared.clone();
        let mut prune_stop = stopped;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let state = pruned.state.load();
                        state.rate.prune();
                        state.rollouts.prune();
                    }
                    _ = prune_stop.changed() => break,
                }
            }
        });
        Ok(Proxy {
            shared,
            listen,
            admin: admin_addr,
            tls,
            configured_listen: config.listen,
            state_dir,
            stop,
            fronts: front_tasks,
            admin_task,
        })
    }

    /// The state `config` and its compiled `settings` make, not yet in force, so a reload can
    /// still fail (in the kernel half) before anything changes.
    pub fn prepare(&self, config: &ProxyConfig, settings: Settings) -> Staged {
        if config.listen != self.configured_listen {
            tracing::warn!(listen = %config.listen, "proxy.listen changed; it applies at the next restart");
        }
        let fleet = self.shared.fleet.as_ref().map(|f| &f.settings);
        if settings.fleet.as_ref() != fleet {
            tracing::warn!("[fleet] changed; it applies at the next restart");
        }
        if budget::persist::state_dir(&config.usage) != self.state_dir {
            tracing::warn!("proxy.usage.state_dir changed; it applies at the next restart");
        }
        Staged(State::build(
            config,
            settings,
            Some(&self.shared.state.load()),
        ))
    }

    /// Swaps in staged settings at once; requests in flight finish on the old ones.
    pub fn commit(&self, staged: Staged) {
        // A key gone from this host's config is revoked on every host of the fleet.
        if let Some(fleet) = &self.shared.fleet {
            let hashes = |state: &State| -> Vec<[u8; 32]> {
                state.keys.keys().iter().map(|key| key.hash).collect()
            };
            fleet.revoke_removed(&hashes(&self.shared.state.load()), &hashes(&staged.0));
        }
        self.shared
            .upstream_slots
            .resize(staged.0.max_upstream_connections);
        self.shared
            .ledger
            .configure(staged.0.policies(), staged.0.spike);
        self.shared.state.store(Arc::new(staged.0));
    }

    /// The metrics as `/metrics` serves them, requests already finished counted first: what the
    /// control socket's snapshot (`proxyguard top`) reads. Blocking; call it off the workers.
    pub fn metrics_text(&self) -> crate::control::server::MetricsText {
        let shared = self.shared.clone();
        Arc::new(move || {
            audit_queue::flush(Duration::from_secs(1));
            shared.metrics.encode()
        })
    }

    /// Stops accepting, lets in-flight requests finish (up to `drain_secs`), then returns.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for front in self.fronts {
            let _ = front.await;
        }
        let _ = self.admin_task.await;
        // Every request's audit line is out before the daemon reports that it stops, and the
        // usage counters are on disk.
        let persister = self
            .shared
            .persister
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let _ = tokio::task::spawn_blocking(move || {
            audit_queue::flush(Duration::from_secs(5));
            if let Some(persister) = persister {
                persister.stop();
            }
        })
        .await;
    }
}
