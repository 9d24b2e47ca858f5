//! One shape for the program families (bind rules, egress allow-list, upstream guard, XDP limit,
//! environ watch): each has the same life, and [`Family`] is that life. A family takes its own
//! config section (never the whole `Config`), fills its maps, attaches its programs or adopts the
//! pinned ones, names the ring buffers to read, plans its maps for a reload (written all or
//! nothing with every other family's), follows the host on the periodic refresh, and reports its
//! counters; it also says what its maps would hold for a config alone, for the capacity check.
//! [`all`] is the one table of families: the loader in `mod.rs` and `capacity.rs` step through
//! it and name no family.
//!
//! Adding a family touches one file and one line: write `kernel/<name>.rs` with a type that
//! implements [`Family`] (its section, programs, maps, events and counters), and add its line to
//! [`all`] (plus the file's `mod` line in `mod.rs`). Its eBPF side, its shared types and names in
//! `guard-common`, and its pinned maps in `pins::PINNED_MAPS` (the manifest's list) are written as
//! for every family.

use std::{any::Any, path::Path};

use aya::Ebpf;
use serde::Serialize;

use super::{events, maps, pins::PinDir, AttachedProgram, Feature, KernelError};
use crate::{config::Config, guarded::GuardedCgroup};

/// Every family, in the order they start, are written on a reload and refresh. `status` lists
/// the attached programs in this order.
pub(super) fn all() -> Vec<Box<dyn Entry>> {
    vec![
        entry(super::bind::BindRules::default()),
        entry(super::egress::EgressAllowList::default()),
        entry(super::upstream::UpstreamGuard::default()),
        entry(super::xdp::SynLimit::default()),
        entry(super::watch::EnvironWatch::default()),
    ]
}

/// What a start gives: the programs attached or adopted.
pub(super) type Started = Result<Vec<AttachedProgram>, KernelError>;

/// What every family's start sees besides its section.
pub(super) struct Start<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pins: &'a PinDir,
    pub features: &'a mut Vec<Feature>,
    /// The cgroup v2 root, found when some family needs it.
    pub root: Option<&'a Path>,
    /// The guarded service's cgroups: found by the family that follows them (egress), read by
    /// the later ones.
    pub guarded: &'a mut Vec<GuardedCgroup>,
}

/// The host as the loader last saw it, for a reload's plan.
pub(super) struct Host<'a> {
    pub root: Option<&'a Path>,
    pub guarded: &'a [GuardedCgroup],
}

/// What every family's periodic refresh sees besides its section.
pub(super) struct Refresh<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pins: &'a PinDir,
    /// The attached programs; a family that attaches after start (XDP on an interface that came
    /// up) adds its own.
    pub programs: &'a mut Vec<AttachedProgram>,
    pub root: Option<&'a Path>,
    /// The guarded service's cgroups as found now.
    pub guarded: &'a [GuardedCgroup],
    /// Whether they differ from the last look.
    pub guarded_changed: bool,
}

/// What a family sees when a reload's maps are in place and its settings may attach or detach
/// programs (the created-files record follows fix mode).
pub(super) struct Reattach<'a> {
    pub ebpf: &'a mut Ebpf,
    pub pins: &'a PinDir,
    pub programs: &'a mut Vec<AttachedProgram>,
    pub features: &'a mut Vec<Feature>,
}

/// Every family's counters, summed over CPUs, by family name (`bind`, `xdp`, ...): the names
/// `status` and `/metrics` show.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Counters(std::collections::BTreeMap<&'static str, serde_json::Value>);

impl Counters {
    pub(super) fn add(&mut self, family: &'static str, counters: impl Serialize) {
        // The families' counter structs are plain numbers: serializing them cannot fail.
        if let Ok(value) = serde_json::to_value(counters) {
            self.0.insert(family, value);
        }
    }
}

/// The counters every allow-or-refuse rule keeps (bind rules, egress, upstream guard), summed
/// over CPUs.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub(super) struct RuleStats {
    pub allowed: u64,
    pub denied: u64,
    pub would_deny: u64,
    pub events_lost: u64,
}

impl RuleStats {
    /// Reads the rule's stats map at its `STAT_ALLOWED`, `STAT_DENIED`, `STAT_WOULD_DENY` and
    /// `STAT_EVENTS_LOST` slots, in that order.
    pub fn read(ebpf: &Ebpf, map: &'static str, slots: [u32; 4]) -> Result<Self, KernelError> {
        let [allowed, denied, would_deny, events_lost] = maps::percpu_sums(ebpf, map, slots)?;
        Ok(RuleStats {
            allowed,
            denied,
            would_deny,
            events_lost,
        })
    }
}

