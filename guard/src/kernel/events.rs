//! Reads the kernel's ring buffers and turns each record into an audit line; forwards aya-log
//! output from the programs to the log.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use guard_common::{
    bind::{BindEvent, FAMILY_V4},
    verdict,
};
use serde_json::{json, Map, Value};
use tokio::io::unix::AsyncFd;

use super::KernelError;
use crate::audit;

pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn bind_record(event: &BindEvent) -> (&'static str, Map<String, Value>) {
    let (family, addr) = if event.family == FAMILY_V4 {
        let a = &event.addr;
        ("ipv4", Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string())
    } else {
        ("ipv6", Ipv6Addr::from(event.addr).to_string())
    };
    let kind = if event.verdict == verdict::DENIED {
        "bind_denied"
    } else {
        "bind_would_deny"
    };
    let record = audit::fields(json!({
        "severity": "high",
        "pid": event.tgid,
        "tid": event.pid,
        "uid": event.uid,
        "comm": comm(&event.comm),
        "family": family,
        "addr": addr,
        "port": event.port,
    }));
    (kind, record)
}

/// Emits an audit line for every bind event until the map is closed.
pub async fn read_bind_events(ring: RingBuf<MapData>) -> Result<(), KernelError> {
    let name = guard_common::bind::MAP_BIND_EVENTS;
    let mut fd = register(ring).map_err(|source| KernelError::Reader { name, source })?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .map_err(|source| KernelError::Reader { name, source })?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match guard_common::read_record::<BindEvent>(&item) {
                Some(event) => {
                    let (kind, record) = bind_record(&event);
                    tracing::warn!(
                        kind,
                        port = event.port,
                        pid = event.tgid,
                        "bind rule violation"
                    );
                    audit::emit(kind, record);
                }
                None => tracing::warn!(len = item.len(), "short record in {name}; dropped"),
            }
        }
        guard.clear_ready();
    }
}

/// Registers `inner` with the reactor. `AsyncFd::new` is deprecated for owners whose fd could be
/// closed while registered; here `AsyncFd` owns the map object, so the fd lives exactly as long as
/// the registration, and the safe constructor is kept rather than `unsafe` (forbidden in this crate).
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    AsyncFd::new(inner)
}

/// Forwards the programs' aya-log records to the `log` facade (and so to tracing).
pub async fn forward_program_logs(
    logger: EbpfLogger<&'static dyn log::Log>,
) -> Result<(), KernelError> {
    let name = "AYA_LOGS";
    let mut fd = register(logger).map_err(|source| KernelError::Reader { name, source })?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .map_err(|source| KernelError::Reader { name, source })?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
