//! The kernel half: loads the embedded eBPF object, attaches the programs the config asks for,
//! keeps their maps in step with the config, and streams their events.

mod bind;
mod btf_offsets;
pub mod capacity;
pub mod cgroup;
mod cgroup_programs;
mod created;
mod egress;
mod environ;
mod error;
mod events;
pub mod features;
mod link_update;
mod manifest;
mod maps;
mod pin_state;
pub mod pins;
mod probe;
mod upstream;
mod xdp;

use aya::{maps::RingBuf, Ebpf, EbpfLoader};
use serde::Serialize;

pub use bind::BindStats;
pub use created::CreatedStats;
pub use egress::EgressStats;
pub use environ::EnvironStats;
pub use error::KernelError;
pub use features::Feature;
pub use upstream::{
    local_upstream as upstream_destinations, pinned_allowed as upstream_pinned_allowed,
    Destination, UpstreamStats,
};
pub use xdp::XdpStats;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::{
    config::Config,
    guarded::{self, GuardedCgroup},
    guarded_pids,
    resolve::{self, Resolved},
};

/// The object built from `guard-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxyguard"));

/// One attached program, as reported at start and by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub hook: &'static str,
    pub target: String,
    pub mode: &'static str,
    /// Pinned by an earlier daemon of the same object and adopted, not attached by this one.
    pub adopted: bool,
    /// Pinned by a daemon of another object (an upgrade): its link now runs this object's program.
    pub replaced: bool,
    /// The kernel's id of the program in force.
    pub program_id: Option<u32>,
}

impl AttachedProgram {
    /// A program an earlier daemon of the same object pinned, taken over as it is.
    fn adopted(
        name: &'static str,
        hook: &'static str,
        target: String,
        mode: &'static str,
        program_id: u32,
    ) -> AttachedProgram {
        AttachedProgram {
            name,
            hook,
            target,
            mode,
            adopted: true,
            replaced: false,
            program_id: Some(program_id),
        }
    }
}

/// Every program family's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counters {
    pub bind: BindStats,
    pub xdp: XdpStats,
    pub egress: EgressStats,
    pub environ: EnvironStats,
    pub created_files: CreatedStats,
    pub upstream_guard: UpstreamStats,
}

/// The counters as last read by the daemon's loop, for the metrics endpoint (which runs on the
/// proxy's tasks and cannot reach the maps).
static LAST_COUNTERS: std::sync::Mutex<Option<serde_json::Value>> = std::sync::Mutex::new(None);

/// Records `counters` for [`last_counters`].
pub fn publish_counters(counters: &Counters) {
    if let Ok(value) = serde_json::to_value(counters) {
        *LAST_COUNTERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }
}

/// Every counter as (family, name, value), from the last [`publish_counters`].
pub fn last_counters() -> Vec<(String, String, u64)> {
    let guard = LAST_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(serde_json::Value::Object(families)) = guard.as_ref() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (family, counters) in families {
        for (name, value) in counters.as_object().into_iter().flatten() {
            if let Some(n) = value.as_u64() {
                out.push((family.clone(), name.clone(), n));
            }
        }
    }
    out
}

pub struct Kernel {
    ebpf: Ebpf,
    pub programs: Vec<AttachedProgram>,
    pub features: Vec<Feature>,
    /// The cgroup v2 root, when a cgroup program is attached.
    cgroup_root: Option<PathBuf>,
    /// The guarded service's cgroups as last seen.
    pub guarded: Vec<GuardedCgroup>,
    /// Host-name egress targets as last resolved.
    resolved: Resolved,
    /// Bind-rule owner cgroups as last resolved.
    bind_owners: bind::Owners,
    /// The cgroups the upstream guard lets connect, as last found.
    upstream_found: upstream::Found,
    /// The guarded destinations as last written.
    pub guarded_ports: Vec<(Destination, u16)>,
    /// The environ watch's state, when it is attached.
    watch: Option<environ::Watch>,
    /// The interfaces the XDP limit is attached to, and why.
    pub xdp_interfaces: xdp::Interfaces,
    /// The pin directory, for links made after start (XDP on an interface that came up).
    pins: pins::PinDir,
}

