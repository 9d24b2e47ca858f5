//! Rollout tokens at the front (issue 21, docs/rollout-tokens.md): a verified token is good only
//! on its own rollout's routes (threat 2, forged attribution through the path), and each rollout
//! has its own rate and concurrency budget, so one runaway rollout is throttled without stopping
//! the others.
//!
//! The tables are keyed by rollout id and bounded ([`MAX_ROLLOUTS`]): idle entries are dropped
//! when the table is full and once a minute (`prune`); a new rollout beyond the bound gets 429.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::path::RolloutRef;
use crate::proxy::{reject::Reject, rollout_token::Claims};

/// Rollouts tracked at once, per table.
pub const MAX_ROLLOUTS: usize = 65536;

/// 403 unless the route names the token's rollout (and its attempt, when the token has one).
pub fn check_route(claims: &Claims, route: Option<&RolloutRef>) -> Result<(), Reject> {
    let mismatch = |message: &str| Reject::new(StatusCode::FORBIDDEN, "rollout_mismatch", message);
    let Some(route) = route else {
        return Err(mismatch(
            "a rollout token is valid only on its rollout's paths (/rollout/{id}/attempt/{id}/...)",
        ));
    };
    if route.rollout != claims.rollout {
        return Err(mismatch("this token is for another rollout"));
    }
    if claims
        .attempt
        .as_ref()
        .is_some_and(|attempt| *attempt != route.attempt)
    {
        return Err(mismatch("this token is for another attempt"));
    }
    Ok(())
}

