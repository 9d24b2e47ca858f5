//! Reads the kernel's ring buffers and turns each record into an audit line (its only line: the
//! event is not logged a second time); forwards aya-log output from the programs to the log.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use guard_common::{
    bind::{BindEvent, FAMILY_V4, REASON_OWNER},
    egress::{EgressEvent, PROTO_UDP},
    environ::{EnvironEvent, SOURCE_LSM, SOURCE_PROBE, VERDICT_ALLOWED_EXE, VERDICT_SELF},
    verdict,
    xdp::{reason as xdp_reason, XdpEvent},
};
use serde_json::{json, Map, Value};
use tokio::io::unix::AsyncFd;

use super::{upstream::Destination, KernelError};
use crate::audit;

/// The family's name and the address as text; IPv4 sits in the first four bytes.
fn address(family: u16, addr: &[u8; 16]) -> (&'static str, String) {
    if family == FAMILY_V4 {
        (
            "ipv4",
            Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
        )
    } else {
        ("ipv6", Ipv6Addr::from(*addr).to_string())
    }
}

pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn bind_record(event: &BindEvent) -> (&'static str, Map<String, Value>) {
    let (family, addr) = address(event.family, &event.addr);
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
        "reason": if event.reason == REASON_OWNER { "not_owner" } else { "address" },
    }));
    (kind, record)
}

pub fn xdp_record(event: &XdpEvent) -> (&'static str, Map<String, Value>) {
    // Families are the AF_* numbers, which fit in u16.
    let (_, addr) = address(event.family, &event.addr);
    let kind = if event.verdict == verdict::DENIED {
        "syn_dropped"
    } else {
        "syn_would_drop"
    };
    let reason = match event.reason {
        xdp_reason::DENY_LIST => "deny_list",
        xdp_reason::NEW_SOURCE => "new_source",
        _ => "rate",
    };
    let record = audit::fields(json!({
        "severity": "medium",
        "source": addr,
        "prefix_len": event.prefix_len,
        "port": event.port,
        "reason": reason,
        "ifindex": event.ifindex,
    }));
    (kind, record)
}

pub fn egress_record(event: &EgressEvent) -> (&'static str, Map<String, Value>) {
    let (family, addr) = address(event.family, &event.addr);
    let kind = if event.verdict == verdict::DENIED {
        "egress_denied"
    } else {
        "egress_would_deny"
    };
    let record = audit::fields(json!({
        "severity": "high",
        "pid": event.tgid,
        "tid": event.pid,
        "uid": event.uid,
        "comm": comm(&event.comm),
        "cgroup_id": event.cgroup_id,
        "proto": if event.proto == PROTO_UDP { "udp" } else { "tcp" },
        "family": family,
        "addr": addr,
        "port": event.port,
    }));
    (kind, record)
}

/// A connect to a guarded port from outside the cgroups allowed for it: the upstream's
/// (`upstream_connect_*`) or the provider gateway's (`gateway_connect_*`).
pub fn upstream_record(event: &EgressEvent) -> (&'static str, Map<String, Value>) {
    let (family, addr) = address(event.family, &event.addr);
    let destination = Destination::of_bit(u32::from(event.dest)).unwrap_or(Destination::Upstream);
    let denied = event.verdict == verdict::DENIED;
    let (kind, mode) = match (destination, denied) {
        (Destination::Upstream, true) => ("upstream_connect_denied", "enforce"),
        (Destination::Upstream, false) => ("upstream_connect_would_deny", "monitor"),
        (Destination::Gateway, true) => ("gateway_connect_denied", "enforce"),
        (Destination::Gateway, false) => ("gateway_connect_would_deny", "monitor"),
    };
    let record = audit::fields(json!({
        "severity": "high",
        "mode": mode,
        "destination": destination.as_str(),
        "pid": event.tgid,
        "tid": event.pid,
        "uid": event.uid,
        "comm": comm(&event.comm),
        "cgroup_id": event.cgroup_id,
        "family": family,
        "addr": addr,
        "port": event.port,
    }));
    (kind, record)
}

/// An open of a guarded environ file. Another process's read is high severity; the process
/// reading its own environ, and allowed executables, are their own kinds.
pub fn environ_record(event: &EnvironEvent) -> (&'static str, Map<String, Value>) {
    let (kind, severity) = match event.verdict {
        VERDICT_SELF => ("environ_self_read", "info"),
        VERDICT_ALLOWED_EXE => ("environ_read_allowed", "low"),
        verdict::DENIED => ("environ_read_denied", "high"),
        verdict::WOULD_DENY => ("environ_read_would_deny", "high"),
        _ => ("environ_read", "high"),
    };
    let path = comm(&event.path);
    let path = if path.is_empty() {
        format!("/proc/{}/environ", event.target)
    } else {
        path
    };
    let record = audit::fields(json!({
        "severity": severity,
        "pid": event.tgid,
        "tid": event.pid,
        "uid": event.uid,
        "comm": comm(&event.comm),
        "target": event.target,
        "path": path,
        "cgroup_id": event.cgroup_id,
        "self": event.tgid == event.target,
        "source": match event.source {
            SOURCE_LSM => "lsm",
            SOURCE_PROBE => "probe",
            _ => "tracepoint",
        },
    }));
    (kind, record)
}

/// What a reader of one ring buffer runs until the map is closed.
pub type Reader =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), KernelError>> + Send>>;

/// One ring buffer a family reads: what the log calls its reader, the map, and the loop that
/// handles each record.
#[derive(Clone, Copy)]
pub struct Source {
    /// As in "bind events reader stopped".
    pub what: &'static str,
    pub map: &'static str,
    pub read: fn(RingBuf<MapData>) -> Reader,
}

/// The [`Source`] of the ring `$map`, each record of which becomes one audit line through
/// `$record` (a `fn(&Event) -> (kind, fields)` above).
macro_rules! audited {
    ($what:expr, $map:expr, $record:path) => {
        $crate::kernel::events::Source {
            what: $what,
            map: $map,
            read: |ring| Box::pin($crate::kernel::events::read_events(ring, $map, $record)),
        }
    };
}
pub(super) use audited;

/// Reads records of type `T` from `ring` until it closes, turning each into an audit line.
pub async fn read_events<T: aya::Pod>(
    ring: RingBuf<MapData>,
    name: &'static str,
    record: impl Fn(&T) -> (&'static str, Map<String, Value>),
) -> Result<(), KernelError> {
    read_records(ring, name, |event: &T| {
        let (kind, fields) = record(event);
        audit::emit(kind, fields);
    })
    .await
}

/// Reads records of type `T` from `ring` until it closes, handing each to `handle`.
pub async fn read_records<T: aya::Pod>(
    ring: RingBuf<MapData>,
    name: &'static str,
    handle: impl Fn(&T),
) -> Result<(), KernelError> {
    let mut fd = register(ring).map_err(|source| KernelError::Reader { name, source })?;
    loop {
        let mut guard = fd
            .readable_mut()
            .await
            .map_err(|source| KernelError::Reader { name, source })?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            match guard_common::read_record::<T>(&item) {
                Some(event) => handle(&event),
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
