//! Config errors that name the file, the field path, the line, and what to do.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source} (create one with `proxyguard config init --path {}`)", path.display(), path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(path, errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<FieldError>,
    },
    /// `cause` is in the message itself, not a `source()`, so `{:#}` does not print it twice.
    #[error("cannot write config {}: {cause}; {}", path.display(), write_advice(path, cause))]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    /// A parser crashed on the file; the checks before it did not foresee the input.
    #[error("cannot read config {}: {panicked}", path.display())]
    Panicked {
        path: PathBuf,
        panicked: crate::contain::Panicked,
    },
}

/// What a failed write leaves and what to do about it. Writes are atomic (temp file, fsync,
/// rename), so a failure leaves the old file in place; the temp file is removed.
fn write_advice(path: &Path, source: &io::Error) -> String {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let fix = match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => format!(
            ": free space on the filesystem that holds {} (see `df -h {}`), then run the command again",
            dir.display(),
            dir.display()
        ),
        io::ErrorKind::ReadOnlyFilesystem => format!(
            ": {} is on a read-only filesystem; remount it read-write or pick another path",
            dir.display()
        ),
        io::ErrorKind::PermissionDenied => {
            ": run as root (the config is root's, mode 0600)".to_owned()
        }
        _ => String::new(),
    };
    format!("the old file is left as it was{fix}")
}

/// One problem in the file. `field` is a dotted path (`bind.rules[0].port`), empty when the file
/// does not parse at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

fn render(path: &std::path::Path, errors: &[FieldError]) -> String {
    let mut out = format!("invalid config {}:", path.display());
    for error in errors {
        out.push_str(&format!("\n  {}: {error}", path.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_error(errno: i32) -> String {
        ConfigError::Write {
            path: "/etc/proxyguard/proxyguard.toml".into(),
            cause: io::Error::from_raw_os_error(errno),
        }
        .to_string()
    }

    #[test]
    fn a_full_disk_names_the_file_the_cause_and_the_fix() {
        let text = write_error(libc::ENOSPC);
        assert!(text.contains("/etc/proxyguard/proxyguard.toml"), "{text}");
        assert!(text.contains("No space left on device"), "{text}");
        assert!(text.contains("left as it was"), "{text}");
        assert!(
            text.contains("free space on the filesystem that holds /etc/proxyguard"),
            "{text}"
        );
        assert!(write_error(libc::EDQUOT).contains("free space"));
    }

    #[test]
    fn other_write_errors_say_the_file_is_kept() {
        assert!(write_error(libc::EROFS).contains("read-only filesystem"));
        let text = write_error(libc::EIO);
        assert!(text.ends_with("the old file is left as it was"), "{text}");
    }
}
