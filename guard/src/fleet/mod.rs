//! The fleet (issue 15): per-key and per-address limits and budgets shared by every proxyguard on
//! one Redis, safe when Redis is not, and key state (revocations, suspensions) that reaches every
//! host within a second.
//!
//! - `conn`: the connection, to one Redis server or to a Redis Cluster.
//! - `script`: the windows a request touches and the Lua that checks and counts them in one call.
//! - `breaker`: the circuit breaker; while it is open, `on_redis_error` answers at once.
//! - `keystate`: revocations and suspensions, published to Redis and polled from it.
//!
//! The local limiters keep running in every mode (they never refuse before the shared ones do:
//! a host's own count is part of the fleet's). While Redis is unreachable, `local` adds the share
//! limiters (each limit ÷ `expected_instances`), built in `proxy::state`.

pub mod breaker;
pub mod conn;
pub mod keystate;
pub mod metrics;
pub mod script;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::StatusCode;
use redis::{ErrorKind, Script, ServerErrorKind};
use serde_json::{json, Value};
use thread_local::ThreadLocal;

use crate::{
    config::fleet::{FleetSection, OnRedisError},
    proxy::{budget::policy::Policy, reject::Reject},
};
use breaker::{Breaker, BreakerState, Transition};
use conn::{Backend, Conn};
use script::{Client, Counter, Kind, Reserve, Window, Windows};

/// How often the probe task tries an unreachable Redis, and how often key state is polled.
const PROBE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0} ms")]
    Timeout(u64),
    #[error("redis answered {0:?}, not what the script returns")]
    Answer(Vec<i64>),
}

/// `[fleet]`, compiled: the password read from its file.
#[derive(Clone, PartialEq)]
pub struct FleetSettings {
    pub redis_url: String,
    /// A Redis Cluster's seed nodes (`redis_url` first); empty: one server.
    pub cluster_seeds: Vec<String>,
    pub password: Option<String>,
    pub instance: String,
    pub expected_instances: u32,
    pub on_redis_error: OnRedisError,
    pub timeout: Duration,
}

impl std::fmt::Debug for FleetSettings {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("redis_url", &self.redis_url)
            .field("cluster_seeds", &self.cluster_seeds)
            .field("instance", &self.instance)
            .field("expected_instances", &self.expected_instances)
            .field("on_redis_error", &self.on_redis_error)
            .finish()
    }
}

/// Compiles `[fleet]`; `None` when it is off or has an error (pushed).
pub fn compile(
    section: &FleetSection,
    errors: &mut Vec<crate::config::FieldError>,
) -> Option<FleetSettings> {
    if !section.enabled() {
        return None;
    }
    let mut failed = false;
    let password = section.password_file.as_deref().and_then(|path| {
        let read = read_password(path);
        if let Err(message) = &read {
            failed = true;
            errors.push(crate::config::FieldError {
                field: "fleet.password_file".into(),
                line: None,
                message: message.clone(),
            });
        }
        read.ok()
    });
    let instance = if section.instance.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "proxyguard".into())
    } else {
        section.instance.clone()
    };
    let cluster_seeds = if section.cluster {
        std::iter::once(&section.redis_url)
            .chain(&section.cluster_seeds)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    (!failed).then(|| FleetSettings {
        redis_url: section.redis_url.clone(),
        cluster_seeds,
        password,
        instance,
        expected_instances: section.expected_instances.max(1),
        on_redis_error: section.on_redis_error,
        timeout: Duration::from_millis(section.timeout_ms.max(1)),
    })
}

/// A secret file: this user's, mode 0600 or stricter, one line.
fn read_password(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta =
        std::fs::metadata(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is owned by uid {}, not by the user proxyguard runs as; a secret file must be theirs (chown it)",
            path.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let password = text.trim();
    if password.is_empty() || password.contains(['\n', '\r']) {
        return Err(format!(
            "{} is empty or more than one line; write Redis's password alone on one line",
            path.display()
        ));
    }
    Ok(password.to_owned())
}

/// How requests are limited right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through Redis, with every instance.
    Shared,
    /// Redis is unreachable: each instance holds its share.
    Local,
    Allow,
    Deny,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Local => "local",
            Mode::Allow => "allow",
            Mode::Deny => "deny",
        }
    }
}

