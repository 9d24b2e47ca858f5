//! systemd integration: readiness and watchdog notices, the hardened unit for proxyguard itself,
//! and the hardening drop-in for the guarded service.

pub mod harden;
mod notify;
pub mod unit;

pub use notify::{notify, watchdog_interval};