impl Kernel {
    /// Loads the object, applies `config` to the maps, attaches the programs, and spawns the event
    /// and log readers on the current tokio runtime.
    pub fn start(config: &Config) -> Result<Kernel, KernelError> {
        let mut features = features::detect();
        raise_memlock_limit();

        let ours = manifest::Manifest::of_object(OBJECT, pins::PINNED_MAPS)
            .map_err(|source| KernelError::Object { source })?
            .with_versions(pins::STATE_VERSIONS);
        let pins = pins::PinDir::prepare(&config.kernel.pin_dir, &ours)?;
        let mut loader = EbpfLoader::new();
        for name in pins::PINNED_MAPS {
            loader.map_pin_path(name, pins.map_pin(name));
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|source| KernelError::LoadObject { source })?;
        features::record_lsm_probe(&mut features, probe::bpf_lsm(&mut ebpf));
        for feature in features.iter().filter(|f| !f.available) {
            tracing::warn!(
                feature = feature.name,
                "kernel feature unavailable: {}",
                feature.detail
            );
        }
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => {
                tokio::spawn(report("program logs", events::forward_program_logs(logger)));
            }
            Err(err) => tracing::warn!("eBPF program logs unavailable: {err}"),
        }

        let mut programs = Vec::new();
        let gateway = gateway(config);
        let guard_upstream =
            !upstream::destinations(config, gateway, &upstream::Found::default()).is_empty();
        let needs_cgroup = config.bind.enabled
            || (config.egress.enabled && config.guarded.is_set())
            || guard_upstream;
        let cgroup_root = if needs_cgroup {
            Some(cgroup::cgroup2_root()?)
        } else {
            None
        };
        let mut bind_owners = bind::Owners::new();
        if let (true, Some(root)) = (config.bind.enabled, &cgroup_root) {
            bind_owners = bind::owners(&config.bind, root);
            bind::apply(&mut ebpf, &config.bind, &bind_owners)?;
            programs.extend(bind::attach(&mut ebpf, &pins, root, &config.bind)?);
            let ring = take_ring(&mut ebpf, guard_common::bind::MAP_BIND_EVENTS)?;
            tokio::spawn(report("bind events", events::read_bind_events(ring)));
        }
        let mut guarded = Vec::new();
        if let (true, Some(root)) = (
            config.egress.enabled && config.guarded.is_set(),
            &cgroup_root,
        ) {
            guarded = guarded::cgroups(&config.guarded, root);
            let targets = egress::targets(
                &config.egress,
                &Resolved::new(),
                &dns_servers(config),
                gateway,
            );
            egress::apply(&mut ebpf, &config.egress, &targets, &guarded)?;
            programs.extend(egress::attach(&mut ebpf, &pins, root, &config.egress)?);
            let ring = take_ring(&mut ebpf, guard_common::egress::MAP_EGRESS_EVENTS)?;
            tokio::spawn(report("egress events", events::read_egress_events(ring)));
        } else if config.egress.enabled {
            tracing::info!("egress: no [guarded] service configured; the allow-list is idle");
        }
        if let Some(root) = &cgroup_root {
            warn_if_guarded_self(config, root, gateway);
        }
        let mut upstream_found = upstream::Found::default();
        let mut guarded_ports = Vec::new();
        if let (true, Some(root)) = (guard_upstream, &cgroup_root) {
            // Our own cgroup id is in the map before the programs can run (or, adopted, before
            // the new target takes effect).
            let service = gateway_guarded(config, gateway, root, &guarded);
            upstream_found = upstream::find(config, root, service);
            let dests = upstream::destinations(config, gateway, &upstream_found);
            upstream::apply(&mut ebpf, config.upstream_guard.mode, &dests)?;
            guarded_ports = dests.iter().map(|d| (d.which, d.port)).collect();
            programs.extend(upstream::attach(&mut ebpf, &pins, root, config)?);
            let ring = take_ring(&mut ebpf, guard_common::upstream::MAP_UPSTREAM_EVENTS)?;
            tokio::spawn(report(
                "upstream guard events",
                events::read_upstream_events(ring),
            ));
        } else if config.upstream_guard.enabled && config.proxy.enabled {
            tracing::info!(
                upstream = config.proxy.upstream,
                "upstream_guard: the upstream is not on this host; the connect rule is off"
            );
        }
        xdp::apply(&mut ebpf, &config.xdp)?;
        let xdp_interfaces = xdp::interfaces(config);
        if !xdp_interfaces.names.is_empty() {
            let (attached, modes) =
                xdp::attach(&mut ebpf, &pins, &config.xdp, &xdp_interfaces.names)?;
            programs.extend(attached);
            features.push(features::xdp_modes(&modes));
        } else {
            tracing::info!("xdp: the SYN rate limit is off: {}", xdp_interfaces.why);
        }
        // Read even while nothing is attached: an interface that comes up later gets the limit.
        let xdp_ring = take_ring(&mut ebpf, guard_common::xdp::MAP_XDP_EVENTS)?;
        tokio::spawn(report("xdp events", events::read_xdp_events(xdp_ring)));
        let watch = if config.watch.enabled && config.guarded.is_set() {
            // A watch that cannot attach (no tracefs, say) leaves the other families running.
            match start_watch(&mut ebpf, &pins, config, &mut features) {
                Ok((attached, watch)) => {
                    programs.extend(attached.iter().cloned());
                    let ring = take_ring(&mut ebpf, guard_common::environ::MAP_ENVIRON_EVENTS)?;
                    tokio::spawn(report("environ events", events::read_environ_events(ring)));
                    if created::Mechanism::of(&attached).is_some() {
                        let ring = take_ring(&mut ebpf, guard_common::created::MAP_CREATED_EVENTS)?;
                        tokio::spawn(report(
                            "created-files events",
                            events::read_created_events(ring),
                        ));
                    }
                    Some(watch)
                }
                Err(err) => {
                    tracing::error!("the environ watch is off: {err}");
                    None
                }
            }
        } else {
            if config.watch.enabled {
                tracing::info!("watch: no [guarded] service configured; the environ watch is off");
            }
            None
        };
        // Adopted programs log into their first daemon's log map; read that one too.
        if let Some(id) = programs
            .iter()
            .filter(|p| p.adopted)
            .find_map(|p| p.program_id)
        {
            match aya_log::EbpfLogger::init_from_id(id) {
                Ok(logger) => {
                    tokio::spawn(report(
                        "adopted program logs",
                        events::forward_program_logs(logger),
                    ));
                }
                Err(err) => tracing::info!("the adopted programs' logs are not readable: {err}"),
            }
        }
        // Hooks the config no longer asks for are detached; the rest stay pinned.
        let wanted = programs
            .iter()
            .map(|p| pins::link_name(p.name, &p.target))
            .collect();
        pins.drop_links_except(&wanted);
        // Every program is in place: recreated maps take their pins, and the manifest names
        // this object.
        pins.commit(&ours)?;
        for program in &programs {
            tracing::info!(
                adopted = program.adopted,
                replaced = program.replaced,
                program = program.name,
                hook = program.hook,
                target = %program.target,
                mode = program.mode,
                "attached"
            );
        }
        Ok(Kernel {
            ebpf,
            programs,
            features,
            cgroup_root,
            guarded,
            resolved: Resolved::new(),
            bind_owners,
            upstream_found,
            guarded_ports,
            watch,
            xdp_interfaces,
            pins,
        })
    }

    /// Brings the maps in line with a new config without detaching anything, all or nothing:
    /// every family's maps are planned, checked against their capacities, and written in one
    /// order (bind, xdp, watch, egress, upstream guard); when the kernel refuses a write, every
    /// map written so far gets its old content back and the error is returned, so the old config
    /// stays in force.
    /// Attachments themselves (which interfaces, which hooks) change only with a restart.
    pub fn apply(&mut self, config: &Config) -> Result<(), KernelError> {
        let owners = match &self.cgroup_root {
            Some(root) => bind::owners(&config.bind, root),
            None => self.bind_owners.clone(),
        };
        let mut plan = bind::plan(&config.bind, &owners);
        plan.extend(xdp::plan(&config.xdp));
        let watched = self.watch.as_ref().map(|watch| {
            let (tasks, allowed) = watch_sets(config, watch.root.as_deref());
            let tasks = if config.watch.enabled {
                tasks
            } else {
                Default::default()
            };
            plan.extend(environ::plan(
                &config.watch,
                watch.offsets,
                &tasks,
                &allowed,
            ));
            (tasks, allowed)
        });
        let gateway = gateway(config);
        if self.egress_attached() {
            let targets = egress::targets(
                &config.egress,
                &self.resolved,
                &dns_servers(config),
                gateway,
            );
            plan.extend(egress::plan(&config.egress, &targets, &self.guarded));
        }
        let upstream = match (&self.cgroup_root, self.upstream_attached()) {
            (Some(root), true) => {
                let service = gateway_guarded(config, gateway, root, &self.guarded);
                let found = upstream::find(config, root, service);
                let dests = upstream::destinations(config, gateway, &found);
                plan.extend(upstream::plan(config.upstream_guard.mode, &dests));
                Some((found, dests.iter().map(|d| (d.which, d.port)).collect()))
            }
            _ => None,
        };
        maps::apply(&mut self.ebpf, &plan)?;
        self.bind_owners = owners;
        if let Some((found, ports)) = upstream {
            self.upstream_found = found;
            self.guarded_ports = ports;
        }
        if let (Some(watch), Some((tasks, allowed))) = (self.watch.as_mut(), watched) {
            watch.tasks = tasks;
            watch.allowed = allowed;
        }
        Ok(())
    }

    /// Re-reads the guarded tasks and the allowed executables' identities into the environ maps.
    fn refresh_watch(&mut self, config: &Config) -> Result<(), KernelError> {
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        let (tasks, allowed) = watch_sets(config, watch.root.as_deref());
        environ::apply(&mut self.ebpf, &config.watch, watch, tasks, allowed)
    }

    /// How the created-files record is kept (`lsm/file_open` or `tracepoints`), or `None` when
    /// it is off.
    pub fn created_files(&self) -> Option<&'static str> {
        created::Mechanism::of(&self.programs).map(created::Mechanism::as_str)
    }

    /// The environ watch's tier and why no stronger one runs (its `environ-watch` feature line),
    /// when the watch is attached.
    pub fn environ_watch(&self) -> Option<&str> {
        self.features
            .iter()
            .find(|f| f.name == "environ-watch")
            .map(|f| f.detail.as_str())
    }

    /// The guarded service's processes (tgids) as last written to the kernel.
    pub fn guarded_pids(&self) -> BTreeSet<u32> {
        self.watch
            .as_ref()
            .map(|w| w.tasks.values().copied().collect())
            .unwrap_or_default()
    }

    /// Re-reads the guarded service's cgroups and the bind-rule owners' cgroups; when they changed
    /// (a restart, a new worker cgroup), updates the maps. Returns whether the guarded set changed.
    pub fn refresh_guarded(&mut self, config: &Config) -> Result<bool, KernelError> {
        self.refresh_watch(config)?;
        self.refresh_xdp_interfaces(config);
        let Some(root) = self.cgroup_root.clone() else {
            return Ok(false);
        };
        // A restarted bind-rule owner gets a new cgroup id too.
        let owners = bind::owners(&config.bind, &root);
        if owners != self.bind_owners {
            self.bind_owners = owners;
            bind::apply(&mut self.ebpf, &config.bind, &self.bind_owners)?;
        }
        let now = guarded::cgroups(&config.guarded, &root);
        // So is a restarted allowed cgroup, the guarded service (when it may use the gateway),
        // and our own cgroup when someone moves the daemon.
        if self.upstream_attached() {
            let gateway = gateway(config);
            let service = gateway_guarded(config, gateway, &root, &now);
            let found = upstream::find(config, &root, service);
            if found != self.upstream_found {
                let dests = upstream::destinations(config, gateway, &found);
                upstream::apply(&mut self.ebpf, config.upstream_guard.mode, &dests)?;
                self.upstream_found = found;
                self.guarded_ports = dests.iter().map(|d| (d.which, d.port)).collect();
            }
        }
        if now == self.guarded {
            return Ok(false);
        }
        self.guarded = now;
        self.apply_egress(config)?;
        Ok(true)
    }

    /// Attaches the XDP limit to interfaces that came up since the last look (with
    /// `interfaces = []`); interfaces that went away keep their pinned link until the next start.
    fn refresh_xdp_interfaces(&mut self, config: &Config) {
        let now = xdp::interfaces(config);
        let new: Vec<String> = now
            .names
            .iter()
            .filter(|name| {
                !self.xdp_interfaces.names.contains(name)
                    && !self.xdp_interfaces.refused.contains(name)
            })
            .cloned()
            .collect();
        if new.is_empty() {
            self.xdp_interfaces.why = now.why;
            return;
        }
        match xdp::attach(&mut self.ebpf, &self.pins, &config.xdp, &new) {
            Ok((attached, modes)) => {
                tracing::info!(interfaces = ?new, "xdp: attached to interfaces that came up: {}", modes.join("; "));
                self.programs.extend(attached);
                self.xdp_interfaces.names.extend(new);
                self.xdp_interfaces.why = now.why;
            }
            Err(err) => {
                tracing::error!(interfaces = ?new, "xdp: cannot attach to a new interface (not retried): {err}");
                self.xdp_interfaces.refused.extend(new);
            }
        }
    }

    /// Takes a new set of resolved host names into the egress allow-list.
    /// A set the maps refuse (too many addresses, say) is dropped: the previous one stays, so
    /// later reloads are not refused for it.
    pub fn set_resolved(&mut self, resolved: Resolved, config: &Config) -> Result<(), KernelError> {
        let previous = std::mem::replace(&mut self.resolved, resolved);
        let outcome = self.apply_egress(config);
        if outcome.is_err() {
            self.resolved = previous;
        }
        outcome
    }

    fn egress_attached(&self) -> bool {
        self.programs
            .iter()
            .any(|p| p.name == guard_common::egress::PROG_EGRESS_CONNECT_V4)
    }

    fn upstream_attached(&self) -> bool {
        self.programs
            .iter()
            .any(|p| p.name == guard_common::upstream::PROG_UPSTREAM_CONNECT_V4)
    }

    fn apply_egress(&mut self, config: &Config) -> Result<(), KernelError> {
        if !self.egress_attached() {
            return Ok(());
        }
        let targets = egress::targets(
            &config.egress,
            &self.resolved,
            &dns_servers(config),
            gateway(config),
        );
        egress::apply(&mut self.ebpf, &config.egress, &targets, &self.guarded)
    }

    pub fn counters(&self) -> Result<Counters, KernelError> {
        Ok(Counters {
            bind: bind::stats(&self.ebpf)?,
            xdp: xdp::stats(&self.ebpf)?,
            egress: egress::stats(&self.ebpf)?,
            environ: environ::stats(&self.ebpf)?,
            created_files: created::stats(&self.ebpf)?,
            upstream_guard: upstream::stats(&self.ebpf)?,
        })
    }
}