/// How long a thread's settlements gather before they go to Redis in one call.
const SETTLE_BATCH: Duration = Duration::from_millis(5);

/// A settlement: key name and counter, amount and TTL.
type Settlement = ((Arc<str>, Window), (f64, u64));

/// A thread's settlements not sent yet: the sum per key name and counter, with the counter's TTL
/// (their Redis keys are formatted once per batch, not once per answer).
#[derive(Default)]
struct Settling {
    amounts: HashMap<(Arc<str>, Window), (f64, u64)>,
    /// A task will send them.
    scheduled: bool,
}

/// What the admit script answered.
enum Answer {
    Admitted,
    /// Refused for the key: its rate (index 0, with the microseconds to wait) or its `index`th
    /// counter.
    Key(usize, u64),
    /// Refused for the address's rate, with the microseconds to wait.
    Address(u64),
}

/// What the fleet says of a request.
pub enum Verdict {
    /// Counted in Redis; settle the reservation when the answer ends.
    Shared(Option<Reservation>),
    Refused(Reject),
    /// Redis is unreachable: the caller applies the mode (`Mode::Local`, `Allow` or `Deny`).
    Unavailable(Mode),
}

pub struct Fleet {
    pub settings: FleetSettings,
    backend: Backend,
    /// One connection per thread that calls Redis (`connection`).
    conns: ThreadLocal<Conn>,
    /// Per thread, the settlements waiting for their batch (`spawn_adjust`).
    settling: ThreadLocal<Arc<Mutex<Settling>>>,
    breaker: Breaker,
    admit: Script,
    adjust: Script,
    /// Changes of mode since the start, for the metric.
    pub changes: AtomicU64,
    /// Hashes of keys revoked anywhere in the fleet.
    revoked: ArcSwap<HashSet<[u8; 32]>>,
    keystate: keystate::KeyState,
    /// The last mode change, for `status`.
    since: Mutex<(String, String)>,
    /// What this instance admitted while Redis was unreachable, per key name: `(amount, ttl)` per
    /// counter, added to the shared counters when Redis answers again.
    owed: Mutex<HashMap<Arc<str>, Owed>>,
}

/// A key's counts admitted apart: `(amount, ttl)` per counter.
type Owed = HashMap<Window, (f64, u64)>;

fn unavailable() -> Reject {
    Reject::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "fleet_unavailable",
        "the shared limits cannot be checked now; retry shortly",
    )
}

impl Fleet {
    /// Connects lazily (Redis may be down at start: the breaker starts open and the probe task
    /// closes it) and starts the probe and key-state tasks.
    pub fn start(settings: FleetSettings) -> Result<Arc<Fleet>, FleetError> {
        let backend = Backend::new(
            &settings.redis_url,
            &settings.cluster_seeds,
            settings.password.as_deref(),
            settings.timeout,
        )?;
        // Made now so that a bad URL or setting fails the start, not the first request.
        let conns = ThreadLocal::new();
        conns.get_or_try(|| backend.connect_lazily())?;
        let fleet = Arc::new(Fleet {
            settings,
            backend,
            conns,
            settling: ThreadLocal::new(),
            breaker: Breaker::new_open(),
            admit: Script::new(script::ADMIT),
            adjust: Script::new(script::ADJUST),
            changes: AtomicU64::new(0),
            revoked: ArcSwap::default(),
            keystate: keystate::KeyState::default(),
            owed: Mutex::default(),
            since: Mutex::new((
                String::new(),
                crate::proxy::budget::clock::rfc3339(crate::proxy::budget::clock::now()),
            )),
        });
        fleet.report(None, "start");
        tokio::spawn(probe(Arc::downgrade(&fleet)));
        tokio::spawn(keystate::poll(Arc::downgrade(&fleet)));
        Ok(fleet)
    }

