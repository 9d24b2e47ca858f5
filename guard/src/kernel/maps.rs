//! Map plumbing shared by the program families: typed access by name, per-CPU counters summed
//! over CPUs, and the steps of a config change. A family describes what each of its maps should
//! hold as a [`Step`]; [`apply`] writes a whole [`Plan`] or, when the kernel refuses a write,
//! puts every map it touched back as it was.
//!
//! A step writes only what differs, additions before removals, so no window refuses what stays
//! allowed, and a map whose content is already right is not written at all.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    hash::Hash,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    Ebpf, Pod,
};

use super::KernelError;

/// The map `name`, converted to the typed map `T`.
pub fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// One map brought to the content a config wants: one step of [`apply`].
pub trait Step {
    fn map(&self) -> &'static str;
    /// The config field the entries come from, for errors.
    fn field(&self) -> &'static str;
    fn entries(&self) -> usize;
    /// Entries the kernel map holds at most (its `max_entries`, from guard-common).
    fn capacity(&self) -> usize;
    /// What the map holds now, as a step that would put it back.
    fn snapshot(&self, ebpf: &mut Ebpf) -> Result<Box<dyn Step>, KernelError>;
    /// Makes the map hold exactly what this step wants, writing only what differs.
    fn write(&self, ebpf: &mut Ebpf) -> Result<(), KernelError>;
}

/// Steps in the order they are written.
pub type Plan = Vec<Box<dyn Step>>;

/// The first step of `plan` that does not fit its map.
pub fn overflow(plan: &[Box<dyn Step>]) -> Option<KernelError> {
    plan.iter()
        .find(|s| s.entries() > s.capacity())
        .map(|step| KernelError::Capacity {
            map: step.map(),
            field: step.field(),
            entries: step.entries(),
            capacity: step.capacity(),
        })
}

/// Applies `plan` as a whole or not at all. Every step is checked against its map's capacity
/// before any map is touched; each map's content is read just before it is written, and when a
/// write fails, the maps written so far (the failing one too) get their old content back in
/// reverse order. The error is returned either way.
pub fn apply(ebpf: &mut Ebpf, plan: &[Box<dyn Step>]) -> Result<(), KernelError> {
    if let Some(err) = overflow(plan) {
        return Err(err);
    }
    let mut undo: Vec<Box<dyn Step>> = Vec::with_capacity(plan.len());
    for step in plan {
        let written = step.snapshot(ebpf).and_then(|old| {
            undo.push(old);
            step.write(ebpf)
        });
        let Err(cause) = written else { continue };
        let mut failed = Vec::new();
        for old in undo.iter().rev() {
            if let Err(err) = old.write(ebpf) {
                tracing::error!(
                    map = old.map(),
                    "cannot restore the map's old content: {err}"
                );
                failed.push(old.map());
            }
        }
        return Err(if failed.is_empty() {
            cause
        } else {
            KernelError::RollbackFailed {
                cause: Box::new(cause),
                maps: failed,
            }
        });
    }
    Ok(())
}

/// An LPM trie holding exactly `wanted`: (prefix length, key data) to value.
pub struct TrieStep<K> {
    pub map: &'static str,
    pub field: &'static str,
    pub capacity: u32,
    pub wanted: StdHashMap<(u32, K), u32>,
}

impl<K: Pod + Eq + Hash + 'static> TrieStep<K> {
    /// Each of `keys` mapped to 1 (the programs only ask whether a prefix matches).
    pub fn ones(
        map: &'static str,
        field: &'static str,
        capacity: u32,
        keys: HashSet<(u32, K)>,
    ) -> Box<dyn Step> {
        Box::new(TrieStep {
            map,
            field,
            capacity,
            wanted: keys.into_iter().map(|k| (k, 1)).collect(),
        })
    }
}

impl<K: Pod + Eq + Hash + 'static> Step for TrieStep<K> {
    fn map(&self) -> &'static str {
        self.map
    }
    fn field(&self) -> &'static str {
        self.field
    }
    fn entries(&self) -> usize {
        self.wanted.len()
    }
    fn capacity(&self) -> usize {
        self.capacity as usize
    }
    fn snapshot(&self, ebpf: &mut Ebpf) -> Result<Box<dyn Step>, KernelError> {
        let name = self.map;
        let trie: LpmTrie<_, K, u32> = typed(ebpf, name)?;
        let held = trie
            .iter()
            .map(|entry| entry.map(|(key, value)| ((key.prefix_len(), key.data()), value)))
            .collect::<Result<_, _>>()
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(Box::new(TrieStep {
            wanted: held,
            ..*self
        }))
    }
    fn write(&self, ebpf: &mut Ebpf) -> Result<(), KernelError> {
        let name = self.map;
        let err = |source| KernelError::Map { name, source };
        let mut trie: LpmTrie<_, K, u32> = typed(ebpf, name)?;
        let held: StdHashMap<(u32, K), u32> = trie
            .iter()
            .map(|entry| entry.map(|(key, value)| ((key.prefix_len(), key.data()), value)))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let key = |(len, data): &(u32, K)| Key::new(*len, *data);
        // Additions before removals, so no window refuses what stays allowed. An addition the
        // full map refuses is retried once the stale entries are out.
        let mut refused = Vec::new();
        for (k, value) in &self.wanted {
            if held.get(k) != Some(value) && trie.insert(&key(k), value, 0).is_err() {
                refused.push((k, value));
            }
        }
        for k in held.keys().filter(|k| !self.wanted.contains_key(*k)) {
            trie.remove(&key(k)).map_err(err)?;
        }
        for (k, value) in refused {
            trie.insert(&key(k), value, 0).map_err(err)?;
        }
        Ok(())
    }
}

