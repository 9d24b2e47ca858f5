//! Key state across the fleet: a key revoked, suspended or resumed on one host is refused (or let
//! through again) on every host within a second, without a reload there.
//!
//! In Redis (one hash tag, `{fleet}`): the set `revoked` of revoked keys' SHA-256 (hex), the hash
//! `suspended` of suspended key names (the reason as value), and `version`, raised on every
//! change. Each instance polls `version` twice a second and reads the rest only when it moved.
//! A change made while Redis is unreachable waits in `pending` and goes out when it answers.
//!
//! A revocation is by the key's hash, so the same name with a new key is a new key; it stays in
//! the set (an operator who wants a revoked key back removes its hash with `SREM`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, Weak},
};

use super::{breaker::BreakerState, Fleet, POLL};

const VERSION: &str = "pg:{fleet}:version";
const REVOKED: &str = "pg:{fleet}:revoked";
const SUSPENDED: &str = "pg:{fleet}:suspended";

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Revoke(String),
    Suspend(String, String),
    Resume(String),
}

#[derive(Default)]
pub struct KeyState {
    pending: Mutex<Vec<Change>>,
    /// The version last read, and the suspended names then, so a name that left the hash is
    /// resumed here too.
    seen: Mutex<(Option<i64>, HashSet<String>)>,
}

impl Fleet {
    /// Publishes `change` to the fleet (at the next poll, within half a second).
    pub fn publish(&self, change: Change) {
        self.keystate
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(change);
    }

    /// Publishes the revocation of every key in `before` that `after` no longer holds (a reload
    /// after `keys revoke`, or a key deleted by hand).
    pub fn revoke_removed(&self, before: &[[u8; 32]], after: &[[u8; 32]]) {
        let after: HashSet<&[u8; 32]> = after.iter().collect();
        for hash in before.iter().filter(|h| !after.contains(h)) {
            self.publish(Change::Revoke(hex::encode(hash)));
        }
    }

    /// Sends what is pending, then reads the state if its version moved. Errors leave the
    /// pending changes for the next turn.
    async fn sync(&self) -> Result<(), super::FleetError> {
        self.pay_owed().await;
        let Some(mut conn) = self.connection() else {
            return Ok(());
        };
        let timeout = self.settings.timeout * 10;
        let pending: Vec<Change> = self
            .keystate
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !pending.is_empty() {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for change in &pending {
                match change {
                    Change::Revoke(hash) => pipe.sadd(REVOKED, hash).ignore(),
                    Change::Suspend(name, reason) => pipe.hset(SUSPENDED, name, reason).ignore(),
                    Change::Resume(name) => pipe.hdel(SUSPENDED, name).ignore(),
                };
            }
            pipe.incr(VERSION, 1).ignore();
            let sent = tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| super::FleetError::Timeout(timeout.as_millis() as u64))?;
            sent?;
            let mut queue = self
                .keystate
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let sent = pending.len().min(queue.len());
            queue.drain(..sent);
        }
        let mut get = redis::cmd("GET");
        get.arg(VERSION);
        let version = tokio::time::timeout(timeout, get.query_async::<Option<i64>>(&mut conn))
            .await
            .map_err(|_| super::FleetError::Timeout(timeout.as_millis() as u64))??;
        if version.is_some() && version == self.seen_version() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.smembers(REVOKED).hgetall(SUSPENDED);
        let read = tokio::time::timeout(
            timeout,
            pipe.query_async::<(Vec<String>, HashMap<String, String>)>(&mut conn),
        )
        .await
        .map_err(|_| super::FleetError::Timeout(timeout.as_millis() as u64))?;
        let (revoked, suspended) = read?;
        self.apply(version, revoked, suspended);
        Ok(())
    }

    fn seen_version(&self) -> Option<i64> {
        self.keystate
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    /// Takes in the fleet's state: the revoked set as is, and each suspension that appeared or
    /// went since the last read applied to this host's ledger.
    fn apply(
        &self,
        version: Option<i64>,
        revoked: Vec<String>,
        suspended: HashMap<String, String>,
    ) {
        let hashes: HashSet<[u8; 32]> = revoked
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        if hashes.len() != self.revoked.load().len() {
            tracing::info!(revoked = hashes.len(), "fleet: revoked keys updated");
        }
        self.revoked.store(hashes.into());
        let mut seen = self.keystate.seen.lock().unwrap_or_else(|p| p.into_inner());
        let ledger = crate::proxy::budget::published();
        let now: HashSet<String> = suspended.keys().cloned().collect();
        if let Some(ledger) = &ledger {
            for (name, reason) in &suspended {
                if !seen.1.contains(name) {
                    ledger.suspend(name, reason);
                }
            }
            for name in seen.1.difference(&now) {
                ledger.resume(name);
            }
        }
        *seen = (version, now);
    }
}

/// Polls the fleet's key state while Redis answers.
pub async fn poll(fleet: Weak<Fleet>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(fleet) = fleet.upgrade() else { return };
        if fleet.breaker.state() != BreakerState::Closed {
            continue;
        }
        if let Err(err) = fleet.sync().await {
            tracing::debug!(error = %err, "fleet: key state not synced");
        }
    }
}
