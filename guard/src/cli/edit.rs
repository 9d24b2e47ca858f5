//! Editing the config for `keys` and `egress`: parse with toml_edit (comments and layout kept),
//! validate the result exactly as the daemon would, replace the file atomically (0600), then
//! ask a running daemon to reload. An edit that does not validate leaves the file untouched.
//!
//! Each edit holds [`lock`] from its read to its write, so two edits at once (two `keys add`)
//! run one after the other and neither loses the other's change.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use toml_edit::DocumentMut;

use crate::{
    config::{self, Config, ConfigError},
    control::{client, Command},
};

/// The edit lock of `path`, held until the returned guard drops.
///
/// It is a sibling file (`.NAME.lock`, mode 0600), not the config itself: the config is replaced
/// by a rename, and a lock on the replaced file would not exclude an editor that opens the new one.
pub fn lock(path: &Path) -> anyhow::Result<nix::fcntl::Flock<File>> {
    let lock_path = lock_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "cannot open the edit lock {} (run as the config's owner)",
                lock_path.display()
            )
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| anyhow::anyhow!("cannot lock {}: {errno}", lock_path.display()))
}

fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.lock"))
}

pub fn read(path: &Path) -> anyhow::Result<DocumentMut> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse::<DocumentMut>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// Validates the edited document, then replaces the old file atomically (0600). Returns the
/// config now on disk.
pub fn write(path: &Path, doc: &DocumentMut) -> anyhow::Result<Config> {
    let text = doc.to_string();
    let config = Config::parse(&text, path)?;
    // The same error as `config init`: it names the file, says the old one is kept, and the fix.
    config::write_atomic(path, text.as_bytes()).map_err(|cause| ConfigError::Write {
        path: path.to_owned(),
        cause,
    })?;
    Ok(config)
}

/// What became of the reload request: applied, refused (with why), or no daemon to ask.
pub enum Reload {
    Applied,
    Refused(String),
    NoDaemon,
}

/// Asks the daemon behind `config`'s control socket to reload.
pub fn reload_daemon(config: &Config) -> Reload {
    match client::request(&config.control.socket, &Command::Reload) {
        Ok(answer) if answer["ok"] == true => Reload::Applied,
        Ok(answer) => Reload::Refused(
            answer["error"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        ),
        Err(_) => Reload::NoDaemon,
    }
}

/// One line for people about the reload.
pub fn describe(reload: &Reload) -> String {
    match reload {
        Reload::Applied => "the running daemon reloaded it".into(),
        Reload::Refused(why) => format!("the running daemon refused to reload: {why}"),
        Reload::NoDaemon => {
            "no daemon answered on the control socket; it takes effect at the next start".into()
        }
    }
}

pub fn reload_json(reload: &Reload) -> serde_json::Value {
    match reload {
        Reload::Applied => serde_json::json!("applied"),
        Reload::Refused(why) => serde_json::json!({ "refused": why }),
        Reload::NoDaemon => serde_json::json!("no daemon"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_file_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        let before = "# kept\n[bind]\nenabled = false\n";
        std::fs::write(&path, before).unwrap();
        // A directory where the temp file goes: the write fails before the rename, as on a full
        // disk (the real ENOSPC is tests/tests/cli_disk_full.rs, which needs root to mount).
        let blocker = dir
            .path()
            .join(format!(".pg.toml.tmp-{}", std::process::id()));
        std::fs::create_dir(&blocker).unwrap();
        let mut doc = read(&path).unwrap();
        doc["proxy"]["upstream"] = toml_edit::value("http://127.0.0.1:4001");

        let err = write(&path, &doc).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ConfigError>(),
                Some(ConfigError::Write { .. })
            ),
            "{err:#}"
        );
        let text = format!("{err:#}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("the old file is left as it was"), "{text}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(
            blocker.is_dir(),
            "the cleanup removed what it did not create"
        );
    }
}
