//! The circuit breaker in front of Redis: closed (shared limits), open (Redis is down: the
//! `on_redis_error` mode answers every request at once, without waiting for Redis), and half-open
//! (one probe is out; a success closes it, a failure opens it again).
//!
//! Requests never probe: the fleet's probe task does, once a second while the breaker is open,
//! so no request ever waits on a Redis that is known to be down.

use std::sync::{
    atomic::{AtomicU32, AtomicU8, Ordering},
    Mutex,
};

/// Consecutive failures that open the breaker: one lost packet is not an outage.
pub const FAILURES_TO_OPEN: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Default)]
pub struct Breaker {
    /// 0 closed, 1 open, 2 half-open: read on every request without a lock.
    state: AtomicU8,
    failures: AtomicU32,
    /// Serialises transitions, so each is reported once.
    turn: Mutex<()>,
}

/// A change of state, for the caller to report.
pub type Transition = Option<(BreakerState, BreakerState)>;

fn decode(value: u8) -> BreakerState {
    match value {
        0 => BreakerState::Closed,
        1 => BreakerState::Open,
        _ => BreakerState::HalfOpen,
    }
}

fn encode(state: BreakerState) -> u8 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::Open => 1,
        BreakerState::HalfOpen => 2,
    }
}

impl Breaker {
    /// Starts open: nothing is shared until a probe has reached Redis.
    pub fn new_open() -> Breaker {
        let breaker = Breaker::default();
        breaker
            .state
            .store(encode(BreakerState::Open), Ordering::Relaxed);
        breaker
    }

    pub fn state(&self) -> BreakerState {
        decode(self.state.load(Ordering::Acquire))
    }

    fn set(&self, to: BreakerState) -> Transition {
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.state();
        if from == to {
            return None;
        }
        self.state.store(encode(to), Ordering::Release);
        Some((from, to))
    }

    /// A request's call to Redis answered.
    pub fn success(&self) -> Transition {
        self.failures.store(0, Ordering::Relaxed);
        match self.state() {
            BreakerState::Closed => None,
            _ => self.set(BreakerState::Closed),
        }
    }

    /// A request's call to Redis failed or timed out.
    pub fn failure(&self) -> Transition {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN && self.state() == BreakerState::Closed {
            return self.set(BreakerState::Open);
        }
        None
    }

    /// The probe task is about to try Redis.
    pub fn probing(&self) -> Transition {
        match self.state() {
            BreakerState::Open => self.set(BreakerState::HalfOpen),
            _ => None,
        }
    }

    /// The probe failed: open again.
    pub fn probe_failed(&self) -> Transition {
        match self.state() {
            BreakerState::HalfOpen => self.set(BreakerState::Open),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_a_probe() {
        let breaker = Breaker::default();
        assert_eq!(breaker.state(), Closed);
        assert_eq!(breaker.failure(), None);
        assert_eq!(breaker.success(), None, "a success resets the count");
        assert_eq!(breaker.failure(), None);
        assert_eq!(breaker.failure(), None);
        assert_eq!(breaker.failure(), Some((Closed, Open)));
        assert_eq!(breaker.failure(), None, "reported once");
        assert_eq!(breaker.probing(), Some((Open, HalfOpen)));
        assert_eq!(breaker.probe_failed(), Some((HalfOpen, Open)));
        assert_eq!(breaker.probing(), Some((Open, HalfOpen)));
        assert_eq!(breaker.success(), Some((HalfOpen, Closed)));
        assert_eq!(Breaker::new_open().state(), Open);
    }
}