    pub fn mode(&self) -> Mode {
        match self.breaker.state() {
            BreakerState::Closed => Mode::Shared,
            _ => self.fallback(),
        }
    }

    fn fallback(&self) -> Mode {
        match self.settings.on_redis_error {
            OnRedisError::Local => Mode::Local,
            OnRedisError::Allow => Mode::Allow,
            OnRedisError::Deny => Mode::Deny,
        }
    }

    /// This thread's connection, made the first time the thread asks (lazily: it connects on
    /// first use). Each request worker is a current-thread runtime, so with a connection of its
    /// own a call is written, read and answered on the request's thread; one multiplexed
    /// connection shared by every worker would wake its driver's thread and then the request's,
    /// twice a call (futex wake-ups, the fleet bench's syscalls per request). Call it from
    /// within a tokio runtime.
    fn connection(&self) -> Option<Conn> {
        self.conns
            .get_or_try(|| self.backend.connect_lazily())
            .map_err(|err| tracing::debug!(error = %err, "fleet: no redis connection"))
            .ok()
            .cloned()
    }

    /// Reports a change of the breaker: an event, the counter, `status`.
    fn report(&self, transition: Transition, why: &str) {
        let (from, to) = match transition {
            Some((from, to)) => (from.as_str(), to),
            None if why == "start" => ("", self.breaker.state()),
            None => return,
        };
        let mode = match to {
            BreakerState::Closed => Mode::Shared,
            _ => self.fallback(),
        };
        self.changes.fetch_add(1, Ordering::Relaxed);
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = (
            why.to_owned(),
            crate::proxy::budget::clock::rfc3339(crate::proxy::budget::clock::now()),
        );
        crate::audit::emit(
            "fleet_mode",
            crate::audit::fields(json!({
                "mode": mode.as_str(),
                "breaker": to.as_str(),
                "previous": from,
                "instance": self.settings.instance,
                "why": why,
            })),
        );
    }

    /// Runs `windows` of key `name` through the admit script: one call, or on a Redis Cluster
    /// one per hash tag. The key's windows and the address's rate are two slots there, most
    /// often on two nodes, so they go as two calls sent together (one round trip's wait). Each
    /// checks and counts its own; what one counted is given back when the other refuses or
    /// fails, so that a refused request counts nowhere, as with one call.
    async fn run(&self, name: &str, windows: &Windows) -> Result<Answer, FleetError> {
        let split = match self.backend.is_cluster() {
            true => windows.split_address(),
            false => None,
        };
        let Some((key, address)) = split else {
            return self.call(name, windows).await;
        };
        let (on_key, on_address) = tokio::join!(self.call(name, &key), self.call(name, &address));
        if let (Ok(Answer::Admitted), Ok(Answer::Admitted)) = (&on_key, &on_address) {
            return Ok(Answer::Admitted);
        }
        if let Ok(Answer::Admitted) = on_key {
            self.spawn_refund(name, &key);
        }
        if let Ok(Answer::Admitted) = on_address {
            self.spawn_refund(name, &address);
        }
        match (on_key, on_address) {
            // The address first, as in one call: a request both refuse is the address's.
            (_, Ok(refused @ Answer::Address(_))) => Ok(refused),
            (Err(err), _) | (_, Err(err)) => Err(err),
            (on_key, _) => on_key,
        }
    }

    /// Gives back, in the background, what an admitted call of `windows` counted.
    fn spawn_refund(&self, name: &str, windows: &Windows) {
        let (Ok(runtime), Some(mut conn)) =
            (tokio::runtime::Handle::try_current(), self.connection())
        else {
            return;
        };
        let cmd = windows.refund_command(self.adjust.get_hash(), name);
        let script = self.adjust.clone();
        let timeout = self.settings.timeout * 10;
        runtime.spawn(async move {
            let call = evalsha::<i64>(&script, &cmd, &mut conn);
            if let Ok(Err(err)) = tokio::time::timeout(timeout, call).await {
                tracing::debug!(error = %err, "fleet: a refund did not reach redis");
            }
        });
    }