/// The environ watch, then the created-files record, which reads the watch's guarded task set.
fn start_watch(
    ebpf: &mut Ebpf,
    pins: &pins::PinDir,
    config: &Config,
    features: &mut Vec<Feature>,
) -> Result<(Vec<AttachedProgram>, environ::Watch), KernelError> {
    // The offsets serve every layer: the LSM program, the tracepoints' dirfd resolution, and the
    // created-files programs' fd-table reads.
    let offsets = btf_offsets::environ_offsets(Path::new("/sys/kernel/btf/vmlinux"));
    let (mut programs, watch) = start_environ(ebpf, pins, config, features, offsets.clone())?;
    // After the environ watch, which turns `bpf-lsm` off when its own LSM program is refused.
    let lsm_active = features.iter().any(|f| f.name == "bpf-lsm" && f.available);
    programs.extend(created::start(ebpf, pins, offsets, lsm_active, features));
    Ok((programs, watch))
}

/// Fills the environ maps, then attaches one tier: the LSM program where BPF LSM works (deny),
/// else the open probe where kprobes work (every spelling, report), else the path tracepoints,
/// within what `[watch] tier` allows. A refused LSM is folded into the `bpf-lsm` feature entry;
/// the tier in use, and why no stronger one, is the `environ-watch` entry.
fn start_environ(
    ebpf: &mut Ebpf,
    pins: &pins::PinDir,
    config: &Config,
    features: &mut Vec<Feature>,
    offsets: Result<guard_common::environ::KernelOffsets, String>,
) -> Result<(Vec<AttachedProgram>, environ::Watch), KernelError> {
    let mut watch = environ::Watch {
        root: cgroup::cgroup2_root().ok(),
        ..Default::default()
    };
    let cap = config.watch.tier;
    let mut why_not = Vec::new();
    let lsm = features.iter_mut().find(|f| f.name == "bpf-lsm");
    let lsm_offsets = match (lsm, &offsets) {
        (Some(lsm), Ok(offsets)) if lsm.available => Some(*offsets),
        (Some(lsm), Err(reason)) if lsm.available => {
            lsm.available = false;
            lsm.detail = format!("{reason}; environ reads are detected, not denied");
            tracing::warn!("bpf-lsm: {}", lsm.detail);
            None
        }
        _ => None,
    };
    if let Err(reason) = &offsets {
        tracing::warn!("{reason}; an environ open relative to a /proc/<pid> dirfd is not resolved");
    }
    let (tasks, allowed) = watch_sets(config, watch.root.as_deref());
    match lsm_offsets {
        _ if !cap.allows_lsm() => why_not.push(format!(
            "LSM deny: not used ([watch] tier = \"{}\")",
            tier_name(cap)
        )),
        Some(offsets) => {
            // The offsets and the task set are in the map before the program can run.
            watch.offsets = offsets;
            environ::apply(
                ebpf,
                &config.watch,
                &mut watch,
                tasks.clone(),
                allowed.clone(),
            )?;
            match environ::attach_lsm(ebpf, pins, &config.watch) {
                Ok(program) => {
                    features.push(environ::tier_feature(environ::Tier::LsmDeny, &why_not));
                    return Ok((vec![program], watch));
                }
                Err(err) => {
                    tracing::warn!(
                        "environ LSM program refused ({err}); environ reads are detected, not denied"
                    );
                    if let Some(lsm) = features.iter_mut().find(|f| f.name == "bpf-lsm") {
                        lsm.available = false;
                        lsm.detail = format!("the environ LSM program was refused ({err}); environ reads are detected, not denied");
                    }
                    why_not.push(format!("LSM deny: the program was refused ({err})"));
                }
            }
        }
        None => why_not.push(format!("LSM deny: {}", feature_detail(features, "bpf-lsm"))),
    }
    if cap.allows_probe() {
        match open_probe_offsets(features, &offsets) {
            Ok(probe_offsets) => {
                watch.offsets = probe_offsets;
                environ::apply(
                    ebpf,
                    &config.watch,
                    &mut watch,
                    tasks.clone(),
                    allowed.clone(),
                )?;
                match environ::attach_open_probe(ebpf, pins) {
                    Ok(program) => {
                        features.push(environ::tier_feature(environ::Tier::OpenProbe, &why_not));
                        return Ok((vec![program], watch));
                    }
                    Err(err) => {
                        tracing::warn!(
                            "environ open probe refused ({err}); matching paths at openat"
                        );
                        why_not.push(format!("open probe: refused ({err})"));
                    }
                }
            }
            Err(reason) => why_not.push(format!("open probe: {reason}")),
        }
    } else {
        why_not.push("open probe: not used ([watch] tier = \"tracepoints\")".into());
    }
    watch.offsets = offsets.unwrap_or_default();
    environ::apply(ebpf, &config.watch, &mut watch, tasks, allowed)?;
    let programs = environ::attach_tracepoints(ebpf, pins)?;
    features.push(environ::tier_feature(
        environ::Tier::PathTracepoints,
        &why_not,
    ));
    Ok((programs, watch))
}

