//! The fleet's metrics: `proxyguard_fleet_mode{mode}` (1 for the mode in force, 0 for the
//! others) and `proxyguard_fleet_mode_changes`, read at each scrape.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Mode;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
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
