//! Load probes: whether this kernel really accepts a program type, found by loading one.

use aya::{programs::Lsm, Btf, Ebpf};
use guard_common::PROG_LSM_PROBE;

/// Loads (and unloads) the `lsm/file_open` probe. `Err` says why BPF LSM is unusable here.
pub fn bpf_lsm(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|err| format!("kernel BTF is unreadable ({err})"))?;
    let program: &mut Lsm = ebpf
        .program_mut(PROG_LSM_PROBE)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| format!("the object has no `{PROG_LSM_PROBE}` program"))?;
    program.load("file_open", &btf).map_err(|err| {
        let reason = err.to_string();
        let reason = reason
            .trim_end()
            .trim_end_matches("Verifier output:")
            .trim_end_matches(['.', ' ']);
        format!("the kernel refused to load an LSM program ({reason})")
    })?;
    let _ = program.unload();
    Ok(())
}
