//! Alerts on rate spikes (threat 15): when a key or a client address runs into its rate limit,
//! one `rate_spike` audit record says so, at most once a minute per key or address, so a stolen
//! key being used hard shows up without a flood of lines.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::json;

/// How long one alert covers.
const QUIET: Duration = Duration::from_secs(60);
/// Entries kept before old ones are swept (bounds memory under a flood from many addresses).
const MAX_ENTRIES: usize = 10_000;

#[derive(Default)]
pub struct SpikeAlerts {
    last: Mutex<HashMap<String, Instant>>,
}

impl SpikeAlerts {
    /// Whether a spike of `subject` at `now` deserves a new alert.
    pub fn should_alert(&self, subject: &str, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.len() >= MAX_ENTRIES {
            last.retain(|_, at| now.duration_since(*at) < QUIET);
        }
        match last.get(subject) {
            Some(at) if now.duration_since(*at) < QUIET => false,
            _ => {
                last.insert(subject.to_owned(), now);
                true
            }
        }
    }

    /// Emits the `rate_spike` record for a refusal with `reason` (`rate_key`, `rate_rollout`,
    /// whose key is `rollout:<id>`, or `rate_ip`).
    pub fn rate_limited(&self, reason: &str, key: Option<&str>, client: std::net::IpAddr) {
        let subject = match (reason, key) {
            ("rate_key" | "rate_rollout", Some(key)) => format!("key:{key}"),
            _ => format!("ip:{client}"),
        };
        if self.should_alert(&subject, Instant::now()) {
            crate::audit::emit(
                "rate_spike",
                crate::audit::fields(json!({ "reason": reason, "key": key, "client": client })),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_quiet_period_per_subject() {
        let alerts = SpikeAlerts::default();
        let t0 = Instant::now();
        let table = [
            ("key:a", t0, true),
            ("key:a", t0 + Duration::from_secs(1), false),
            ("key:b", t0 + Duration::from_secs(1), true),
            ("key:a", t0 + Duration::from_secs(59), false),
            ("key:a", t0 + Duration::from_secs(61), true),
            ("ip:10.0.0.1", t0 + Duration::from_secs(61), true),
        ];
        for (subject, at, expected) in table {
            assert_eq!(
                alerts.should_alert(subject, at),
                expected,
                "{subject} at {:?}",
                at - t0
            );
        }
    }
}
