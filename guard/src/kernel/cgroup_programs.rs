//! Loading and attaching cgroup `sock_addr` programs at the cgroup v2 root.

use std::{fs::File, path::Path};

use aya::{
    programs::{links::CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};

use super::{pins::PinDir, AttachedProgram, KernelError};

/// Attaches each `(program, hook)` to `root` through a pinned BPF link, or adopts the link an
/// earlier daemon pinned.
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
        let adopted_id = pins.adopt(name, &target);
        let adopted = adopted_id.is_some();
        if !adopted {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(KernelError::Missing {
                    kind: "program",
                    name,
                })?;
            program
                .load()
                .map_err(|source| KernelError::LoadProgram { name, source })?;
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
            adopted,
            adopted_id,
        });
    }
    Ok(attached)
}
