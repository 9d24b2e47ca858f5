//! Pinned kernel state under the pin directory (`[kernel] pin_dir`).
//!
//! Maps are pinned so rules, buckets and counters outlive the daemon; links are pinned so
//! enforcement stays on while no daemon runs (a crash, an upgrade, `kill -9`). A new daemon on the
//! same object adopts the pinned links instead of attaching a second copy, which would also double
//! every count. A daemon on another object (an upgrade) replaces their programs without a gap
//! (see `pin_state.rs` for how it tells). `proxyguard run --detach-kernel` removes it all on
//! purpose.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, LinkError, PinnedLink};

use super::KernelError;

/// State maps pinned by name. The aya-log map is not: log records are only for a live reader.
pub const PINNED_MAPS: &[&str] = &[
    guard_common::bind::MAP_BIND_PORTS,
    guard_common::bind::MAP_BIND_ALLOW_V4,
    guard_common::bind::MAP_BIND_ALLOW_V6,
    guard_common::bind::MAP_BIND_EVENTS,
    guard_common::bind::MAP_BIND_STATS,
    guard_common::xdp::MAP_XDP_CONFIG,
    guard_common::xdp::MAP_XDP_BUCKETS_V4,
    guard_common::xdp::MAP_XDP_BUCKETS_V6,
    guard_common::xdp::MAP_XDP_PREFIX_V4,
    guard_common::xdp::MAP_XDP_PREFIX_V6,
    guard_common::xdp::MAP_XDP_EVENT_CAP,
    guard_common::xdp::MAP_XDP_ALLOW_V4,
    guard_common::xdp::MAP_XDP_ALLOW_V6,
    guard_common::xdp::MAP_XDP_DENY_V4,
    guard_common::xdp::MAP_XDP_DENY_V6,
    guard_common::xdp::MAP_XDP_EVENTS,
    guard_common::xdp::MAP_XDP_STATS,
    guard_common::egress::MAP_EGRESS_CONFIG,
    guard_common::egress::MAP_EGRESS_CGROUPS,
    guard_common::egress::MAP_EGRESS_ALLOW_V4,
    guard_common::egress::MAP_EGRESS_ALLOW_V6,
    guard_common::egress::MAP_EGRESS_EVENTS,
    guard_common::egress::MAP_EGRESS_STATS,
    guard_common::environ::MAP_ENVIRON_CONFIG,
    guard_common::environ::MAP_ENVIRON_GUARDED,
    guard_common::environ::MAP_ENVIRON_ALLOWED,
    guard_common::environ::MAP_ENVIRON_EVENTS,
    guard_common::environ::MAP_ENVIRON_STATS,
    guard_common::created::MAP_CREATED_CONFIG,
    guard_common::created::MAP_CREATED_EVENTS,
    guard_common::created::MAP_CREATED_STATS,
    guard_common::upstream::MAP_UPSTREAM_CONFIG,
    guard_common::upstream::MAP_UPSTREAM_DEST_V4,
    guard_common::upstream::MAP_UPSTREAM_DEST_V6,
    guard_common::upstream::MAP_UPSTREAM_CGROUPS,
    guard_common::upstream::MAP_UPSTREAM_EVENTS,
    guard_common::upstream::MAP_UPSTREAM_STATS,
];

