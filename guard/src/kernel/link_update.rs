//! `BPF_LINK_UPDATE` on a pinned link: the kernel swaps the program behind the link in one step,
//! so the hook is never without a program. aya 0.14 offers it for XDP links only
//! (`Xdp::attach_to_link`); cgroup links need the raw bpf(2) call, and this module is the only
//! `unsafe` in the crate.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya_obj::generated::bpf_cmd::{self, BPF_LINK_UPDATE, BPF_OBJ_GET};

/// The `BPF_OBJ_GET` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `BPF_LINK_UPDATE` member of `union bpf_attr`. No `BPF_F_REPLACE`: whichever program the
/// link holds is replaced.
#[repr(C)]
#[derive(Default)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The attribute structs above, and nothing else, may be handed to the kernel.
trait Attr {}
impl Attr for ObjGet {}
impl Attr for LinkUpdate {}

/// Makes the link pinned at `pin` run `program` from now on.
pub fn replace_program(pin: &Path, program: BorrowedFd<'_>) -> io::Result<()> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let mut get = ObjGet {
        pathname: path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut update = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut update).map(drop)
}

fn bpf<A: Attr>(cmd: bpf_cmd, attr: &mut A) -> io::Result<i32> {
    // SAFETY: `attr` is a live, zero-padded `repr(C)` prefix of `union bpf_attr` for `cmd`, and
    // the size passed is its own; any pointer in it (a path) outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    i32::try_from(ret).map_err(|_| io::Error::other("bpf(2) returned an out-of-range value"))
}