    /// Runs `windows` of key `name` through the admit script in one call, within the timeout;
    /// the call's time goes to `proxyguard_fleet_call_seconds`.
    async fn call(&self, name: &str, windows: &Windows) -> Result<Answer, FleetError> {
        let Some(mut conn) = self.connection() else {
            return Err(FleetError::Timeout(0));
        };
        let cmd = windows.admit_command(self.admit.get_hash(), name);
        let timed_out = || FleetError::Timeout(self.settings.timeout.as_millis() as u64);
        let started = tokio::time::Instant::now();
        let deadline = started + self.settings.timeout;
        let first = tokio::time::timeout_at(deadline, evalsha(&self.admit, &cmd, &mut conn)).await;
        let answer = match first {
            // A thread's connection is used only by its own requests: after Redis came back,
            // its first call finds the old connection gone, and that call (which starts the
            // reconnect) is tried once more on the new one, within the same timeout. (A call
            // lost with its connection after Redis ran it counts twice: counts err high.)
            Ok(Err(err)) if err.is_io_error() || err.is_connection_dropped() => {
                tokio::time::timeout_at(deadline, evalsha(&self.admit, &cmd, &mut conn)).await
            }
            answer => answer,
        };
        metrics::call_seconds().observe(started.elapsed().as_secs_f64());
        let answer: Vec<i64> = answer.map_err(|_| timed_out())??;
        match answer.as_slice() {
            [0] => Ok(Answer::Admitted),
            [1, index, retry] => Ok(Answer::Key(*index as usize, (*retry).max(0) as u64)),
            [2, 0, retry] => Ok(Answer::Address((*retry).max(0) as u64)),
            _ => Err(FleetError::Answer(answer)),
        }
    }

