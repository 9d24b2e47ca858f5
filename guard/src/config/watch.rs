//! `[watch]`: the guarded process watch (threats 6, 7, 11, 12): who opens its environ file, the
//! secrets in its environment, its temp files and its listeners.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSection {
    pub enabled: bool,
    /// What the BPF LSM program does with another process's open of the guarded environ.
    pub mode: Mode,
    /// The strongest kernel tier the environ watch may use; the kernel decides within it.
    pub tier: Tier,
    /// Executables whose processes may read the guarded process's environ (besides itself).
    pub allow_exe: Vec<PathBuf>,
    /// Environment variable names that hold secrets: `*` matches any run of characters, case is
    /// ignored.
    pub secret_names: Vec<String>,
    /// Directories walked for the service's temp files, as the service sees them (through its
    /// root, so a systemd PrivateTmp is what is walked). `$TMPDIR` is its own TMPDIR.
    pub temp_dirs: Vec<String>,
    /// What to do with a temp file of the service that others may read: report it, or fix it
    /// (mode 0600). Fix changes only files proven the service's (`checks::ownership`).
    pub temp_files: TempFiles,
    /// Seconds between full audits (environment, temp files, open files, listeners). New temp
    /// files are checked as they appear, whatever this says.
    pub audit_interval_secs: u64,
}

/// Which program watches the environ opens. Each tier falls back to the next where the kernel
/// lacks it: `lsm` (deny, needs BPF LSM), `probe` (a kprobe at the open of the environ file
/// itself, every spelling of the path, report only), `tracepoints` (`openat` path matching, with
/// the gaps docs/threats.md lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The strongest the kernel allows: LSM, else the open probe, else the tracepoints.
    Auto,
    /// Never the LSM (so nothing is refused): the open probe, else the tracepoints.
    Probe,
    /// The path tracepoints only.
    Tracepoints,
}

impl Tier {
    pub fn allows_lsm(self) -> bool {
        self == Tier::Auto
    }

    pub fn allows_probe(self) -> bool {
        self != Tier::Tracepoints
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempFiles {
    Report,
    Fix,
}

/// Names that commonly carry credentials, LiteLLM's and the big clouds' included.
pub fn default_secret_names() -> Vec<String> {
    [
        "*_API_KEY",
        "*_SECRET*",
        "*_TOKEN",
        "*PASSWORD*",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_CLIENT_SECRET",
        "AZURE_API_KEY",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_API_KEY",
        "LITELLM_MASTER_KEY",
        "LITELLM_SALT_KEY",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

impl Default for WatchSection {
    fn default() -> Self {
        Self {
            enabled: true,
            // Nothing but the service itself needs its environ; deny where the kernel can.
            mode: Mode::Enforce,
            tier: Tier::Auto,
            allow_exe: Vec::new(),
            secret_names: default_secret_names(),
            temp_dirs: vec!["$TMPDIR".into(), "/tmp".into(), "/var/tmp".into()],
            // Report first: changing a service's files is for the operator to opt into.
            temp_files: TempFiles::Report,
            audit_interval_secs: 60,
        }
    }
}

pub fn validate(watch: &WatchSection, errors: &mut Vec<FieldError>) {
    let mut push = |field: String, message: String| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    };
    for (i, exe) in watch.allow_exe.iter().enumerate() {
        if !exe.is_absolute() {
            push(
                format!("watch.allow_exe[{i}]"),
                format!("`{}` must be an absolute path", exe.display()),
            );
        }
    }
    for (i, name) in watch.secret_names.iter().enumerate() {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
        if !valid {
            push(
                format!("watch.secret_names[{i}]"),
                format!("`{name}`: use letters, digits, `_` and `*` only, like \"*_API_KEY\""),
            );
        }
    }
    for (i, dir) in watch.temp_dirs.iter().enumerate() {
        if dir != "$TMPDIR" && (!dir.starts_with('/') || dir.split('/').any(|p| p == "..")) {
            push(
                format!("watch.temp_dirs[{i}]"),
                format!("`{dir}` must be an absolute path without `..`, or \"$TMPDIR\""),
            );
        }
    }
    if watch.audit_interval_secs == 0 {
        push(
            "watch.audit_interval_secs".into(),
            "must be at least 1".into(),
        );
    }
}
