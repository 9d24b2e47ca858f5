//! Request rate limits (threat 9): per client address and per key, requests per minute with a
//! burst, answering 429 with `Retry-After`. Per key: GCRA via governor (constant memory per key,
//! no timers). Per address: `addresses::Addresses`, GCRA in a bounded table keyed by the IPv6
//! prefix (`proxy.rate.ipv6_prefix`), so a host that owns a /64 cannot dodge its limit by
//! rotating addresses, nor grow the table past `proxy.rate.max_addresses`.
//!
//! A reload keeps the state of every limiter whose quota did not change, so SIGHUP (a key added,
//! say) never hands a flooding address or key a fresh budget.

use std::{collections::HashMap, net::IpAddr, num::NonZeroU32, sync::Arc};

use governor::{
    clock::{Clock, DefaultClock},
    DefaultDirectRateLimiter, Quota, RateLimiter,
};
use http::StatusCode;

use super::addresses::{AddressRule, Addresses};
use crate::proxy::reject::Reject;

pub struct RateLimits {
    per_ip: Option<Arc<Addresses>>,
    per_key: HashMap<Arc<str>, (Quota, Arc<DefaultDirectRateLimiter>)>,
}

/// A quota of `rpm` per minute with `burst` at once; `None` when the limit is off (0).
pub fn quota(rpm: u32, burst: u32) -> Option<Quota> {
    let rpm = NonZeroU32::new(rpm)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Some(Quota::per_minute(rpm).allow_burst(burst))
}

impl RateLimits {
    /// `per_ip` is the per-address rule (none when off); `keys` pairs each key name with its own
    /// quota (or none). Limiters of `previous` with the same name and quota (the same rule)
    /// carry over with their state.
    pub fn new(
        per_ip: Option<AddressRule>,
        keys: impl IntoIterator<Item = (Arc<str>, Option<Quota>)>,
        previous: Option<&RateLimits>,
    ) -> RateLimits {
        let kept_ip = previous
            .and_then(|p| p.per_ip.as_ref())
            .filter(|limiter| Some(limiter.rule()) == per_ip);
        let per_ip = match kept_ip {
            Some(limiter) => Some(limiter.clone()),
            None => per_ip.map(|rule| Arc::new(Addresses::new(rule))),
        };
        let per_key = keys
            .into_iter()
            .filter_map(|(name, quota)| {
                let quota = quota?;
                let kept = previous
                    .and_then(|p| p.per_key.get(&name))
                    .filter(|(old, _)| *old == quota)
                    .map(|(_, limiter)| limiter.clone());
                let limiter = kept.unwrap_or_else(|| Arc::new(RateLimiter::direct(quota)));
                Some((name, (quota, limiter)))
            })
            .collect();
        RateLimits { per_ip, per_key }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Reject> {
        match &self.per_ip {
            Some(limiter) => limiter
                .check(ip)
                .map_err(|wait| too_many_after("rate_ip", "this address", wait)),
            None => Ok(()),
        }
    }

    pub fn check_key(&self, name: &str) -> Result<(), Reject> {
        match self.per_key.get(name) {
            Some((_, limiter)) => limiter
                .check()
                .map_err(|not_until| too_many("rate_key", "this key", not_until)),
            None => Ok(()),
        }
    }

    /// Forgets idle addresses, so the per-IP table holds only those with state worth keeping.
    pub fn prune(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.prune();
        }
    }
}

pub(super) fn too_many(
    reason: &'static str,
    who: &str,
    not_until: governor::NotUntil<<DefaultClock as Clock>::Instant>,
) -> Reject {
    too_many_after(
        reason,
        who,
        not_until.wait_time_from(DefaultClock::default().now()),
    )
}

pub(super) fn too_many_after(reason: &'static str, who: &str, wait: std::time::Duration) -> Reject {
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
        let limits = RateLimits::new(
            None,
            [("a".into(), quota(60, 3)), ("free".into(), None)],
            None,
        );
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
        let limits = RateLimits::new(AddressRule::new(60, 2, 64, 1000), [], None);
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
    fn a_rebuild_keeps_the_state_of_unchanged_limiters() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let old = RateLimits::new(
            AddressRule::new(60, 1, 64, 1000),
            [("a".into(), quota(60, 1)), ("b".into(), quota(60, 1))],
            None,
        );
        assert!(
            old.check_ip(ip).is_ok() && old.check_key("a").is_ok() && old.check_key("b").is_ok()
        );
        // Same per-IP quota and key a; key b's quota changed; key c is new.
        let new = RateLimits::new(
            AddressRule::new(60, 1, 64, 1000),
            [
                ("a".into(), quota(60, 1)),
                ("b".into(), quota(120, 1)),
                ("c".into(), quota(60, 1)),
            ],
            Some(&old),
        );
        let table = [
            ("ip", new.check_ip(ip).is_ok(), false),
            ("a", new.check_key("a").is_ok(), false),
            ("b", new.check_key("b").is_ok(), true),
            ("c", new.check_key("c").is_ok(), true),
        ];
        for (what, got, want) in table {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn zero_turns_a_limit_off() {
        assert!(quota(0, 10).is_none());
        assert!(quota(10, 0).is_some());
    }
}
