//! `[control]`: the daemon's control socket, used by `status`, `reload` and `events`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// A Unix socket that only root may open (directory 0700, socket 0600).
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            socket: PathBuf::from("/run/proxyguard/control.sock"),
        }
    }
}

pub fn validate(control: &ControlSection, errors: &mut Vec<FieldError>) {
    if !control.socket.is_absolute() || control.socket.parent().is_none() {
        errors.push(FieldError {
            field: "control.socket".into(),
            line: None,
            message: format!("`{}` must be an absolute path", control.socket.display()),
        });
    }
}
