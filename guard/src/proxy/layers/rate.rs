//! Request rate limits (threat 9): per client IP and per key, requests per minute with a burst,
//! answering 429 with `Retry-After`. GCRA via governor: constant memory per key, no timers.

use std::{collections::HashMap, net::IpAddr, num::NonZeroU32, sync::Arc};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter,
};
use http::StatusCode;

use crate::proxy::reject::Reject;

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_key: HashMap<Arc<str>, DefaultDirectRateLimiter>,
}

/// A quota of `rpm` per minute with `burst` at once; `None` when the limit is off (0).
pub fn quota(rpm: u32, burst: u32) -> Option<Quota> {
    let rpm = NonZeroU32::new(rpm)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(rpm).allow_burst(burst))
}

impl RateLimits {
    /// `keys` pairs each key name with its own quota (or none).
    pub fn new(
        per_ip: Option<Quota>,
        keys: impl IntoIterator<Item = (Arc<str>, Option<Quota>)>,
    ) -> RateLimits {
        RateLimits {
            per_ip: per_ip.map(RateLimiter::keyed),
            per_key: keys
                .into_iter()
                .filter_map(|(name, quota)| Some((name, RateLimiter::direct(quota?))))
                .collect(),
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Reject> {
        match &self.per_ip {
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|not_until| too_many("rate_ip", "this address", not_until)),
            None => Ok(()),
        }
    }

    pub fn check_key(&self, name: &str) -> Result<(), Reject> {
        match self.per_key.get(name) {
            Some(limiter) => limiter
                .check()
                .map_err(|not_until| too_many("rate_key", "this key", not_until)),
            None => Ok(()),
        }
    }

    /// Forgets idle addresses, so the per-IP table cannot grow without bound.
    pub fn prune(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn too_many(
    reason: &'static str,
    who: &str,
    not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> Reject {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    // Rounded up: retrying after a rounded-down time would be refused again.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut reject = Reject::new(
        StatusCode::TOO_MANY_REQUESTS,
        reason,
        format!("rate limit exceeded for {who}; retry after {seconds}s"),
    );
    reject.retry_after = Some(seconds.max(1));
    reject
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_burst_then_429() {
        let limits = RateLimits::new(None, [("a".into(), quota(60, 3)), ("free".into(), None)]);
        let results: Vec<bool> = (0..5).map(|_| limits.check_key("a").is_ok()).collect();
        assert_eq!(results, [true, true, true, false, false]);
        let reject = limits.check_key("a").unwrap_err();
        assert_eq!(reject.status, 429);
        assert!(reject.retry_after.unwrap() >= 1);
        assert!(
            (0..100).all(|_| limits.check_key("free").is_ok()),
            "no quota, no limit"
        );
        assert!(limits.check_key("unknown").is_ok());
    }

    #[test]
    fn per_ip_is_per_address() {
        let limits = RateLimits::new(quota(60, 2), []);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let table = [
            (a, true),
            (a, true),
            (a, false),
            (b, true),
            (b, true),
            (b, false),
        ];
        for (ip, ok) in table {
            assert_eq!(limits.check_ip(ip).is_ok(), ok, "{ip}");
        }
        assert_eq!(limits.check_ip(a).unwrap_err().reason, "rate_ip");
    }

    #[test]
    fn zero_turns_a_limit_off() {
        assert!(quota(0, 10).is_none());
        assert!(quota(10, 0).is_some());
    }
}
