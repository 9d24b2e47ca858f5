//! Upper bounds on numbers that reach a library which panics above some value. serde takes any
//! `u64` the TOML holds; these keep the values far below where tokio or hyper would panic, so
//! a start or a reload cannot crash on them.
//!
//! - Counts become `tokio::sync::Semaphore` permits, which panic above `Semaphore::MAX_PERMITS`
//!   (about 2.3e18).
//! - Timeouts become deadlines `now + timeout`; hyper adds the header timeout to an `Instant`,
//!   which panics on overflow (at every connection, not just once).
//! - `worker_threads` sizes the runtime, which allocates per worker up front.

use super::{Config, FieldError};

/// More connections or requests in flight than any one host serves.
pub const MAX_COUNT: usize = 1_000_000;
/// A day: longer than any request or drain should take.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
pub const MAX_WORKER_THREADS: usize = 1024;

pub fn validate(config: &Config, errors: &mut Vec<FieldError>) {
    let proxy = &config.proxy;
    let mut push = |field: String, message: String| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    };
    let limits = &proxy.limits;
    for (field, value) in [
        ("max_connections", limits.max_connections),
        ("max_concurrent_per_key", limits.max_concurrent_per_key),
        ("max_upstream_connections", limits.max_upstream_connections),
    ] {
        if value > MAX_COUNT {
            push(
                format!("proxy.limits.{field}"),
                format!("must be at most {MAX_COUNT}"),
            );
        }
    }
    let timeouts = &proxy.timeouts;
    for (field, value) in [
        ("header_read_secs", timeouts.header_read_secs),
        ("body_secs", timeouts.body_secs),
        ("upstream_response_secs", timeouts.upstream_response_secs),
        ("drain_secs", timeouts.drain_secs),
    ] {
        if value > MAX_TIMEOUT_SECS {
            push(
                format!("proxy.timeouts.{field}"),
                format!("must be at most {MAX_TIMEOUT_SECS} (a day)"),
            );
        }
    }
    if proxy.worker_threads > MAX_WORKER_THREADS {
        push(
            "proxy.worker_threads".into(),
            format!("must be at most {MAX_WORKER_THREADS}"),
        );
    }
    if !(1..=MAX_COUNT).contains(&config.log.queue) {
        push(
            "log.queue".into(),
            format!("must be from 1 to {MAX_COUNT} lines"),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        panic::catch_unwind,
        time::{Duration, Instant},
    };

    use super::*;

    fn fields(edit: impl FnOnce(&mut Config)) -> Vec<String> {
        let mut config = Config::default();
        edit(&mut config);
        let mut errors = Vec::new();
        validate(&config, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn the_bounds_are_where_the_libraries_still_work() {
        let _ = tokio::sync::Semaphore::new(MAX_COUNT);
        assert!(Instant::now()
            .checked_add(Duration::from_secs(MAX_TIMEOUT_SECS))
            .is_some());
        // What the bounds keep out: both panic.
        assert!(catch_unwind(|| tokio::sync::Semaphore::new(usize::MAX)).is_err());
        assert!(Instant::now()
            .checked_add(Duration::from_secs(u64::MAX))
            .is_none());
    }

    #[test]
    fn values_past_the_bounds_are_refused_by_field() {
        assert!(fields(|_| {}).is_empty());
        assert_eq!(
            fields(|c| c.proxy.limits.max_upstream_connections = 1 << 62),
            ["proxy.limits.max_upstream_connections"]
        );
        assert_eq!(
            fields(|c| c.proxy.limits.max_concurrent_per_key = MAX_COUNT + 1),
            ["proxy.limits.max_concurrent_per_key"]
        );
        assert_eq!(
            fields(|c| c.proxy.timeouts.header_read_secs = u64::MAX),
            ["proxy.timeouts.header_read_secs"]
        );
        assert_eq!(
            fields(|c| c.proxy.worker_threads = 1 << 40),
            ["proxy.worker_threads"]
        );
        assert!(fields(|c| c.proxy.timeouts.drain_secs = MAX_TIMEOUT_SECS).is_empty());
    }
}
