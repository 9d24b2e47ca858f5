//! Sockets the guarded process listens on (threat 12): from its /proc/<pid>/net/tcp{,6} (its own
//! network namespace) matched to its fds by inode. A listener off loopback is high severity unless
//! it is proxyguard's own front port. This also covers sockets bound before the bind rules were
//! attached.

use std::collections::BTreeSet;

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

use super::{Finding, Severity};

pub fn check(process: &Process, guard_port: u16) -> Vec<Finding> {
    let pid = process.pid as u32;
    let Ok(fds) = process.fd() else {
        return Vec::new();
    };
    let inodes: BTreeSet<u64> = fds
        .flatten()
        .filter_map(|fd| match fd.target {
            FDTarget::Socket(inode) => Some(inode),
            _ => None,
        })
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let mut entries = process.tcp().unwrap_or_default();
    entries.extend(process.tcp6().unwrap_or_default());
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for entry in entries {
        if entry.state != TcpState::Listen || !inodes.contains(&entry.inode) {
            continue;
        }
        let addr = entry.local_address;
        if addr.ip().is_loopback() || addr.port() == guard_port || !reported.insert(addr) {
            continue;
        }
        out.push(Finding {
            check: "listener",
            severity: Severity::High,
            pid,
            subject: addr.to_string(),
            detail: "listens beyond loopback, so anyone on the network can reach it; bind it to \
                     127.0.0.1 and let proxyguard's front port be the way in (a [[bind.rules]] \
                     entry for this port enforces that)"
                .into(),
            fixed: false,
            ownership: None,
        });
    }
    out
}
