//! The kernel half: loads the embedded eBPF object, prepares the pin directory, and steps the
//! program families through their life: start (fill the maps, attach or adopt), read their
//! events, write a reload all or nothing, follow the host, report counters.
//!
//! The families (bind rules, egress allow-list, upstream guard, XDP limit, environ watch) share
//! one shape, the `Family` trait in `family.rs`, and one table, `family::all`: this loader
//! steps through that table and names no family. Each family sees its own config section, never
//! the whole `Config`. Adding a family touches one file and one line (`family.rs` says how).
//! What is not a family's lives here: the object, the pin directory and its manifest, the
//! cgroup root and the guarded service's cgroups that several families read, the program logs.

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
mod family;
pub mod features;
mod link_update;
mod manifest;
mod maps;
mod pin_state;
pub mod pins;
mod probe;
mod upstream;
mod watch;
mod xdp;

use aya::{maps::RingBuf, Ebpf, EbpfLoader};
use serde::Serialize;

pub use error::KernelError;
pub use family::Counters;
pub use features::Feature;
pub use upstream::{
    local_upstream as upstream_destinations, pinned_allowed as upstream_pinned_allowed, Destination,
};

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    config::Config,
    guarded::{self, GuardedCgroup},
    resolve::Resolved,
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
    /// Every program family, in the table's order.
    families: Vec<Box<dyn family::Entry>>,
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

        let mut families = family::all();
        // Every family decides, none skipped: some remember their decision for the start.
        let mut needs_cgroup = false;
        for family in &mut families {
            needs_cgroup |= family.needs_cgroup(config);
        }
        let cgroup_root = if needs_cgroup {
            Some(cgroup::cgroup2_root()?)
        } else {
            None
        };
        if let Some(root) = &cgroup_root {
            warn_if_guarded_self(config, root, gateway(config));
        }
        let mut programs = Vec::new();
        let mut guarded = Vec::new();
        for family in &mut families {
            let mut cx = family::Start {
                ebpf: &mut ebpf,
                pins: &pins,
                features: &mut features,
                root: cgroup_root.as_deref(),
                guarded: &mut guarded,
            };
            programs.extend(family.start(config, &mut cx)?);
            for source in family.events() {
                spawn_reader(&mut ebpf, source)?;
            }
        }
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
            families,
            pins,
        })
    }

    /// Brings the maps in line with a new config without detaching anything, all or nothing:
    /// every family's maps are planned, checked against their capacities, and written in the
    /// table's order (bind, egress, upstream guard, xdp, watch); when the kernel refuses a write,
    /// every map written so far gets its old content back and the error is returned, so the old
    /// config stays in force (and every family keeps what it last wrote).
    /// Attachments themselves (which interfaces, which hooks) change only with a restart, but
    /// for those a family follows once the maps are written (the created-files record, which
    /// fix mode turns on and off).
    pub fn apply(&mut self, config: &Config) -> Result<(), KernelError> {
        let host = family::Host {
            root: self.cgroup_root.as_deref(),
            guarded: &self.guarded,
        };
        let mut plan = Vec::new();
        for family in &mut self.families {
            plan.extend(family.plan(config, &host));
        }
        let outcome = maps::apply(&mut self.ebpf, &plan);
        for family in &mut self.families {
            family.settle(outcome.is_ok());
        }
        if outcome.is_ok() {
            for family in &mut self.families {
                let mut cx = family::Reattach {
                    ebpf: &mut self.ebpf,
                    pins: &self.pins,
                    programs: &mut self.programs,
                    features: &mut self.features,
                };
                family.reattach(config, &mut cx);
            }
        }
        outcome
    }

    /// How the created-files record is kept (`lsm/file_open`, `kprobe/security_file_open` or
    /// `tracepoints`), or `None` when it is off.
    pub fn created_files(&self) -> Option<&'static str> {
        created::Mechanism::of(&self.programs).map(created::Mechanism::as_str)
    }

    /// The `created-files` feature line: how files are recorded, or why they are not (fix mode
    /// off, or the kernel refused every hook), when the environ watch runs.
    pub fn created_files_detail(&self) -> Option<&str> {
        self.features
            .iter()
            .find(|f| f.name == created::FEATURE)
            .map(|f| f.detail.as_str())
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
        family::find::<watch::EnvironWatch>(&self.families)
            .map(watch::EnvironWatch::guarded_pids)
            .unwrap_or_default()
    }

    /// The interfaces the XDP limit is attached to, and why.
    pub fn xdp_interfaces(&self) -> Option<&xdp::Interfaces> {
        family::find::<xdp::SynLimit>(&self.families).map(xdp::SynLimit::interfaces)
    }

    /// The destinations the upstream guard guards, as last written.
    pub fn guarded_ports(&self) -> &[(Destination, u16)] {
        family::find::<upstream::UpstreamGuard>(&self.families)
            .map_or(&[], upstream::UpstreamGuard::ports)
    }

    /// Re-reads the guarded service's cgroups, then lets every family follow the host (the
    /// guarded tasks, interfaces that came up, bind-rule owners and allowed cgroups that were
    /// re-created), updating their maps where something changed. Every family refreshes even
    /// when one fails; the first error is returned. Returns whether the guarded set changed.
    pub fn refresh_guarded(&mut self, config: &Config) -> Result<bool, KernelError> {
        let root = self.cgroup_root.as_deref();
        let now = root.map(|root| guarded::cgroups(&config.guarded, root));
        let changed = now.as_ref().is_some_and(|now| *now != self.guarded);
        if let (true, Some(now)) = (changed, now) {
            self.guarded = now;
        }
        let mut first_error = None;
        for family in &mut self.families {
            let mut cx = family::Refresh {
                ebpf: &mut self.ebpf,
                pins: &self.pins,
                programs: &mut self.programs,
                root,
                guarded: &self.guarded,
                guarded_changed: changed,
            };
            if let Err(err) = family.refresh(config, &mut cx) {
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(changed),
        }
    }

    /// Takes a new set of resolved host names into the egress allow-list.
    /// A set the maps refuse (too many addresses, say) is dropped: the previous one stays, so
    /// later reloads are not refused for it.
    pub fn set_resolved(&mut self, resolved: Resolved, config: &Config) -> Result<(), KernelError> {
        use family::Family;
        match family::find_mut::<egress::EgressAllowList>(&mut self.families) {
            Some(egress) => egress.set_resolved(
                &mut self.ebpf,
                &egress::EgressAllowList::section(config),
                &self.guarded,
                resolved,
            ),
            None => Ok(()),
        }
    }

    pub fn counters(&self) -> Result<Counters, KernelError> {
        let mut out = Counters::default();
        for family in &self.families {
            family.counters(&self.ebpf, &mut out)?;
        }
        Ok(out)
    }
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

/// Takes the ring buffer `source` names and spawns its reader on the current runtime.
fn spawn_reader(ebpf: &mut Ebpf, source: events::Source) -> Result<(), KernelError> {
    let name = source.map;
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    let ring = RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })?;
    tokio::spawn(report(source.what, (source.read)(ring)));
    Ok(())
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
