//! Pinned kernel state under the pin directory (`[kernel] pin_dir`).
//!
//! Maps are pinned so rules, buckets and counters outlive the daemon; links are pinned so
//! enforcement stays on while no daemon runs (a crash, an upgrade, `kill -9`). A new daemon
//! adopts the pinned links instead of attaching a second copy, which would also double every
//! count. `proxyguard run --detach-kernel` removes it all on purpose.

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
    guard_common::xdp::MAP_XDP_PORTS,
    guard_common::xdp::MAP_XDP_BUCKETS,
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
];

pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates `root/maps` and `root/links` on bpffs.
    pub fn prepare(root: &Path) -> Result<PinDir, KernelError> {
        for sub in ["maps", "links"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|source| KernelError::PinDir {
                path: root.to_owned(),
                source,
            })?;
        }
        Ok(PinDir {
            root: root.to_owned(),
        })
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// `links/<program>@<target>`, with `/` in the target spelled `_`.
    fn link_path(&self, program: &str, target: &str) -> PathBuf {
        self.root.join("links").join(link_name(program, target))
    }

    /// The id of the program an earlier daemon pinned for `program` on `target`, if any. The pin
    /// itself stays: it keeps the program attached.
    pub fn adopt(&self, program: &str, target: &str) -> Option<u32> {
        let path = self.link_path(program, target);
        if !path.exists() {
            return None;
        }
        let adopted = PinnedLink::from_pin(&path).and_then(|link| FdLink::from(link).info());
        match adopted {
            Ok(info) => Some(info.program_id()),
            Err(err) => {
                tracing::warn!(path = %path.display(), "unusable pinned link, attaching afresh: {err}");
                let _ = std::fs::remove_file(&path);
                None
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

pub fn link_name(program: &str, target: &str) -> String {
    format!("{program}@{}", target.trim_matches('/').replace('/', "_"))
}

/// Removes every pin under `root`: links first (which detaches the programs), then maps.
/// Returns what was removed.
pub fn remove_all(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for sub in ["links", "maps"] {
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