/// A hash map holding exactly `wanted`.
pub struct HashStep<K, V> {
    pub map: &'static str,
    pub field: &'static str,
    pub capacity: u32,
    pub wanted: Vec<(K, V)>,
}

impl<K, V> HashStep<K, V>
where
    K: Pod + Eq + Hash + 'static,
    V: Pod + PartialEq + 'static,
{
    pub fn boxed(
        map: &'static str,
        field: &'static str,
        capacity: u32,
        wanted: Vec<(K, V)>,
    ) -> Box<dyn Step> {
        Box::new(HashStep {
            map,
            field,
            capacity,
            wanted,
        })
    }
}

impl<K, V> Step for HashStep<K, V>
where
    K: Pod + Eq + Hash + 'static,
    V: Pod + PartialEq + 'static,
{
    fn map(&self) -> &'static str {
        self.map
    }
    fn field(&self) -> &'static str {
        self.field
    }
    fn entries(&self) -> usize {
        self.wanted.len()
    }
    fn capacity(&self) -> usize {
        self.capacity as usize
    }
    fn snapshot(&self, ebpf: &mut Ebpf) -> Result<Box<dyn Step>, KernelError> {
        let name = self.map;
        let map: HashMap<_, K, V> = typed(ebpf, name)?;
        let held = map
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(Box::new(HashStep {
            map: self.map,
            field: self.field,
            capacity: self.capacity,
            wanted: held,
        }))
    }
    fn write(&self, ebpf: &mut Ebpf) -> Result<(), KernelError> {
        let name = self.map;
        let err = |source| KernelError::Map { name, source };
        let mut map: HashMap<_, K, V> = typed(ebpf, name)?;
        let held: StdHashMap<K, V> = map.iter().collect::<Result<_, _>>().map_err(err)?;
        let mut refused = Vec::new();
        for (key, value) in &self.wanted {
            if held.get(key) != Some(value) && map.insert(key, value, 0).is_err() {
                refused.push((key, value));
            }
        }
        let keep: HashSet<&K> = self.wanted.iter().map(|(k, _)| k).collect();
        for key in held.keys().filter(|k| !keep.contains(k)) {
            map.remove(key).map_err(err)?;
        }
        for (key, value) in refused {
            map.insert(key, value, 0).map_err(err)?;
        }
        Ok(())
    }
}

/// Slot 0 of a one-entry array map (the programs' tunables) holding `value`.
pub struct SlotStep<V> {
    pub map: &'static str,
    pub field: &'static str,
    pub value: V,
}

impl<V: Pod + PartialEq + 'static> SlotStep<V> {
    pub fn boxed(map: &'static str, field: &'static str, value: V) -> Box<dyn Step> {
        Box::new(SlotStep { map, field, value })
    }
}

impl<V: Pod + PartialEq + 'static> Step for SlotStep<V> {
    fn map(&self) -> &'static str {
        self.map
    }
    fn field(&self) -> &'static str {
        self.field
    }
    fn entries(&self) -> usize {
        1
    }
    fn capacity(&self) -> usize {
        1
    }
    fn snapshot(&self, ebpf: &mut Ebpf) -> Result<Box<dyn Step>, KernelError> {
        let name = self.map;
        let array: Array<_, V> = typed(ebpf, name)?;
        let value = array
            .get(&0, 0)
            .map_err(|source| KernelError::Map { name, source })?;
        Ok(SlotStep::boxed(name, self.field, value))
    }
    fn write(&self, ebpf: &mut Ebpf) -> Result<(), KernelError> {
        let name = self.map;
        let err = |source| KernelError::Map { name, source };
        let mut array: Array<_, V> = typed(ebpf, name)?;
        if array.get(&0, 0).map_err(err)? != self.value {
            array.set(0, self.value, 0).map_err(err)?;
        }
        Ok(())
    }
}

/// Each counter in `indices`, summed over CPUs.
pub fn percpu_sums<const N: usize>(
    ebpf: &Ebpf,
    name: &'static str,
    indices: [u32; N],
) -> Result<[u64; N], KernelError> {
    let err = |source| KernelError::Map { name, source };
    let map = ebpf
        .map(name)
        .ok_or(KernelError::Missing { kind: "map", name })?;
    let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(err)?;
    let mut sums = [0u64; N];
    for (sum, index) in sums.iter_mut().zip(indices) {
        *sum = counters.get(&index, 0).map_err(err)?.iter().sum();
    }
    Ok(sums)
}