/// Per-rollout budgets: `[proxy.rollout_tokens] rpm`, `burst`, `concurrency`.
pub struct RolloutLimits {
    rate: Option<(Quota, Arc<DefaultKeyedRateLimiter<String>>)>,
    concurrency: usize,
    in_flight: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl RolloutLimits {
    /// `rpm` 0 or `concurrency` 0 turns that limit off. `previous` lends the tables of unchanged
    /// limits, so a reload hands no runaway rollout a fresh budget.
    pub fn new(
        rpm: u32,
        burst: u32,
        concurrency: usize,
        previous: Option<&RolloutLimits>,
    ) -> RolloutLimits {
        let quota = NonZeroU32::new(rpm).map(|rpm| {
            let burst = NonZeroU32::new(burst.min(rpm.get())).unwrap_or(NonZeroU32::MIN);
            Quota::per_minute(rpm).allow_burst(burst)
        });
        let rate = quota.map(|quota| {
            let kept = previous
                .and_then(|p| p.rate.as_ref())
                .filter(|(old, _)| *old == quota)
                .map(|(_, limiter)| limiter.clone());
            (
                quota,
                kept.unwrap_or_else(|| Arc::new(RateLimiter::keyed(quota))),
            )
        });
        let in_flight = previous
            .filter(|p| p.concurrency == concurrency)
            .map(|p| p.in_flight.clone())
            .unwrap_or_default();
        RolloutLimits {
            rate,
            concurrency,
            in_flight,
        }
    }

    /// Counts a request of `rollout` against its rate and returns the permit to hold until the
    /// response ends (none when concurrency is unlimited).
    pub fn admit(&self, rollout: &str) -> Result<Option<OwnedSemaphorePermit>, Reject> {
        if let Some((_, limiter)) = &self.rate {
            if limiter.len() >= MAX_ROLLOUTS {
                limiter.retain_recent();
            }
            if limiter.len() >= MAX_ROLLOUTS {
                return Err(full());
            }
            limiter
                .check_key(&rollout.to_owned())
                .map_err(|not_until| {
                    super::rate::too_many("rate_rollout", "this rollout", not_until)
                })?;
        }
        if self.concurrency == 0 {
            return Ok(None);
        }
        let semaphore = {
            let mut table = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if !table.contains_key(rollout) && table.len() >= MAX_ROLLOUTS {
                forget_idle(&mut table);
                if table.len() >= MAX_ROLLOUTS {
                    return Err(full());
                }
            }
            table
                .entry(rollout.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.concurrency)))
                .clone()
        };
        semaphore.try_acquire_owned().map(Some).map_err(|_| {
            let mut reject = Reject::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_rollout",
                "too many requests in flight for this rollout",
            );
            reject.retry_after = Some(1);
            reject
        })
    }

    /// Forgets idle rollouts (called once a minute).
    pub fn prune(&self) {
        if let Some((_, limiter)) = &self.rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        forget_idle(&mut self.in_flight.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A semaphore only the table holds has no request in flight: dropping it loses nothing.
fn forget_idle(table: &mut HashMap<String, Arc<Semaphore>>) {
    table.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
}

fn full() -> Reject {
    let mut reject = Reject::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_rollout",
        "too many rollouts active at once; retry later",
    );
    reject.retry_after = Some(1);
    reject
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(rollout: &str, attempt: Option<&str>) -> Claims {
        Claims {
            rollout: rollout.into(),
            attempt: attempt.map(Into::into),
            expires: u64::MAX,
        }
    }

    #[test]
    fn route_table() {
        let at = |rollout: &str, attempt: &str| {
            Some(RolloutRef {
                rollout: rollout.into(),
                attempt: attempt.into(),
            })
        };
        let cases = [
            (claims("r1", None), at("r1", "a1"), true),
            (claims("r1", None), at("r1", "a2"), true),
            (claims("r1", Some("a1")), at("r1", "a1"), true),
            (claims("r1", Some("a1")), at("r1", "a2"), false),
            (claims("r1", None), at("r2", "a1"), false),
            (claims("r1", Some("a1")), at("r2", "a1"), false),
            (claims("r1", None), None, false),
        ];
        for (claims, route, ok) in cases {
            let got = check_route(&claims, route.as_ref());
            assert_eq!(got.is_ok(), ok, "{claims:?} {route:?}");
            if let Err(reject) = got {
                assert_eq!(
                    (reject.status.as_u16(), reject.reason),
                    (403, "rollout_mismatch")
                );
            }
        }
    }

    #[test]
    fn a_runaway_rollout_is_throttled_alone() {
        let limits = RolloutLimits::new(60, 3, 0, None);
        let runaway: Vec<bool> = (0..5).map(|_| limits.admit("r1").is_ok()).collect();
        assert_eq!(runaway, [true, true, true, false, false]);
        assert_eq!(limits.admit("r1").unwrap_err().reason, "rate_rollout");
        assert!(
            limits.admit("r2").is_ok(),
            "another rollout has its own budget"
        );
        // A reload with the same quota keeps the spent budget; a new quota starts afresh.
        let same = RolloutLimits::new(60, 3, 0, Some(&limits));
        assert!(same.admit("r1").is_err());
        let changed = RolloutLimits::new(120, 3, 0, Some(&limits));
        assert!(changed.admit("r1").is_ok());
    }

    #[test]
    fn concurrency_is_per_rollout_and_idle_entries_are_forgotten() {
        let limits = RolloutLimits::new(0, 0, 2, None);
        let first = limits.admit("r1").unwrap();
        let second = limits.admit("r1").unwrap();
        let third = limits.admit("r1");
        assert_eq!(third.unwrap_err().reason, "concurrency_rollout");
        let other = limits.admit("r2").unwrap();
        assert!(other.is_some());
        drop(other);
        limits.prune();
        assert_eq!(
            limits.in_flight.lock().unwrap().len(),
            1,
            "r2 is idle, r1 is not"
        );
        drop((first, second));
        assert!(limits.admit("r1").is_ok());
        let rebuilt = RolloutLimits::new(0, 0, 2, Some(&limits));
        let held = rebuilt.admit("r3").unwrap();
        assert!(held.is_some());
        assert!(
            limits.in_flight.lock().unwrap().contains_key("r3"),
            "a reload with the same limit shares the table"
        );
    }

    #[test]
    fn off_means_unlimited() {
        let limits = RolloutLimits::new(0, 0, 0, None);
        assert!((0..1000).all(|_| matches!(limits.admit("r"), Ok(None))));
    }
}