    /// Checks and counts a request of key `name` (its `rate` and `policy`, and what it reserves)
    /// and of `client` (with the per-address `rpm` and `burst`), in one call: one round trip.
    pub async fn admit(
        self: &Arc<Self>,
        name: &Arc<str>,
        rate: Option<(u32, u32)>,
        policy: &Policy,
        reserve: Option<Reserve>,
        client: Option<(Client, u32, u32)>,
    ) -> Verdict {
        if self.breaker.state() != BreakerState::Closed {
            return Verdict::Unavailable(self.fallback());
        }
        let now = crate::proxy::budget::clock::now();
        let mut windows = script::key_windows(rate, policy, reserve, now);
        windows.address = client
            .and_then(|(client, rpm, burst)| script::gcra(rpm, burst).map(|rate| (client, rate)));
        if windows.checks_nothing() {
            return Verdict::Shared(reserve.map(|_| self.reservation(name, windows)));
        }
        let answer = match self.run(name, &windows).await {
            Ok(answer) => answer,
            Err(err) => {
                let why = err.to_string();
                tracing::debug!(error = %why, "fleet: redis call failed");
                self.report(self.breaker.failure(), &why);
                return Verdict::Unavailable(self.fallback());
            }
        };
        self.report(self.breaker.success(), "redis answered");
        match answer {
            Answer::Admitted => Verdict::Shared(reserve.map(|_| self.reservation(name, windows))),
            Answer::Address(retry_us) => {
                Verdict::Refused(rate_reject("rate_ip", "this address", retry_us))
            }
            Answer::Key(0, retry_us) => {
                Verdict::Refused(rate_reject("rate_key", "this key", retry_us))
            }
            Answer::Key(index, _) => {
                let kind = windows
                    .counters
                    .get(index - 1)
                    .map_or(Kind::Requests, |c| c.window.kind);
                let (reason, what) = kind.refusal();
                let retry = kind.retry(now);
                let mut reject = Reject::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    reason,
                    format!("this key's {what} is spent across the fleet; retry after {retry}s"),
                );
                reject.retry_after = Some(retry.max(1));
                Verdict::Refused(reject)
            }
        }
    }

    /// What an admitted metered request settles: its checked counters and its deferred ones.
    fn reservation(self: &Arc<Self>, name: &Arc<str>, windows: Windows) -> Reservation {
        let mut reserved = windows.counters;
        reserved.extend(windows.deferred);
        Reservation {
            fleet: self.clone(),
            reserved,
            name: name.clone(),
            apart: false,
            settled: false,
        }
    }

    /// A metered request admitted while Redis is unreachable (`local` or `allow`): its real usage
    /// is owed to the shared counters, and added when Redis answers again.
    pub fn apart(
        self: &Arc<Self>,
        name: &Arc<str>,
        policy: &Policy,
        reserve: Reserve,
    ) -> Reservation {
        let now = crate::proxy::budget::clock::now();
        let windows = script::key_windows(None, policy, Some(reserve), now);
        let mut reservation = self.reservation(name, windows);
        reservation.apart = true;
        reservation
    }

    fn owe(&self, name: &Arc<str>, amounts: impl IntoIterator<Item = (Window, f64, u64)>) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        let entry = owed.entry(name.clone()).or_default();
        for (window, amount, ttl) in amounts {
            let slot = entry.entry(window).or_insert((0.0, ttl));
            slot.0 += amount;
            slot.1 = slot.1.max(ttl);
        }
    }

    /// Adds what this instance admitted while apart to the shared counters (one call per key
    /// name, each on its own hash tag); what fails stays owed.
    async fn pay_owed(&self) {
        let owed = std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()));
        for (name, amounts) in owed {
            let windows = Windows::additions(
                amounts
                    .iter()
                    .map(|(window, (amount, ttl))| (*window, *amount, *ttl)),
            );
            match self.run(&name, &windows).await {
                Ok(_) => tracing::info!(key = %name, "fleet: counts admitted while apart added"),
                Err(err) => {
                    tracing::debug!(error = %err, "fleet: owed counts not added yet");
                    self.owe(
                        &name,
                        amounts
                            .into_iter()
                            .map(|(window, (amount, ttl))| (window, amount, ttl)),
                    );
                }
            }
        }
    }

    /// What a request refused while Redis is unreachable gets in `deny` mode.
    pub fn unavailable(&self) -> Reject {
        unavailable()
    }

    /// Adds each amount (`(window, amount, ttl)`) to its counter of key `name`, in the
    /// background (off the request's path). The settlements of one thread within
    /// `SETTLE_BATCH` go out together, summed per counter, in one call: under load one call per
    /// batch, not one per answer. What cannot be sent (the breaker is open, or the call fails)
    /// is owed, and added when Redis answers again: the deferred counters' only count is this.
    fn spawn_adjust(
        self: &Arc<Self>,
        name: &Arc<str>,
        adjust: impl Iterator<Item = (Window, f64, u64)>,
    ) {
        let mut adjust = adjust.filter(|(_, d, _)| *d != 0.0).peekable();
        if adjust.peek().is_none() {
            return;
        }
        if self.breaker.state() != BreakerState::Closed {
            self.owe(name, adjust);
            return;
        }
        let batch = self.settling.get_or_default();
        {
            let mut pending = batch.lock().unwrap_or_else(|p| p.into_inner());
            for (window, amount, ttl) in adjust {
                let slot = pending.amounts.entry((name.clone(), window)).or_default();
                slot.0 += amount;
                slot.1 = slot.1.max(ttl);
            }
            if pending.scheduled {
                return;
            }
            pending.scheduled = true;
        }
        // The runtime first: a connection is made on (and for) the runtime of this thread.
        let (Ok(runtime), Some(mut conn)) =
            (tokio::runtime::Handle::try_current(), self.connection())
        else {
            let amounts = {
                let mut pending = batch.lock().unwrap_or_else(|p| p.into_inner());
                pending.scheduled = false;
                std::mem::take(&mut pending.amounts)
            };
            self.owe_all(amounts);
            return;
        };
        let batch = batch.clone();
        let fleet = self.clone();
        runtime.spawn(async move {
            tokio::time::sleep(SETTLE_BATCH).await;
            let amounts = {
                let mut pending = batch.lock().unwrap_or_else(|p| p.into_inner());
                pending.scheduled = false;
                std::mem::take(&mut pending.amounts)
            };
            let mut amounts: Vec<_> = amounts.into_iter().filter(|(_, d)| d.0 != 0.0).collect();
            // One call holds the whole batch on one server; on a Cluster, one call per key
            // name (its hash tag, so its slot).
            let calls: Vec<&[_]> = if fleet.backend.is_cluster() {
                amounts.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
                amounts.chunk_by(|a, b| a.0 .0 == b.0 .0).collect()
            } else {
                vec![&amounts[..]]
            };
            let timeout = fleet.settings.timeout * 10;
            for amounts in calls {
                let cmd = adjust_command(&fleet.adjust, amounts);
                let call = evalsha::<i64>(&fleet.adjust, &cmd, &mut conn);
                let why = match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => FleetError::Timeout(timeout.as_millis() as u64).to_string(),
                };
                // A call that timed out may have been run: owed again, it counts high.
                tracing::debug!(error = %why, "fleet: a settlement did not reach redis");
                fleet.report(fleet.breaker.failure(), &why);
                fleet.owe_all(amounts.iter().cloned());
            }
        });
    }

    /// Owes settlements that were not sent.
    fn owe_all(&self, amounts: impl IntoIterator<Item = Settlement>) {
        for ((name, window), (amount, ttl)) in amounts {
            self.owe(&name, [(window, amount, ttl)]);
        }
    }

    /// Whether the key with `hash` was revoked somewhere in the fleet.
    pub fn revoked(&self, hash: &[u8; 32]) -> bool {
        self.revoked.load().contains(hash)
    }

    /// `status`'s fleet block.
    pub fn status(&self) -> Value {
        let (why, since) = self.since.lock().unwrap_or_else(|p| p.into_inner()).clone();
        json!({
            "instance": self.settings.instance,
            "redis_url": self.settings.redis_url,
            "cluster": self.backend.is_cluster(),
            "mode": self.mode().as_str(),
            "breaker": self.breaker.state().as_str(),
            "on_redis_error": self.settings.on_redis_error.as_str(),
            "expected_instances": self.settings.expected_instances,
            "mode_changes": self.changes.load(Ordering::Relaxed),
            "since": since,
            "why": why,
            "revoked_keys": self.revoked.load().len(),
        })
    }

    /// The fleet's counts of `name` today, for `proxyguard usage` (`None` when Redis does not
    /// answer).
    pub async fn usage(&self, name: &str) -> Option<Value> {
        if self.breaker.state() != BreakerState::Closed {
            return None;
        }
        let mut conn = self.connection()?;
        let now = crate::proxy::budget::clock::now();
        let day = crate::proxy::budget::clock::day(now);
        let keys: Vec<String> = [Kind::Requests, Kind::Tokens, Kind::UsdDay]
            .into_iter()
            .map(|kind| Window { kind, number: day }.key(name))
            .collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let call = mget.query_async::<Vec<Option<f64>>>(&mut conn);
        let values = tokio::time::timeout(self.settings.timeout * 10, call)
            .await
            .ok()?
            .ok()?;
        let at = |i: usize| values.get(i).copied().flatten().unwrap_or(0.0);
        Some(json!({
            "requests": at(0) as u64,
            "tokens": at(1).max(0.0) as u64,
            "usd": at(2).max(0.0),
        }))
    }
}

