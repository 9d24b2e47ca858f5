//! `[kernel]`: where the kernel half keeps its pinned state.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelSection {
    /// A directory on bpffs for pinned maps and links.
    pub pin_dir: PathBuf,
}

impl Default for KernelSection {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from("/sys/fs/bpf/proxyguard"),
        }
    }
}

pub fn validate(kernel: &KernelSection, errors: &mut Vec<FieldError>) {
    if !kernel.pin_dir.is_absolute() || !kernel.pin_dir.starts_with("/sys/fs/bpf") {
        errors.push(FieldError {
            field: "kernel.pin_dir".into(),
            line: None,
            message: format!(
                "`{}` must be a directory under /sys/fs/bpf (bpffs)",
                kernel.pin_dir.display()
            ),
        });
    }
}
