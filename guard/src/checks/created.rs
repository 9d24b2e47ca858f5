//! The daemon's record of the files the guarded service created, as the kernel reports them
//! (`kernel::created`): inode and device, the creating process, and when the report was read.
//! Bounded: past [`CAPACITY`] files the oldest record goes, and the drop is counted, so a
//! service that makes files without end costs a fixed amount of memory. A one-shot
//! `proxyguard check` has no such record (see `ownership::History`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::SystemTime,
};

use serde::Serialize;

/// Files remembered at most (about 100 bytes each).
pub const CAPACITY: usize = 16_384;

/// One file a guarded task created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The creating process.
    pub tgid: u32,
    /// When user space learned of it: after the creation, so a file born later (an inode
    /// number reused after a delete) is told apart by its birth time.
    pub seen: SystemTime,
}

#[derive(Debug, Default)]
struct Registry {
    /// Whether the kernel programs are attached and reporting.
    active: bool,
    files: HashMap<(u64, u64), Record>,
    /// Insertion order, for eviction. A key recorded twice appears twice; the stale entry is
    /// skipped when it comes up.
    order: VecDeque<((u64, u64), SystemTime)>,
    recorded: u64,
    evicted: u64,
}

/// What the metrics show of the record.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Files remembered now.
    pub tracked: u64,
    /// Creations received since start.
    pub received: u64,
    /// Records dropped to stay within [`CAPACITY`].
    pub evicted: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(Registry::default))
}

/// Whether the kernel programs are attached: while they are, the record is evidence. Set at
/// start, and again when a reload attaches or detaches them (fix mode turned on or off).
pub fn set_active(active: bool) {
    with(|r| r.active = active);
}

/// Whether there is a record to consult (the daemon, with the kernel programs attached).
pub fn active() -> bool {
    with(|r| r.active)
}

/// A file `(dev, ino)` (user-space `st_dev` encoding) created by `tgid`.
pub fn record(dev: u64, ino: u64, tgid: u32) {
    with(|r| r.insert(dev, ino, tgid, SystemTime::now(), CAPACITY));
}

impl Registry {
    fn insert(&mut self, dev: u64, ino: u64, tgid: u32, seen: SystemTime, capacity: usize) {
        self.recorded += 1;
        self.files.insert((dev, ino), Record { tgid, seen });
        self.order.push_back(((dev, ino), seen));
        while self.files.len() > capacity {
            let Some((key, at)) = self.order.pop_front() else {
                break;
            };
            // Only the newest record of a key evicts it.
            if self.files.get(&key).is_some_and(|rec| rec.seen == at) {
                self.files.remove(&key);
                self.evicted += 1;
            }
        }
        // Stale order entries of re-recorded keys must not grow the queue without bound.
        if self.order.len() > 2 * capacity.max(1) {
            let files = &self.files;
            self.order
                .retain(|(key, at)| files.get(key).is_some_and(|rec| rec.seen == *at));
        }
    }
}

/// The record of file `(dev, ino)`, if a guarded task created it.
pub fn lookup(dev: u64, ino: u64) -> Option<Record> {
    with(|r| r.files.get(&(dev, ino)).copied())
}

pub fn stats() -> Stats {
    with(|r| Stats {
        tracked: r.files.len() as u64,
        received: r.recorded,
        evicted: r.evicted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stays_within_its_capacity_and_counts_what_it_drops() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut r = Registry::default();
        for i in 0..10u64 {
            r.insert(1, i, 42, t0 + Duration::from_secs(i), 4);
        }
        assert_eq!((r.files.len(), r.evicted, r.recorded), (4, 6, 10));
        assert!(!r.files.contains_key(&(1, 0)), "the oldest went first");
        assert_eq!(r.files.get(&(1, 9)).map(|rec| rec.tgid), Some(42));
        // A re-recorded file is kept by its newest record.
        r.insert(1, 9, 43, t0 + Duration::from_secs(20), 4);
        for i in 100..103u64 {
            r.insert(1, i, 42, t0 + Duration::from_secs(i), 4);
        }
        assert_eq!(r.files.get(&(1, 9)).map(|rec| rec.tgid), Some(43));
        assert_eq!(r.files.len(), 4);
        assert!(r.order.len() <= 8, "{}", r.order.len());
    }
}
