//! The daemon's side: accepts root-only connections and hands status and reload requests to the
//! main loop, which owns the kernel state; streams audit records and answers snapshots itself.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Instant,
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use super::{Command, ControlError};
use crate::audit;

/// What the main loop must answer.
pub enum Request {
    Status(oneshot::Sender<Value>),
    Reload(oneshot::Sender<Result<(), String>>),
}

/// The proxy's metrics in the text exposition format (blocking: it waits for finished requests
/// to be counted).
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// What a snapshot is made of, beside the audit feed's tallies.
pub struct Snapshots {
    pub started: Instant,
    pub kernel: bool,
    pub metrics: Option<MetricsText>,
    /// One snapshot at a time: however many `top`s poll, the daemon encodes once at a time.
    pub one_at_a_time: tokio::sync::Mutex<()>,
}

/// Refused clients and security events a snapshot carries.
const SNAPSHOT_CLIENTS: usize = 10;
const SNAPSHOT_EVENTS: usize = 10;

/// Binds `path` (socket 0600), refusing to steal it from a live daemon. A directory it has to
/// create is made 0700; one that exists is left as it is, because it may be shared (`/tmp`,
/// `/run`): the socket's own mode and the peer-uid check are what keep others out.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let shown = path.display().to_string();
    let err = |source| ControlError::Bind {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning { path: shown });
        }
        // Left behind by a daemon that died.
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves connections until the listener fails.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    snapshots: Arc<Snapshots>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, requests.clone(), snapshots.clone()));
            }
            Err(err) => {
                tracing::error!("control socket stopped accepting: {err}");
                return;
            }
        }
    }
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Request>, snapshots: Arc<Snapshots>) {
    // The socket's mode already keeps others out; the peer check holds even if it is loosened.
    let root = stream.peer_cred().is_ok_and(|cred| cred.uid() == 0);
    let (read, mut write) = stream.into_split();
    if !root {
        let _ = write
            .write_all(b"{\"error\":\"only root may use the control socket\"}\n")
            .await;
        return;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(4096));
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reader.read_line(&mut line),
    )
    .await;
    let command = match read {
        Ok(Ok(_)) => serde_json::from_str::<Command>(&line),
        _ => return,
    };
    let answer = match command {
        Err(err) => json!({ "error": format!("not a control command: {err}") }),
        Ok(Command::Status) => {
            let (tx, rx) = oneshot::channel();
            if requests.send(Request::Status(tx)).await.is_err() {
                return;
            }
            rx.await
                .unwrap_or_else(|_| json!({ "error": "the daemon is stopping" }))
        }
        Ok(Command::Reload) => {
            let (tx, rx) = oneshot::channel();
            if requests.send(Request::Reload(tx)).await.is_err() {
                return;
            }
            match rx.await {
                Ok(Ok(())) => json!({ "ok": true }),
                Ok(Err(error)) => json!({ "ok": false, "error": error }),
                Err(_) => json!({ "error": "the daemon is stopping" }),
            }
        }
        Ok(Command::Snapshot) => snapshot(&snapshots).await,
        // The ledger answers these itself: a few map reads under its lock.
        Ok(Command::Usage { key }) => match crate::proxy::budget::published() {
            Some(ledger) => {
                let report = ledger.report(key.as_deref(), crate::proxy::budget::clock::now());
                crate::fleet::add_usage(report).await
            }
            None => json!({ "error": "the L7 proxy is not running" }),
        },
        Ok(Command::Resume { key }) => match crate::proxy::budget::published() {
            Some(ledger) => {
                let resumed = ledger.resume(&key);
                // Lifted on every host of the fleet too, whether or not it was suspended here.
                if let Some(fleet) = crate::fleet::published() {
                    fleet.publish(crate::fleet::keystate::Change::Resume(key.clone()));
                }
                json!({ "ok": true, "resumed": resumed })
            }
            None => json!({ "error": "the L7 proxy is not running" }),
        },
        Ok(Command::Events { follow }) => {
            stream_events(&mut write, follow).await;
            return;
        }
    };
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

/// The counters as they are now; `top` computes rates from two of them.
async fn snapshot(snapshots: &Snapshots) -> Value {
    let _turn = snapshots.one_at_a_time.lock().await;
    let metrics = match snapshots.metrics.clone() {
        Some(text) => tokio::task::spawn_blocking(move || text()).await.ok(),
        None => None,
    };
    let kernel: Vec<Value> = crate::kernel::last_counters()
        .into_iter()
        .map(|(program, counter, value)| json!({ "program": program, "counter": counter, "value": value }))
        .collect();
    let (refused, events) = super::glance::snapshot(SNAPSHOT_CLIENTS, SNAPSHOT_EVENTS);
    json!({
        "pid": std::process::id(),
        "uptime_secs": snapshots.started.elapsed().as_secs(),
        "kernel": snapshots.kernel,
        "proxy": snapshots.metrics.is_some(),
        "metrics": metrics,
        "kernel_counters": kernel,
        "refused": refused,
        "events": events,
    })
}

async fn stream_events(write: &mut tokio::net::unix::OwnedWriteHalf, follow: bool) {
    let (recent, mut live) = audit::subscribe();
    for line in recent {
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    if !follow {
        return;
    }
    loop {
        match live.recv().await {
            Ok(line) => {
                if write
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                let note = json!({ "kind": "events_lost", "missed": missed });
                if write
                    .write_all(format!("{note}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod socket_dir_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::bind;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_shared_directory_keeps_its_mode_and_a_new_one_is_private() {
        let top = tempfile::tempdir().unwrap();
        let shared = top.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let _listener = bind(&shared.join("control.sock")).unwrap();
        assert_eq!(
            mode(&shared),
            0o1777,
            "an existing directory is not ours to chmod"
        );
        assert_eq!(mode(&shared.join("control.sock")), 0o600);

        let fresh = top.path().join("new/run");
        let _listener = bind(&fresh.join("control.sock")).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }
}
