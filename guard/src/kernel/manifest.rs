//! The pin directory's manifest: which object its programs came from (the SHA-256 of the embedded
//! object) and the layout of every pinned map, so a new daemon checks pinned state before it
//! adopts it (as bpfman checks a pinned dispatcher's version).
//!
//! bpffs holds no regular files, so the manifest is the target text of a symlink,
//! `<pin_dir>/manifest`, written under another name and renamed over the old one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this build writes and reads. Another format counts as "object differs".
pub const FORMAT: u32 = 1;

/// The longest symlink target the kernel takes (PATH_MAX, less its NUL).
pub const MAX_TEXT: usize = 4095;

/// What the kernel fixes when a map is created; a pinned map with another layout cannot serve the
/// new programs (nor be read with the new types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapLayout {
    #[serde(rename = "type")]
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Hex SHA-256 of the embedded object.
    pub object: String,
    pub maps: BTreeMap<String, MapLayout>,
    /// The state version of maps whose bytes a build may read differently at the same sizes
    /// (for example `XDP_STATE_VERSION`). Absent in manifests of older builds, whose versioned
    /// maps therefore count as another version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot parse the embedded eBPF object: {source}")]
    Object {
        #[source]
        source: aya_obj::ParseError,
    },
    #[error("the embedded eBPF object has no map named `{name}`; the binary was built from mismatched sources")]
    MissingMap { name: String },
    #[error("the manifest is not valid JSON: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("the manifest has format {found}, this build reads format {FORMAT}")]
    Format { found: u32 },
}

impl Manifest {
    /// The manifest of `object`, with the layouts of the maps named in `pinned` as the kernel
    /// will create them (a ring buffer's size rounded up as aya rounds it).
    pub fn of_object(object: &[u8], pinned: &[&str]) -> Result<Manifest, ManifestError> {
        let parsed =
            aya_obj::Object::parse(object).map_err(|source| ManifestError::Object { source })?;
        let page = page_size();
        let mut maps = BTreeMap::new();
        for name in pinned {
            let map = parsed
                .maps
                .get(*name)
                .ok_or_else(|| ManifestError::MissingMap {
                    name: (*name).to_owned(),
                })?;
            let mut layout = MapLayout {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            };
            if layout.map_type == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32 {
                layout.value_size = 0;
                layout.max_entries = ring_size(layout.max_entries, page);
            }
            maps.insert((*name).to_owned(), layout);
        }
        Ok(Manifest {
            format: FORMAT,
            object: hex::encode(Sha256::digest(object)),
            maps,
            versions: BTreeMap::new(),
        })
    }

    /// Records the state version of each of `versioned` (map name, version).
    pub fn with_versions(mut self, versioned: &[(&str, u32)]) -> Manifest {
        self.versions = versioned
            .iter()
            .map(|(name, version)| ((*name).to_owned(), *version))
            .collect();
        self
    }

    /// Whether the map `name` pinned under `self` holds state of the version `ours` reads.
    pub fn same_version(&self, ours: &Manifest, name: &str) -> bool {
        self.versions.get(name) == ours.versions.get(name)
    }

    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        // The format is read first, so a future format with other fields is named as such.
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let format: Format =
            serde_json::from_str(text).map_err(|source| ManifestError::Json { source })?;
        if format.format != FORMAT {
            return Err(ManifestError::Format {
                found: format.format,
            });
        }
        serde_json::from_str(text).map_err(|source| ManifestError::Json { source })
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a manifest always serializes")
    }

    /// Whether the programs pinned under `self` came from the same object as `other`'s.
    pub fn same_object(&self, other: &Manifest) -> bool {
        self.format == other.format && self.object == other.object
    }

    /// The maps whose recorded layout differs from `other`'s (or that only one of them has).
    pub fn changed_maps<'a>(&'a self, other: &'a Manifest) -> Vec<&'a str> {
        let mut changed: Vec<&str> = self
            .maps
            .iter()
            .filter(|(name, layout)| other.maps.get(*name) != Some(layout))
            .map(|(name, _)| name.as_str())
            .collect();
        changed.extend(
            other
                .maps
                .keys()
                .filter(|name| !self.maps.contains_key(*name))
                .map(String::as_str),
        );
        changed
    }
}

