//! Raw bpf(2) calls the upgrade tests need and the daemon never makes: pinning a map of a chosen
//! layout (an older build's map, as far as the daemon can tell), and asking whether a program id
//! still exists.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// Creates a map of `map_type` with the given sizes and pins it at `pin`.
pub fn pin_map(
    pin: &Path,
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<()> {
    // The head of `union bpf_attr` for BPF_MAP_CREATE; the rest stays zero.
    let mut create = [0u32; 16];
    create[..4].copy_from_slice(&[map_type, key_size, value_size, max_entries]);
    let map = bpf_fd(BPF_MAP_CREATE, &mut create)?;
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut pin_attr = [0u32; 6];
    let ptr = path.as_ptr() as u64;
    pin_attr[0] = ptr as u32;
    pin_attr[1] = (ptr >> 32) as u32;
    pin_attr[2] = std::os::fd::AsRawFd::as_raw_fd(&map) as u32;
    bpf(BPF_OBJ_PIN, &mut pin_attr).map(drop)
}

/// Whether the kernel still has a program with this id.
pub fn program_exists(id: u32) -> bool {
    let mut attr = [0u32; 4];
    attr[0] = id;
    match bpf_fd(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(_) => true,
        Err(err) => err.raw_os_error() != Some(libc::ENOENT),
    }
}

fn bpf<const N: usize>(cmd: libc::c_long, attr: &mut [u32; N]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed, correctly sized prefix of `union bpf_attr` for `cmd`; the path
    // pointer in it (for BPF_OBJ_PIN) outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// [`bpf`] for the commands that return a new descriptor.
fn bpf_fd<const N: usize>(cmd: libc::c_long, attr: &mut [u32; N]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