fn tier_name(tier: crate::config::watch::Tier) -> &'static str {
    use crate::config::watch::Tier;
    match tier {
        Tier::Auto => "auto",
        Tier::Probe => "probe",
        Tier::Tracepoints => "tracepoints",
    }
}

fn feature_detail(features: &[Feature], name: &str) -> String {
    features
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.detail.clone())
        .unwrap_or_else(|| format!("{name} was not checked"))
}

/// The offsets the open probe needs, or why it cannot run: kprobes, and BTF for `proc_inode`.
fn open_probe_offsets(
    features: &[Feature],
    offsets: &Result<guard_common::environ::KernelOffsets, String>,
) -> Result<guard_common::environ::KernelOffsets, String> {
    if !features.iter().any(|f| f.name == "kprobes" && f.available) {
        return Err(format!("kprobes: {}", feature_detail(features, "kprobes")));
    }
    let offsets = offsets.clone()?;
    if offsets.proc_vfs_inode == 0 {
        return Err(
            "kernel BTF lacks struct proc_inode's vfs_inode and pid, or struct pid's numbers"
                .into(),
        );
    }
    Ok(offsets)
}

/// The guarded service's tasks (task id → tgid), and the executables allowed to read its environ:
/// the configured ones, and proxyguard itself (its audits read the environ). A replaced binary
/// (an upgrade) gets a new inode, picked up on the next tick.
fn watch_sets(
    config: &Config,
    root: Option<&Path>,
) -> (
    std::collections::BTreeMap<u32, u32>,
    BTreeSet<guard_common::environ::ExeId>,
) {
    let tasks = guarded_pids::tasks(&guarded_pids::tgids(&config.guarded, root));
    let mut exes = config.watch.allow_exe.clone();
    if let Ok(own) = std::env::current_exe() {
        exes.push(own);
    }
    (tasks, environ::exe_ids(&exes))
}

