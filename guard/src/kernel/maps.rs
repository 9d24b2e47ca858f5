//! Map plumbing shared by the program families: typed access by name, LPM tries and hash maps
//! brought in line with a wanted set (adds before removals, so no window refuses what stays
//! allowed), and per-CPU counters summed over CPUs.

use std::{collections::HashSet, hash::Hash};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
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

/// Makes the LPM trie `name` hold exactly `wanted` (prefix length, key data), each mapped to 1.
pub fn sync_trie<K>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &HashSet<(u32, K)>,
) -> Result<(), KernelError>
where
    K: Pod + Eq + Hash,
{
    let err = |source| KernelError::Map { name, source };
    let mut trie: LpmTrie<_, K, u32> = typed(ebpf, name)?;
    for (prefix_len, data) in wanted {
        trie.insert(&Key::new(*prefix_len, *data), 1, 0)
            .map_err(err)?;
    }
    let stale: Vec<Key<K>> = trie
        .keys()
        .filter_map(Result::ok)
        .filter(|key| !wanted.contains(&(key.prefix_len(), key.data())))
        .collect();
    for key in stale {
        trie.remove(&key).map_err(err)?;
    }
    Ok(())
}

/// Makes the hash map `name` hold exactly `wanted`.
pub fn sync_hash<K, V>(
    ebpf: &mut Ebpf,
    name: &'static str,
    wanted: &[(K, V)],
) -> Result<(), KernelError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let err = |source| KernelError::Map { name, source };
    let mut map: HashMap<_, K, V> = typed(ebpf, name)?;
    for (key, value) in wanted {
        map.insert(key, value, 0).map_err(err)?;
    }
    let keep: HashSet<&K> = wanted.iter().map(|(k, _)| k).collect();
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keep.contains(k))
        .collect();
    for key in stale {
        map.remove(&key).map_err(err)?;
    }
    Ok(())
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