/// `cmd`, an `EVALSHA` of `script`; a Redis that does not hold the script (restarted, or its
/// scripts flushed) gets it loaded, and the call again.
async fn evalsha<T: redis::FromRedisValue>(
    script: &Script,
    cmd: &redis::Cmd,
    conn: &mut Conn,
) -> redis::RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        answer => answer,
    }
}

/// The `EVALSHA` of [`script::ADJUST`] adding each amount to its counter.
fn adjust_command(script: &Script, amounts: &[Settlement]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(3 + 3 * amounts.len(), 80 * amounts.len());
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(amounts.len());
    for ((name, window), _) in amounts {
        cmd.arg(window.key(name));
    }
    for (_, (amount, ttl)) in amounts {
        cmd.arg(*amount).arg(*ttl);
    }
    cmd
}

fn rate_reject(reason: &'static str, who: &str, retry_us: u64) -> Reject {
    let seconds = retry_us.div_ceil(1_000_000).max(1);
    let mut reject = Reject::new(
        StatusCode::TOO_MANY_REQUESTS,
        reason,
        format!("rate limit exceeded for {who} across the fleet; retry after {seconds}s"),
    );
    reject.retry_after = Some(seconds);
    reject
}

/// A request's counts in Redis, settled to its real usage when the answer ends (the difference is
/// added), or given back when the request ends without an answer.
pub struct Reservation {
    fleet: Arc<Fleet>,
    /// The counters, with what was reserved on each (`amount`).
    reserved: Vec<Counter>,
    name: Arc<str>,
    /// Admitted while Redis was unreachable: settling owes the usage instead of adjusting.
    apart: bool,
    settled: bool,
}

