//! Loading and attaching cgroup `sock_addr` programs at the cgroup v2 root.

use std::{fs::File, os::fd::AsFd, path::Path};

use aya::{
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};

use super::{
    link_update,
    pins::{PinDir, Pinned},
    AttachedProgram, KernelError,
};

/// Attaches each `(program, hook)` to `root` through a pinned BPF link, adopts the link an
/// earlier daemon of the same object pinned, or swaps this object's program into the link
/// another object's daemon pinned (`BPF_LINK_UPDATE`: the hook is never empty).
///
/// A link attachment always coexists with other programs on the same hook (systemd's socket-bind
/// and IP filters among them), and the kernel insists on flags 0 for it: that is aya's `Single`.
pub fn attach(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    root: &Path,
    mode: &'static str,
    programs: &[(&'static str, &'static str)],
) -> Result<Vec<AttachedProgram>, KernelError> {
    let cgroup = File::open(root).map_err(|source| KernelError::OpenCgroup {
        path: root.to_owned(),
        source,
    })?;
    let target = root.display().to_string();
    let mut attached = Vec::new();
    for (name, hook) in programs {
        let name = *name;
        let pinned = pins.pinned(name, &target);
        if let Pinned::Adopt { program_id } = pinned {
            attached.push(AttachedProgram::adopted(
                name,
                hook,
                target.clone(),
                mode,
                program_id,
            ));
            continue;
        }
        let program: &mut CgroupSockAddr = super::program(ebpf, name)?;
        program
            .load()
            .map_err(|source| KernelError::LoadProgram { name, source })?;
        let replaced = matches!(pinned, Pinned::Replace { .. });
        if replaced {
            // The link stays where it is, with its place among other programs on the hook; only
            // its program changes, in one step.
            let fd = program
                .fd()
                .map_err(|source| KernelError::LoadProgram { name, source })?;
            let path = pins.link_path(name, &target);
            link_update::replace_program(&path, fd.as_fd())
                .map_err(|source| KernelError::Replace { path, source })?;
        } else {
            let link_id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Attach {
                    name,
                    target: target.clone(),
                    source,
                })?;
            let link = program
                .take_link(link_id)
                .map_err(|source| KernelError::TakeLink { name, source })?;
            pins.pin_link(link, name, &target)?;
        }
        attached.push(AttachedProgram {
            name,
            hook,
            target: target.clone(),
            mode,
            adopted: false,
            replaced,
            program_id: program.info().ok().map(|i| i.id()),
        });
    }
    Ok(attached)
}
