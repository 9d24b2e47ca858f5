//! The fleet's metrics: `proxyguard_fleet_mode{mode}` (1 for the mode in force, 0 for the
//! others) and `proxyguard_fleet_mode_changes`, read at each scrape; and
//! `proxyguard_fleet_call_seconds`, the time of each request's Redis call as proxyguard sees it
//! (from the command's encoding to its decoded answer, or to the timeout): what the fleet adds
//! to a request, apart from the machine's queueing.

use std::sync::OnceLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use super::Mode;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

/// The admit calls' durations, observed by every worker (one histogram for the process).
pub fn call_seconds() -> &'static Histogram {
    static CALLS: OnceLock<Histogram> = OnceLock::new();
    // 50 µs to about 0.8 s: a loopback call takes tens of microseconds, a timeout at most 2 s
    // (`timeout_ms`'s cap) lands in +Inf.
    CALLS.get_or_init(|| Histogram::new(exponential_buckets(0.000_05, 2.0, 15)))
}

pub struct FleetGauges {
    mode: Family<ModeLabels, Gauge>,
    changes: Gauge,
}

impl FleetGauges {
    pub fn register(registry: &mut Registry) -> FleetGauges {
        let gauges = FleetGauges {
            mode: Family::default(),
            changes: Gauge::default(),
        };
        registry.register(
            "fleet_mode",
            "How shared limits are enforced now ([fleet]): 1 for the mode in force",
            gauges.mode.clone(),
        );
        registry.register(
            "fleet_mode_changes",
            "Changes of the fleet's mode since the start",
            gauges.changes.clone(),
        );
        registry.register(
            "fleet_call_seconds",
            "Time of each request's Redis call ([fleet]), from sending it to its answer or the timeout",
            call_seconds().clone(),
        );
        gauges
    }

    pub fn refresh(&self) {
        let Some(fleet) = super::published() else {
            return;
        };
        let now = fleet.mode();
        for mode in [Mode::Shared, Mode::Local, Mode::Allow, Mode::Deny] {
            self.mode
                .get_or_create(&ModeLabels {
                    mode: mode.as_str().into(),
                })
                .set(i64::from(mode == now));
        }
        self.changes
            .set(fleet.changes.load(std::sync::atomic::Ordering::Relaxed) as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_histogram_is_exposed() {
        let mut registry = Registry::with_prefix("proxyguard");
        let _gauges = FleetGauges::register(&mut registry);
        call_seconds().observe(0.000_12);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"proxyguard_fleet_call_seconds_bucket{le="+Inf"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("proxyguard_fleet_call_seconds_count 1"),
            "{text}"
        );
    }
}
