//! Kernel struct field offsets for the environ programs, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) with `btf-rs`. aya 0.14 cannot express CO-RE field accesses from
//! Rust, and its own `Btf` keeps member look-ups private, so the offsets travel to the program in
//! its config map instead. This works on any kernel built with BTF.

use std::path::Path;

use btf_rs::{Btf, Type};
use guard_common::environ::KernelOffsets;

/// The offsets the LSM program needs, or why they cannot be had.
pub fn environ_offsets(vmlinux: &Path) -> Result<KernelOffsets, String> {
    let btf = Btf::from_file(vmlinux)
        .map_err(|err| format!("cannot read kernel BTF {}: {err}", vmlinux.display()))?;
    Ok(KernelOffsets {
        file_dentry: offset_of(&btf, "file", &["f_path", "dentry"])?,
        dentry_parent: offset_of(&btf, "dentry", &["d_parent"])?,
        dentry_name: offset_of(&btf, "dentry", &["d_name", "name"])?,
        dentry_sb: offset_of(&btf, "dentry", &["d_sb"])?,
        sb_magic: offset_of(&btf, "super_block", &["s_magic"])?,
        task_files: offset_of(&btf, "task_struct", &["files"])?,
        files_fdt: offset_of(&btf, "files_struct", &["fdt"])?,
        fdt_fd: offset_of(&btf, "fdtable", &["fd"])?,
        fdt_max_fds: offset_of(&btf, "fdtable", &["max_fds"])?,
        task_mm: offset_of(&btf, "task_struct", &["mm"])?,
        mm_exe_file: offset_of(&btf, "mm_struct", &["exe_file"])?,
        file_inode: offset_of(&btf, "file", &["f_inode"])?,
        inode_ino: offset_of(&btf, "inode", &["i_ino"])?,
        inode_sb: offset_of(&btf, "inode", &["i_sb"])?,
        sb_dev: offset_of(&btf, "super_block", &["s_dev"])?,
        // The open probe's: zero where BTF lacks them (the other programs work without).
        ..open_probe_fields(&btf).unwrap_or_default()
    })
}

/// The open probe's fields (`proc_pid(inode)`: the `struct pid` of the procfs inode's
/// `struct proc_inode`, and its number in the initial pid namespace), or why BTF cannot give
/// them. Only these are set.
fn open_probe_fields(btf: &Btf) -> Result<KernelOffsets, String> {
    let proc_vfs_inode = offset_of(btf, "proc_inode", &["vfs_inode"])?;
    if proc_vfs_inode == 0 {
        return Err("struct proc_inode.vfs_inode is its first member".into());
    }
    Ok(KernelOffsets {
        proc_vfs_inode,
        proc_pid: offset_of(btf, "proc_inode", &["pid"])?,
        pid_nr: offset_of(btf, "pid", &["numbers"])? + offset_of(btf, "upid", &["nr"])?,
        ..KernelOffsets::default()
    })
}

/// `file.f_mode`, where the created-files programs find `FMODE_CREATED`.
pub fn file_mode_offset(vmlinux: &Path) -> Result<u32, String> {
    let btf = Btf::from_file(vmlinux)
        .map_err(|err| format!("cannot read kernel BTF {}: {err}", vmlinux.display()))?;
    offset_of(&btf, "file", &["f_mode"])
}

/// The byte offset of `path` (a chain of member names) inside `struct name`. Anonymous unions
/// and structs on the way are searched through, as C lets a member be named across them.
fn offset_of(btf: &Btf, name: &str, path: &[&str]) -> Result<u32, String> {
    let what = || format!("struct {name}.{}", path.join("."));
    let mut current = btf
        .resolve_types_by_name(name)
        .map_err(|err| format!("{}: {err}", what()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(s) if !s.members.is_empty()))
        .ok_or_else(|| format!("{}: no such struct in kernel BTF", what()))?;
    let mut bits = 0u32;
    for member in path {
        let (Type::Struct(ty) | Type::Union(ty)) = &current else {
            return Err(format!("{}: `{member}` is not inside a struct", what()));
        };
        let (offset, ty) = find_member(btf, ty, member)
            .ok_or_else(|| format!("{}: no member `{member}` in kernel BTF", what()))?;
        bits += offset;
        current = ty;
    }
    if !bits.is_multiple_of(8) {
        return Err(format!("{}: is a bitfield", what()));
    }
    Ok(bits / 8)
}

/// The bit offset and (typedef-resolved) type of member `name`, looking into anonymous members.
fn find_member(btf: &Btf, ty: &btf_rs::Struct, name: &str) -> Option<(u32, Type)> {
    for member in &ty.members {
        let member_name = btf.resolve_name(member).unwrap_or_default();
        let member_type = strip(btf, btf.resolve_chained_type(member).ok()?)?;
        if member_name == name {
            return Some((member.bit_offset(), member_type));
        }
        if member_name.is_empty() {
            if let Type::Struct(inner) | Type::Union(inner) = &member_type {
                if let Some((offset, found)) = find_member(btf, inner, name) {
                    return Some((member.bit_offset() + offset, found));
                }
            }
        }
    }
    None
}

/// Follows typedefs and qualifiers to the type underneath.
fn strip(btf: &Btf, mut ty: Type) -> Option<Type> {
    for _ in 0..16 {
        match &ty {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                ty = btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
            }
            _ => return Some(ty),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the running kernel, where it has BTF: the offsets exist and are plausible.
    #[test]
    fn reads_offsets_from_the_running_kernel() {
        let vmlinux = Path::new("/sys/kernel/btf/vmlinux");
        if !vmlinux.exists() {
            return;
        }
        let offsets = environ_offsets(vmlinux).expect("offsets");
        assert!(
            offsets.file_dentry > 0 && offsets.file_dentry < 512,
            "{offsets:?}"
        );
        assert!(offsets.dentry_name > offsets.dentry_parent, "{offsets:?}");
        assert!(offsets.sb_magic > 0, "{offsets:?}");
        let mode = file_mode_offset(vmlinux).expect("file.f_mode");
        assert!(mode < 512 && mode != offsets.file_inode, "{mode}");
        assert!(
            offsets.proc_vfs_inode > offsets.proc_pid && offsets.pid_nr > 0,
            "{offsets:?}"
        );
    }
}