/// One program family's life. Every stage takes the family's section, picked from the config by
/// [`Family::section`], the one place a family meets `Config`.
pub(super) trait Family: Send + 'static {
    /// The parts of the config this family reads.
    type Section<'a>;
    /// What a reload's plan keeps for the family once every map is written.
    type Pending: Send + 'static;

    fn section(config: &Config) -> Self::Section<'_>;

    /// Decides, before anything is attached, whether the family will need the cgroup v2 root.
    fn needs_cgroup(&mut self, _section: &Self::Section<'_>) -> bool {
        false
    }

    /// Fills the maps, then attaches the programs through pinned links or adopts the pinned
    /// ones. A family the config leaves off attaches nothing (and says why in the log).
    fn start(&mut self, section: &Self::Section<'_>, cx: &mut Start<'_>) -> Started;

    /// The ring buffers to read once started.
    fn events(&self) -> Vec<events::Source>;

    /// What the maps should hold for a new config, and what to keep once they hold it.
    /// Attachments change only with a restart.
    fn plan(&self, section: &Self::Section<'_>, host: &Host<'_>) -> (maps::Plan, Self::Pending);

    fn commit(&mut self, pending: Self::Pending);

    /// After a reload's maps are written: attaches or detaches what a setting of the new config
    /// turns on or off. Most attachments change only with a restart, so the default does
    /// nothing. A refusal here leaves the reload in force; the family says so in its feature
    /// line.
    fn reattach(&mut self, _section: &Self::Section<'_>, _cx: &mut Reattach<'_>) {}

    /// What the maps would hold for `section` alone, with nothing resolved or found on the host
    /// yet: what the capacity check (`capacity.rs`) measures before anything runs.
    fn config_plan(section: &Self::Section<'_>) -> maps::Plan;

    /// Follows what changed on the host since the last look (cgroups, tasks, interfaces).
    fn refresh(
        &mut self,
        section: &Self::Section<'_>,
        cx: &mut Refresh<'_>,
    ) -> Result<(), KernelError>;

    /// Adds the family's counters (read even while nothing is attached: the maps exist).
    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError>;
}

/// A family in the table, its section picked from the config and a reload's pending state
/// kept until the reload's maps are written.
pub(super) trait Entry: Send {
    fn needs_cgroup(&mut self, config: &Config) -> bool;
    fn start(&mut self, config: &Config, cx: &mut Start<'_>) -> Started;
    fn events(&self) -> Vec<events::Source>;
    fn plan(&mut self, config: &Config, host: &Host<'_>) -> maps::Plan;
    fn config_plan(&self, config: &Config) -> maps::Plan;
    /// After a reload's write: keeps what [`Entry::plan`] planned when `written`, else drops it.
    fn settle(&mut self, written: bool);
    fn reattach(&mut self, config: &Config, cx: &mut Reattach<'_>);
    fn refresh(&mut self, config: &Config, cx: &mut Refresh<'_>) -> Result<(), KernelError>;
    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

struct Slot<F: Family> {
    family: F,
    pending: Option<F::Pending>,
}

fn entry<F: Family>(family: F) -> Box<dyn Entry> {
    Box::new(Slot {
        family,
        pending: None,
    })
}

impl<F: Family> Entry for Slot<F> {
    fn needs_cgroup(&mut self, config: &Config) -> bool {
        self.family.needs_cgroup(&F::section(config))
    }

    fn start(&mut self, config: &Config, cx: &mut Start<'_>) -> Started {
        self.family.start(&F::section(config), cx)
    }

    fn events(&self) -> Vec<events::Source> {
        self.family.events()
    }

    fn plan(&mut self, config: &Config, host: &Host<'_>) -> maps::Plan {
        let (plan, pending) = self.family.plan(&F::section(config), host);
        self.pending = Some(pending);
        plan
    }

    fn config_plan(&self, config: &Config) -> maps::Plan {
        F::config_plan(&F::section(config))
    }

    fn settle(&mut self, written: bool) {
        if let (true, Some(pending)) = (written, self.pending.take()) {
            self.family.commit(pending);
        }
        self.pending = None;
    }

    fn reattach(&mut self, config: &Config, cx: &mut Reattach<'_>) {
        self.family.reattach(&F::section(config), cx)
    }

    fn refresh(&mut self, config: &Config, cx: &mut Refresh<'_>) -> Result<(), KernelError> {
        self.family.refresh(&F::section(config), cx)
    }

    fn counters(&self, ebpf: &Ebpf, out: &mut Counters) -> Result<(), KernelError> {
        self.family.counters(ebpf, out)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The family of type `F` in `table`, for the few questions only one family answers.
pub(super) fn find<F: Family>(table: &[Box<dyn Entry>]) -> Option<&F> {
    table
        .iter()
        .find_map(|e| e.as_any().downcast_ref::<Slot<F>>())
        .map(|slot| &slot.family)
}

pub(super) fn find_mut<F: Family>(table: &mut [Box<dyn Entry>]) -> Option<&mut F> {
    table
        .iter_mut()
        .find_map(|e| e.as_any_mut().downcast_mut::<Slot<F>>())
        .map(|slot| &mut slot.family)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_in_the_table_once() {
        let table = all();
        assert_eq!(table.len(), 5);
        assert!(find::<super::super::bind::BindRules>(&table).is_some());
        assert!(find::<super::super::egress::EgressAllowList>(&table).is_some());
        assert!(find::<super::super::upstream::UpstreamGuard>(&table).is_some());
        assert!(find::<super::super::xdp::SynLimit>(&table).is_some());
        assert!(find::<super::super::watch::EnvironWatch>(&table).is_some());
    }
}