/// The kernel features as `run` finds them, including whether an LSM program really loads; nothing
/// is attached or pinned (for `proxyguard check`).
pub fn probe_features() -> Vec<Feature> {
    let mut found = features::detect();
    raise_memlock_limit();
    match Ebpf::load(OBJECT) {
        Ok(mut ebpf) => features::record_lsm_probe(&mut found, probe::bpf_lsm(&mut ebpf)),
        Err(err) => found.push(Feature {
            name: "ebpf",
            available: false,
            detail: format!(
                "cannot load the eBPF object ({err}); {}",
                error::load_refused_hint()
            ),
        }),
    }
    found
}

/// The provider gateway's listen address, when one runs: the gateway port guard and the
/// `gateway-only` egress policy are built around it. Every use goes through here. The gateway
/// listens once `[[providers.routes]]` has an entry; a `listen` port of 0 (a kernel-assigned
/// port, for tests) names no port the kernel could guard, so it counts as none.
pub fn gateway(config: &Config) -> Option<SocketAddr> {
    config
        .providers
        .gateway_addr()
        .filter(|listen| listen.port() != 0)
}

/// The egress rule judges the guarded cgroups' tasks only, so proxyguard's own connections (the
/// gateway's to the providers among them) pass as long as the daemon runs outside them; say so
/// when it does not, and when `gateway-only` has no gateway to allow.
fn warn_if_guarded_self(config: &Config, root: &Path, gateway: Option<SocketAddr>) {
    if config.egress.enabled
        && config.egress.policy == crate::config::egress::EgressPolicy::GatewayOnly
        && gateway.is_none()
    {
        tracing::warn!(
            "egress: policy = \"gateway-only\" but no provider gateway runs; the guarded service \
             may reach nothing but DNS"
        );
    }
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(|p| root.join(p.trim_start_matches('/')))
        });
    let Some(own) = own else { return };
    if let Some(cgroup) = guarded::cgroups(&config.guarded, root)
        .iter()
        .find(|c| own.starts_with(&c.path))
    {
        tracing::warn!(
            cgroup = %cgroup.path.display(),
            "proxyguard runs inside the guarded service's cgroup: its own connections are judged \
             by the service's egress rule (run it in a unit of its own)"
        );
    }
}