/// A ring buffer's byte size as the kernel gets it: a power-of-two number of pages (libbpf's and
/// aya's rule).
fn ring_size(bytes: u32, page: u32) -> u32 {
    if bytes == 0 || page == 0 {
        return bytes;
    }
    bytes.div_ceil(page).next_power_of_two() * page
}

fn page_size() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(value_size: u32) -> MapLayout {
        MapLayout {
            map_type: 6,
            key_size: 4,
            value_size,
            max_entries: 8,
            flags: 0,
        }
    }

    fn manifest(object: &str, maps: &[(&str, MapLayout)]) -> Manifest {
        Manifest {
            format: FORMAT,
            object: object.into(),
            maps: maps.iter().map(|(n, l)| ((*n).to_owned(), *l)).collect(),
            versions: BTreeMap::new(),
        }
    }

    #[test]
    fn state_versions_read_back_and_compare() {
        let old = manifest("aa", &[("XDP_CONFIG", layout(8))]);
        let new = manifest("bb", &[("XDP_CONFIG", layout(8))]).with_versions(&[("XDP_CONFIG", 2)]);
        // An older build recorded no version: its state counts as another version.
        assert!(!old.same_version(&new, "XDP_CONFIG"));
        assert!(old.same_version(&new, "BIND_STATS"));
        let text = new.to_text();
        assert!(text.contains("\"versions\":{\"XDP_CONFIG\":2}"), "{text}");
        let back = Manifest::parse(&text).unwrap();
        assert!(back.same_version(&new, "XDP_CONFIG"));
        // A manifest without versions (format 1 as older builds wrote it) still parses.
        assert!(!old.to_text().contains("versions"));
        assert!(Manifest::parse(&old.to_text()).is_ok());
    }

    #[test]
    fn a_manifest_reads_back_what_it_wrote() {
        let m = manifest("ab12", &[("BIND_STATS", layout(8))]);
        let text = m.to_text();
        assert!(text.contains("\"type\":6"), "{text}");
        assert_eq!(Manifest::parse(&text).unwrap(), m);
    }

    #[test]
    fn another_format_or_garbage_is_refused() {
        let mut m = manifest("ab12", &[]);
        m.format = FORMAT + 1;
        assert!(matches!(
            Manifest::parse(&m.to_text()),
            Err(ManifestError::Format { found }) if found == FORMAT + 1
        ));
        assert!(matches!(
            Manifest::parse("not json"),
            Err(ManifestError::Json { .. })
        ));
        assert!(matches!(
            Manifest::parse(r#"{"format":1,"object":"x","maps":{},"extra":1}"#),
            Err(ManifestError::Json { .. })
        ));
    }

    #[test]
    fn objects_and_layouts_compare() {
        let old = manifest(
            "aa",
            &[("A", layout(8)), ("B", layout(8)), ("C", layout(8))],
        );
        let new = manifest(
            "bb",
            &[("A", layout(8)), ("B", layout(16)), ("D", layout(8))],
        );
        assert!(!old.same_object(&new));
        assert!(old.same_object(&old.clone()));
        let mut changed = old.changed_maps(&new);
        changed.sort_unstable();
        assert_eq!(changed, ["B", "C", "D"]);
        assert!(old.changed_maps(&old).is_empty());
    }

    #[test]
    fn ring_sizes_round_up_to_a_power_of_two_pages() {
        assert_eq!(ring_size(4096, 4096), 4096);
        assert_eq!(ring_size(5000, 4096), 8192);
        assert_eq!(ring_size(3 * 4096, 4096), 4 * 4096);
        assert_eq!(ring_size(256 * 1024, 4096), 256 * 1024);
    }

    #[test]
    fn the_embedded_object_has_a_manifest_that_fits_a_symlink() {
        let m = Manifest::of_object(super::super::OBJECT, super::super::pins::PINNED_MAPS)
            .expect("the embedded object parses")
            .with_versions(super::super::pins::STATE_VERSIONS);
        assert_eq!(m.maps.len(), super::super::pins::PINNED_MAPS.len());
        assert_eq!(m.object.len(), 64);
        let text = m.to_text();
        assert!(text.len() <= MAX_TEXT, "{} bytes: {text}", text.len());
        let stats = &m.maps[guard_common::bind::MAP_BIND_STATS];
        assert_eq!((stats.key_size, stats.value_size), (4, 8));
    }
}
