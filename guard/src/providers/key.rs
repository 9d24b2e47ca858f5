//! Provider key files: owned by the user proxyguard runs as, mode 0600 or stricter, one key on
//! one line. `$CREDENTIALS_DIRECTORY/NAME` names a systemd credential (`LoadCredential=NAME:...`
//! in proxyguard's unit); that variable is set only inside the unit, so elsewhere (`config
//! check`, `providers add` from a shell) the file is left for the daemon to read.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

const CREDENTIALS: &str = "$CREDENTIALS_DIRECTORY";

/// What a `key_file` came to.
pub enum KeyRead {
    /// The key, checked.
    Key(String),
    /// A credential path, and `$CREDENTIALS_DIRECTORY` is not set here.
    Deferred,
}

/// `path` with `$CREDENTIALS_DIRECTORY` expanded, `None` when it names a credential and the
/// variable is unset.
pub fn expand(path: &Path) -> Option<PathBuf> {
    let text = path.to_string_lossy();
    let Some(rest) = text.strip_prefix(CREDENTIALS) else {
        return Some(path.to_owned());
    };
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    Some(PathBuf::from(dir).join(rest.trim_start_matches('/')))
}

/// Reads and checks the key file; the error names the file and the fix.
pub fn read(path: &Path) -> Result<KeyRead, String> {
    let Some(real) = expand(path) else {
        return Ok(KeyRead::Deferred);
    };
    let meta = std::fs::metadata(&real).map_err(|err| {
        format!(
            "cannot read {}: {err}; write the provider's key alone on one line into it (`install -m 600 /dev/stdin {}`)",
            real.display(),
            real.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", real.display()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is owned by uid {}, not by the user proxyguard runs as; a secret file must be theirs (chown it)",
            real.display(),
            meta.uid()
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others; run `chmod 600 {}`",
            real.display(),
            real.display()
        ));
    }
    let text = std::fs::read_to_string(&real)
        .map_err(|err| format!("cannot read {}: {err}", real.display()))?;
    let key = text.trim();
    if key.is_empty()
        || key.contains(char::is_whitespace)
        || http::HeaderValue::from_str(key).is_err()
    {
        return Err(format!(
            "{} is empty or not a single-line key; write the provider's key alone on one line",
            real.display()
        ));
    }
    Ok(KeyRead::Key(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_table() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("sk-real\n", 0o600, Ok("sk-real")),
            ("  sk-real ", 0o400, Ok("sk-real")),
            ("", 0o600, Err("empty")),
            ("two words", 0o600, Err("single-line")),
            ("sk-real", 0o640, Err("chmod 600")),
            ("sk-real", 0o604, Err("chmod 600")),
        ];
        for (i, (text, mode, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("k{i}"));
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match (read(&path), want) {
                (Ok(KeyRead::Key(key)), Ok(expected)) => assert_eq!(key, expected),
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{message}");
                    assert!(message.contains(&path.display().to_string()), "{message}");
                    assert!(!message.contains("sk-real"), "{message}");
                }
                (got, want) => panic!("{text:?} {mode:o}: {:?} vs {want:?}", got.is_ok()),
            }
        }
        let missing = read(&dir.path().join("absent")).err().unwrap();
        assert!(
            missing.contains("absent") && missing.contains("install -m 600"),
            "{missing}"
        );
    }

    #[test]
    fn credentials_directory_is_expanded_or_deferred() {
        // Only this test touches the variable.
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        let credential = Path::new("$CREDENTIALS_DIRECTORY/openai");
        assert!(matches!(read(credential), Ok(KeyRead::Deferred)));
        std::env::set_var(
            "CREDENTIALS_DIRECTORY",
            "/run/credentials/proxyguard.service",
        );
        assert_eq!(
            expand(credential).unwrap(),
            Path::new("/run/credentials/proxyguard.service/openai")
        );
        std::env::remove_var("CREDENTIALS_DIRECTORY");
        assert_eq!(expand(Path::new("/etc/k")).unwrap(), Path::new("/etc/k"));
    }
}
