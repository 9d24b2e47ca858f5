//! The sd_notify protocol: readiness, reload and stop notices to systemd over $NOTIFY_SOCKET.

use std::os::{
    linux::net::SocketAddrExt,
    unix::net::{SocketAddr, UnixDatagram},
};

/// Sends `state` (like `READY=1`) when running under systemd with `Type=notify`; otherwise nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(err) = sent {
        tracing::warn!("cannot notify systemd ({state}): {err}");
    }
}

/// Half the `WatchdogSec=` systemd set for us (`$WATCHDOG_USEC`), when it is meant for this
/// process: the pace at which the main loop must send `WATCHDOG=1`.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    (for_us && usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}