impl Reservation {
    /// Charges `input` and `output` tokens and `usd` in place of what was reserved.
    pub fn settle(mut self, input: u64, output: u64, usd: f64) {
        self.settled = true;
        let used = |counter: &Counter| match counter.window.kind {
            Kind::Requests => 1.0,
            Kind::Tokens | Kind::Tpm => (input + output) as f64,
            Kind::Input => input as f64,
            Kind::Output => output as f64,
            Kind::UsdDay | Kind::UsdMonth => usd,
        };
        if self.apart {
            let owed = self.reserved.iter().map(|c| (c.window, used(c), c.ttl));
            self.fleet.owe(&self.name, owed);
            return;
        }
        let adjust = self
            .reserved
            .iter()
            .map(|c| (c.window, used(c) - c.amount, c.ttl));
        self.fleet.spawn_adjust(&self.name, adjust);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled && !self.apart {
            let adjust = self.reserved.iter().map(|c| (c.window, -c.amount, c.ttl));
            self.fleet.spawn_adjust(&self.name, adjust);
        }
    }
}

/// While the breaker is open, tries Redis once a second (half-open); a probe answered
/// (`Conn::probe`: a `PING`, on a Cluster one to each slot's primary) closes it.
async fn probe(fleet: std::sync::Weak<Fleet>) {
    let mut tick = tokio::time::interval(PROBE);
    loop {
        tick.tick().await;
        let Some(fleet) = fleet.upgrade() else { return };
        if fleet.breaker.state() == BreakerState::Closed {
            continue;
        }
        fleet.report(fleet.breaker.probing(), "probing redis");
        let Some(mut conn) = fleet.connection() else {
            continue;
        };
        match tokio::time::timeout(Duration::from_millis(500), conn.probe()).await {
            Ok(Ok(_)) => fleet.report(fleet.breaker.success(), "redis answered a probe"),
            Ok(Err(err)) => fleet.report(fleet.breaker.probe_failed(), &err.to_string()),
            Err(_) => fleet.report(fleet.breaker.probe_failed(), "probe timed out"),
        }
    }
}

/// The running daemon's fleet, for `status`, `usage`, the metrics and the control socket.
static FLEET: OnceLock<Mutex<Option<Arc<Fleet>>>> = OnceLock::new();

pub fn publish(fleet: Option<Arc<Fleet>>) {
    *FLEET
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = fleet;
}

pub fn published() -> Option<Arc<Fleet>> {
    FLEET
        .get()?
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// `status`'s `fleet` field: null when no fleet is configured.
pub fn status_json() -> Value {
    published().map_or(Value::Null, |fleet| fleet.status())
}

/// `proxyguard usage` with the fleet's counts: each key's row gets a `fleet` block (today's
/// requests, tokens and spend across every instance; null while Redis does not answer).
pub async fn add_usage(mut report: Value) -> Value {
    let Some(fleet) = published() else {
        return report;
    };
    if let Some(keys) = report.get_mut("keys").and_then(Value::as_array_mut) {
        for row in keys {
            let Some(name) = row.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let shared = fleet.usage(&name).await;
            row["fleet"] = json!({
                "instance": fleet.settings.instance,
                "mode": fleet.mode().as_str(),
                "today": shared,
            });
        }
    }
    report
}
