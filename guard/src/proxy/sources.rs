//! Fair use of connections (issue 12): per-source caps on open connections and on connections
//! whose first request head has not arrived yet, checked when a connection is accepted.
//!
//! A source is an IPv4 address, or an IPv6 /64: one host usually holds a whole /64, so rotating
//! addresses inside it must not multiply its share. IPv4-mapped IPv6 addresses (a dual-stack
//! listener) count as their IPv4 address.
//!
//! The table holds one entry per source with at least one open connection, and an entry leaves
//! the moment its count reaches 0, so it never holds more entries than there are open
//! connections (bounded by `proxy.limits.max_connections`), however sources rotate.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
};

/// Where a connection comes from, at the granularity the caps apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits of the address.
    V6Net([u8; 8]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut net = [0; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    Source::V6Net(net)
                }
            },
        }
    }
}

/// The caps in force (`proxy.limits`); read at each accept, so a reload applies to new
/// connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceCaps {
    pub open: usize,
    pub pending: usize,
}

/// Why a connection was refused: the `reason` label of the refusal metric and the error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source already holds `max_connections_per_source` connections.
    Connections,
    /// The source already holds `max_pending_heads_per_source` connections without a head.
    PendingHeads,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "source_connections",
            Refusal::PendingHeads => "source_pending_heads",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    open: usize,
    pending: usize,
}

#[derive(Debug, Default)]
pub struct Sources {
    table: Mutex<HashMap<Source, Counts>>,
}

impl Sources {
    /// Counts a new connection from `ip` as open and pending, or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, caps: SourceCaps) -> Result<Admitted, Refusal> {
        let source = Source::of(ip);
        let mut table = self.lock();
        let counts = table.entry(source).or_default();
        // Refusing never leaves an empty entry behind: a fresh entry has counts 0, and 0 is
        // below every cap (the compiler keeps them at least 1).
        if counts.open >= caps.open {
            return Err(Refusal::Connections);
        }
        if counts.pending >= caps.pending {
            return Err(Refusal::PendingHeads);
        }
        counts.open += 1;
        counts.pending += 1;
        Ok(Admitted {
            sources: self.clone(),
            source,
            pending: AtomicBool::new(true),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Source, Counts>> {
        // The counts stay consistent under a panic elsewhere: each change is one statement.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sources with an open connection (for tests and the bound above).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, source: Source, pending: bool) {
        let mut table = self.lock();
        if let Some(counts) = table.get_mut(&source) {
            counts.open = counts.open.saturating_sub(1);
            if pending {
                counts.pending = counts.pending.saturating_sub(1);
            }
            if counts.open == 0 {
                table.remove(&source);
            }
        }
    }

    fn head_arrived(&self, source: Source) {
        if let Some(counts) = self.lock().get_mut(&source) {
            counts.pending = counts.pending.saturating_sub(1);
        }
    }
}

/// One admitted connection: counted until dropped, pending until its first head arrives.
#[derive(Debug)]
pub struct Admitted {
    sources: Arc<Sources>,
    source: Source,
    pending: AtomicBool,
}

impl Admitted {
    /// The connection's first request head is complete; later calls do nothing.
    pub fn head_arrived(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.sources.head_arrived(self.source);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.sources
            .release(self.source, self.pending.load(Ordering::Acquire));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: SourceCaps = SourceCaps {
        open: 3,
        pending: 2,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn pending_heads_are_capped_below_open_connections() {
        let sources = Arc::new(Sources::default());
        let a = ip("192.0.2.1");
        let first = sources.admit(a, CAPS).unwrap();
        let _second = sources.admit(a, CAPS).unwrap();
        assert_eq!(sources.admit(a, CAPS).unwrap_err(), Refusal::PendingHeads);
        // Another source is untouched.
        let _other = sources.admit(ip("192.0.2.2"), CAPS).unwrap();
        first.head_arrived();
        first.head_arrived();
        let _third = sources.admit(a, CAPS).unwrap();
        assert_eq!(sources.admit(a, CAPS).unwrap_err(), Refusal::Connections);
        drop(first);
        assert_eq!(sources.admit(a, CAPS).unwrap_err(), Refusal::PendingHeads);
    }

    #[test]
    fn entries_leave_when_their_last_connection_closes() {
        let sources = Arc::new(Sources::default());
        for round in 0..1000u32 {
            let [_, _, hi, lo] = round.to_be_bytes();
            let admitted = sources.admit(IpAddr::from([10, 0, hi, lo]), CAPS).unwrap();
            if round % 2 == 0 {
                admitted.head_arrived();
            }
        }
        assert_eq!(sources.len(), 0);
        let held = sources.admit(ip("10.1.1.1"), CAPS).unwrap();
        assert_eq!(sources.len(), 1);
        drop(held);
        assert_eq!(sources.len(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_and_mapped_v4_is_v4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        let sources = Arc::new(Sources::default());
        let _a = sources.admit(ip("2001:db8::1"), CAPS).unwrap();
        let _b = sources.admit(ip("2001:db8::2"), CAPS).unwrap();
        assert_eq!(
            sources.admit(ip("2001:db8::3"), CAPS).unwrap_err(),
            Refusal::PendingHeads
        );
    }
}
