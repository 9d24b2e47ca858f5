//! Pinned BPF maps read (and frozen) from outside the daemon, with the raw `bpf(2)` syscall: what
//! the tests compare a map's content against, and how a test makes the kernel refuse a write.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_FREEZE: libc::c_long = 22;

/// Map types whose content is plain rules (not per-CPU counters, LRU state or rings).
const RULE_MAP_TYPES: [u32; 3] = [
    1,  /* hash */
    2,  /* array */
    11, /* lpm trie */
];

#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct Elem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`, with room for the rest.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    rest: [u64; 16],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out bpf_attr prefix of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn open(path: &Path) -> std::io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let mut attr = ObjGet {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn info(fd: &OwnedFd) -> std::io::Result<MapInfo> {
    let mut info = MapInfo::default();
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Every entry of the pinned map at `path`, as raw key and value bytes.
pub fn dump(path: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let fd = open(path)?;
    let info = info(&fd)?;
    let mut out = BTreeMap::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; info.key_size as usize];
        let mut attr = Elem {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ref().map_or(0, |k| k.as_ptr() as u64),
            value_or_next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => return Err(err),
        }
        let mut value = vec![0u8; info.value_size as usize];
        let mut attr = Elem {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: next.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            flags: 0,
        };
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        out.insert(next.clone(), value);
        key = Some(next);
    }
    Ok(out)
}

/// The content of every rule map pinned under `pin_dir/maps`, by name.
pub fn dump_rule_maps(pin_dir: &Path) -> BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(pin_dir.join("maps")).expect("pinned maps") {
        let path = entry.expect("pin entry").path();
        let fd = open(&path).expect("open a pinned map");
        if !RULE_MAP_TYPES.contains(&info(&fd).expect("map info").map_type) {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, dump(&path).expect("dump a pinned map"));
    }
    out
}

/// Freezes the pinned map at `path`: from now on the kernel refuses every write to it from user
/// space (EPERM), for as long as the map lives.
pub fn freeze(path: &Path) -> std::io::Result<()> {
    let fd = open(path)?;
    let mut attr = fd.as_raw_fd() as u32;
    bpf(BPF_MAP_FREEZE, &mut attr).map(drop)
}
