//! The kernel half: loads the embedded eBPF object, attaches the programs the config asks for,
//! keeps their maps in step with the config, and streams their events.

mod bind;
mod cgroup;
mod error;
mod events;
pub mod features;
mod maps;
mod probe;
mod xdp;

use aya::{maps::RingBuf, Ebpf};
use serde::Serialize;

pub use bind::BindStats;
pub use error::KernelError;
pub use features::Feature;
pub use xdp::XdpStats;

use crate::config::Config;

/// The object built from `guard-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxyguard"));

/// One attached program, as reported at start and by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub hook: &'static str,
    pub target: String,
    pub mode: &'static str,
}

/// Every program family's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Counters {
    pub bind: BindStats,
    pub xdp: XdpStats,
}

pub struct Kernel {
    ebpf: Ebpf,
    pub programs: Vec<AttachedProgram>,
    pub features: Vec<Feature>,
}

impl Kernel {
    /// Loads the object, applies `config` to the maps, attaches the programs, and spawns the event
    /// and log readers on the current tokio runtime.
    pub fn start(config: &Config) -> Result<Kernel, KernelError> {
        let mut features = features::detect();
        raise_memlock_limit();

        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| KernelError::LoadObject { source })?;
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
        if config.bind.enabled {
            bind::apply(&mut ebpf, &config.bind)?;
            let root = cgroup::cgroup2_root()?;
            programs.extend(bind::attach(&mut ebpf, &root, &config.bind)?);
            let name = guard_common::bind::MAP_BIND_EVENTS;
            let map = ebpf
                .take_map(name)
                .ok_or(KernelError::Missing { kind: "map", name })?;
            let ring =
                RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            tokio::spawn(report("bind events", events::read_bind_events(ring)));
        }
        xdp::apply(&mut ebpf, &config.xdp)?;
        if config.xdp.enabled && !config.xdp.interfaces.is_empty() {
            programs.extend(xdp::attach(&mut ebpf, &config.xdp)?);
            let name = guard_common::xdp::MAP_XDP_EVENTS;
            let map = ebpf
                .take_map(name)
                .ok_or(KernelError::Missing { kind: "map", name })?;
            let ring =
                RingBuf::try_from(map).map_err(|source| KernelError::Map { name, source })?;
            tokio::spawn(report("xdp events", events::read_xdp_events(ring)));
        } else {
            tracing::info!(
                "xdp: no interfaces configured ([xdp] interfaces); the SYN rate limit is off"
            );
        }
        for program in &programs {
            tracing::info!(
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
        })
    }

    /// Brings the maps in line with a new config without detaching anything. Attachments
    /// themselves (which interfaces, which hooks) change only with a restart.
    pub fn apply(&mut self, config: &Config) -> Result<(), KernelError> {
        bind::apply(&mut self.ebpf, &config.bind)?;
        xdp::apply(&mut self.ebpf, &config.xdp)
    }

    pub fn counters(&self) -> Result<Counters, KernelError> {
        Ok(Counters {
            bind: bind::stats(&self.ebpf)?,
            xdp: xdp::stats(&self.ebpf)?,
        })
    }
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