/// Pinned maps whose content a build may read differently at the same sizes, with the state
/// version this build reads. Bump the family's constant with any such change.
pub const STATE_VERSIONS: &[(&str, u32)] = &[
    (
        guard_common::xdp::MAP_XDP_CONFIG,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_BUCKETS_V4,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_BUCKETS_V6,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_PREFIX_V4,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_PREFIX_V6,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_EVENT_CAP,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_EVENTS,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
    (
        guard_common::xdp::MAP_XDP_STATS,
        guard_common::xdp::XDP_STATE_VERSION,
    ),
];

pub struct PinDir {
    pub(super) root: PathBuf,
    /// The pinned programs came from another object, or use maps this daemon recreates: they are
    /// replaced, not adopted.
    pub(super) replacing: bool,
    /// What becomes of each pinned map (decided in `pin_state.rs`).
    pub(super) maps: std::collections::BTreeMap<&'static str, super::pin_state::MapPin>,
}

/// What is pinned for one program on one target.
pub enum Pinned {
    /// Nothing: attach afresh.
    Absent,
    /// Pinned from this very object: adopt it as it is.
    Adopt { program_id: u32 },
    /// Pinned from another object: swap its program for this object's, with no gap. The daemon
    /// holds `link` until the swap is done.
    Replace { link: FdLink },
}

impl PinDir {
    /// Creates `root/maps`, `root/links` and an empty `root/staging` on bpffs.
    pub(super) fn create_dirs(root: &Path) -> Result<(), KernelError> {
        let err = |source| KernelError::PinDir {
            path: root.to_owned(),
            source,
        };
        for sub in ["maps", "links", STAGING] {
            std::fs::create_dir_all(root.join(sub)).map_err(err)?;
        }
        // Left over from a start that failed half-way; what it pinned there was never committed.
        for entry in std::fs::read_dir(root.join(STAGING))
            .map_err(err)?
            .flatten()
        {
            std::fs::remove_file(entry.path()).map_err(err)?;
        }
        Ok(())
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// `links/<program>@<target>`, with `/` in the target spelled `_`.
    pub fn link_path(&self, program: &str, target: &str) -> PathBuf {
        self.root.join("links").join(link_name(program, target))
    }

    /// What an earlier daemon pinned for `program` on `target`. The pin itself stays: it keeps
    /// the program attached.
    pub fn pinned(&self, program: &str, target: &str) -> Pinned {
        let path = self.link_path(program, target);
        if !path.exists() {
            return Pinned::Absent;
        }
        let link = PinnedLink::from_pin(&path).map(FdLink::from);
        match link.and_then(|link| link.info().map(|info| (link, info.program_id()))) {
            Ok((_, program_id)) if !self.replacing => Pinned::Adopt { program_id },
            Ok((link, _)) => Pinned::Replace { link },
            Err(err) => {
                tracing::warn!(path = %path.display(), "unusable pinned link, attaching afresh: {err}");
                let _ = std::fs::remove_file(&path);
                Pinned::Absent
            }
        }
    }

    /// Pins a program's freshly taken link (cgroup, XDP or tracepoint link) as an fd link.
    pub fn pin_link<L>(
        &self,
        link: L,
        program: &'static str,
        target: &str,
    ) -> Result<(), KernelError>
    where
        FdLink: TryFrom<L, Error = LinkError>,
    {
        let link = FdLink::try_from(link).map_err(|source| KernelError::LinkNotPinnable {
            name: program,
            source,
        })?;
        self.pin(link, program, target)
    }

    pub fn pin(
        &self,
        link: FdLink,
        program: &'static str,
        target: &str,
    ) -> Result<(), KernelError> {
        let path = self.link_path(program, target);
        link.pin(&path)
            .map(drop)
            .map_err(|source| KernelError::Pin {
                name: program,
                source,
            })
    }

    /// Pins `link` in place of the link pinned for `program` on `target`: under another name
    /// first, then renamed over the old pin, which detaches the old program once `link` is
    /// attached. For hooks whose links cannot swap their program (tracepoints, LSM).
    pub fn pin_over(
        &self,
        link: FdLink,
        program: &'static str,
        target: &str,
    ) -> Result<(), KernelError> {
        let staged = self
            .root
            .join(STAGING)
            .join(format!("link@{}", link_name(program, target)));
        let _pinned = link.pin(&staged).map_err(|source| KernelError::Pin {
            name: program,
            source,
        })?;
        std::fs::rename(&staged, self.link_path(program, target)).map_err(|source| {
            // Unpinning the new link detaches it; the old one stays in force.
            let _ = std::fs::remove_file(&staged);
            KernelError::PinState {
                path: staged.clone(),
                source,
            }
        })
    }

    /// Unpins (and so detaches) every pinned link that is not in `wanted` (program@target names):
    /// a hook the config no longer asks for.
    pub fn drop_links_except(&self, wanted: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                tracing::info!(
                    link = name,
                    "detaching a pinned program the config no longer asks for"
                );
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Where new pins wait until the programs that use them are in place.
pub(super) const STAGING: &str = "staging";

pub fn link_name(program: &str, target: &str) -> String {
    format!("{program}@{}", target.trim_matches('/').replace('/', "_"))
}

/// Removes every pin under `root`: links first (which detaches the programs), then maps, then
/// the manifest. Returns what was removed.
pub fn remove_all(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for sub in ["links", STAGING, "maps"] {
        let dir = root.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
        std::fs::remove_dir(&dir)?;
    }
    let manifest = root.join(super::pin_state::MANIFEST);
    if manifest.symlink_metadata().is_ok() {
        std::fs::remove_file(&manifest)?;
        removed.push(manifest);
    }
    if root.exists() {
        std::fs::remove_dir(root)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_flat_files() {
        assert_eq!(
            link_name("bind_rule_v4", "/sys/fs/cgroup/unified"),
            "bind_rule_v4@sys_fs_cgroup_unified"
        );
        assert_eq!(link_name("syn_rate_limit", "eth0"), "syn_rate_limit@eth0");
    }
}
