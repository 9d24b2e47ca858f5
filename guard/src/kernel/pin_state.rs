//! Whether the pinned state can be adopted as it is: the manifest names the object the pinned
//! programs came from, and each pinned map's layout is read back from the kernel (the pin itself,
//! not the manifest, is the truth: aya would otherwise reuse a map of another layout and the new
//! daemon would read and write its structs in it).
//!
//! A map whose layout is unchanged keeps its pin and its state, unless the manifest records
//! another state version for it (the bytes mean something else at the same sizes: see
//! `STATE_VERSIONS` in `pins.rs`). A map whose layout changed is
//! created anew under `staging/`, used by the new programs, and renamed over the old pin only
//! once every program is in place; the manifest is written last. A start that fails half-way
//! leaves the old manifest, so the next start replaces again.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;

use super::{
    manifest::{Manifest, MapLayout, MAX_TEXT},
    pins::{PinDir, PINNED_MAPS, STAGING},
    KernelError,
};

/// `<pin_dir>/manifest`: a symlink whose target is the manifest's JSON.
pub const MANIFEST: &str = "manifest";

/// What becomes of one pinned map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapPin {
    /// Pinned with this build's layout: kept, with its entries.
    Reuse,
    /// Not pinned yet.
    Create,
    /// Pinned with another layout: a new map waits under `staging/`.
    Recreate,
}

impl PinDir {
    /// Creates the pin directory and decides, from its manifest and its maps, whether the pinned
    /// programs are adopted or replaced and which maps are kept.
    pub fn prepare(root: &Path, ours: &Manifest) -> Result<PinDir, KernelError> {
        PinDir::create_dirs(root)?;
        let previous = read_manifest(root);
        let mut maps = BTreeMap::new();
        for name in PINNED_MAPS {
            let want = ours.maps.get(*name).copied();
            let mut plan = plan_map(&root.join("maps").join(name), name, want);
            // Same sizes, other meaning: the bytes of a map of another state version (or of a
            // build that recorded none) are never read with this build's types.
            let same_version = previous
                .as_ref()
                .map_or(!ours.versions.contains_key(*name), |p| {
                    p.same_version(ours, name)
                });
            if plan == MapPin::Reuse && !same_version {
                tracing::info!(
                    map = name,
                    "the pinned map holds state of another version; a new map replaces it (its entries start empty)"
                );
                plan = MapPin::Recreate;
            }
            maps.insert(*name, plan);
        }
        let same_object = previous.as_ref().is_some_and(|p| p.same_object(ours));
        let maps_kept = maps.values().all(|m| *m == MapPin::Reuse);
        let pins = PinDir {
            root: root.to_owned(),
            replacing: !(same_object && maps_kept),
            maps,
        };
        if pins.replacing && pins.has_links() {
            let why = match &previous {
                None => "the pin directory has no manifest (an older build)".to_owned(),
                Some(p) if !p.same_object(ours) => {
                    let changed = p.changed_maps(ours);
                    format!(
                        "they came from object {} (maps of another layout: {})",
                        short(&p.object),
                        if changed.is_empty() {
                            "none".to_owned()
                        } else {
                            changed.join(", ")
                        }
                    )
                }
                Some(_) => "some of their maps are recreated".to_owned(),
            };
            tracing::info!(
                object = short(&ours.object),
                "replacing the pinned programs without a gap: {why}"
            );
        }
        Ok(pins)
    }

    /// Where aya finds (or pins) the map `name`: its pin, or a staging pin for a new layout.
    pub fn map_pin(&self, name: &str) -> PathBuf {
        match self.maps.get(name) {
            Some(MapPin::Recreate) => self.staged_map(name),
            _ => self.map_path(name),
        }
    }

    fn staged_map(&self, name: &str) -> PathBuf {
        self.root.join(STAGING).join(format!("map@{name}"))
    }

    fn has_links(&self) -> bool {
        std::fs::read_dir(self.root.join("links")).is_ok_and(|mut d| d.next().is_some())
    }

    /// Once every program is in place: moves the recreated maps over their old pins, then records
    /// `ours` as the object the pins now come from.
    pub fn commit(&self, ours: &Manifest) -> Result<(), KernelError> {
        for (name, _) in self.maps.iter().filter(|(_, m)| **m == MapPin::Recreate) {
            let staged = self.staged_map(name);
            std::fs::rename(&staged, self.map_path(name)).map_err(|source| {
                KernelError::PinState {
                    path: staged.clone(),
                    source,
                }
            })?;
        }
        // Maps an older build pinned and this one no longer has (XDP_BUCKETS, split by family):
        // nothing reads them.
        if let Ok(entries) = std::fs::read_dir(self.root.join("maps")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !PINNED_MAPS.contains(&name.as_str()) {
                    tracing::info!(
                        map = name,
                        "removing a pinned map this build no longer uses"
                    );
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let text = ours.to_text();
        if text.len() > MAX_TEXT {
            return Err(KernelError::PinState {
                path: self.root.join(MANIFEST),
                source: std::io::Error::other(format!(
                    "the manifest is {} bytes, more than a symlink holds",
                    text.len()
                )),
            });
        }
        let staged = self.root.join(STAGING).join(MANIFEST);
        let _ = std::fs::remove_file(&staged);
        let path = self.root.join(MANIFEST);
        std::os::unix::fs::symlink(&text, &staged)
            .and_then(|()| std::fs::rename(&staged, &path))
            .map_err(|source| KernelError::PinState { path, source })
    }
}

/// The manifest under `root`, or `None` (with the reason logged) when there is none or it is
/// unreadable: both count as "another object".
fn read_manifest(root: &Path) -> Option<Manifest> {
    let path = root.join(MANIFEST);
    let text = std::fs::read_link(&path).ok()?;
    match Manifest::parse(&text.to_string_lossy()) {
        Ok(manifest) => Some(manifest),
        Err(err) => {
            tracing::warn!(path = %path.display(), "unusable manifest, replacing the pinned programs: {err}");
            None
        }
    }
}

fn plan_map(pin: &Path, name: &str, want: Option<MapLayout>) -> MapPin {
    if !pin.exists() {
        return MapPin::Create;
    }
    let found = MapInfo::from_pin(pin).and_then(|info| {
        Ok(MapLayout {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    });
    match (found, want) {
        (Ok(found), Some(want)) if found == want => MapPin::Reuse,
        (Ok(found), want) => {
            tracing::warn!(
                map = name,
                "the pinned map's layout {found:?} is not this build's {want:?}; a new map replaces it (its entries start empty)"
            );
            MapPin::Recreate
        }
        (Err(err), _) => {
            tracing::warn!(map = name, "unreadable pinned map, recreating it: {err}");
            MapPin::Recreate
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