/// The guarded service's cgroups, for the gateway's allowance: `known` when egress already
/// follows them, else found now; none without a gateway.
fn gateway_guarded(
    config: &Config,
    gateway: Option<SocketAddr>,
    root: &Path,
    known: &[GuardedCgroup],
) -> Vec<GuardedCgroup> {
    if gateway.is_none() || !config.guarded.is_set() {
        Vec::new()
    } else if !known.is_empty() {
        known.to_vec()
    } else {
        guarded::cgroups(&config.guarded, root)
    }
}

/// The configured DNS resolvers, or the system's.
fn dns_servers(config: &Config) -> Vec<IpAddr> {
    if config.egress.dns.is_empty() {
        resolve::system_nameservers()
    } else {
        config.egress.dns.clone()
    }
}

fn take_ring(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<RingBuf<aya::maps::MapData>, KernelError> {
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })
}

async fn report(
    what: &'static str,
    task: impl std::future::Future<Output = Result<(), KernelError>>,
) {
    if let Err(err) = task.await {
        tracing::error!("{what} reader stopped: {err}");
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so large maps load there too.
fn raise_memlock_limit() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(errno) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!("cannot raise RLIMIT_MEMLOCK ({errno}); fine on kernels >= 5.11");
    }
}

/// The object's program `name` as its type `T`, or the error that the binary was built from
/// mismatched sources. Every family looks its programs up through this.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(KernelError::Missing {
            kind: "program",
            name,
        })
}
