//! The signing-key file of rollout tokens: one `KEY_ID HEX_KEY` per line, the first signs and
//! every line verifies (rotation keeps the previous key below the new one for its grace). Owned
//! by the user proxyguard runs as, mode 0600 or stricter, like the upstream key file.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ring::hmac;

use super::valid_name;

/// At most this many keys in the key file (the current one and the ones still in their grace).
const MAX_KEYS: usize = 16;

/// Problems with the signing-key file, each naming the fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {cause}; run `proxyguard keys mint --rollout ID` once to create it, or set proxy.rollout_tokens.key_file to an existing key file")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is owned by uid {uid}, not by the user proxyguard runs as; a secret file must be theirs (chown it)")]
    Owner { path: PathBuf, uid: u32 },
    #[error("{path} is readable by group or others; run `chmod 600 {path}`")]
    Mode { path: PathBuf },
    #[error("{path} line {line}: {problem}; each line is `KEY_ID HEX_KEY` (key id [A-Za-z0-9_-]{{1,32}}, 32 to 64 random bytes in hex), the first line signs")]
    Syntax {
        path: PathBuf,
        line: usize,
        problem: &'static str,
    },
}

/// The signing keys, by id: the first signs, all verify. Never printed (no Debug of the bytes).
#[derive(Clone)]
pub struct SigningKeys {
    pub(super) keys: Vec<(String, hmac::Key)>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SigningKeys").field("ids", &ids).finish()
    }
}

impl SigningKeys {
    /// Parses the key file's text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<SigningKeys, KeyFileError> {
        let syntax = |line, problem| KeyFileError::Syntax {
            path: path.to_owned(),
            line,
            problem,
        };
        let mut keys: Vec<(String, hmac::Key)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(id), Some(hex_key), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(syntax(line_no, "not two fields"));
            };
            if !valid_name(id, 32) {
                return Err(syntax(line_no, "bad key id"));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(syntax(line_no, "a key id is used twice"));
            }
            let bytes = hex::decode(hex_key).map_err(|_| syntax(line_no, "the key is not hex"))?;
            if !(32..=64).contains(&bytes.len()) {
                return Err(syntax(line_no, "the key is not 32 to 64 bytes"));
            }
            keys.push((id.to_owned(), hmac::Key::new(hmac::HMAC_SHA256, &bytes)));
        }
        if keys.is_empty() {
            return Err(syntax(1, "the file holds no key"));
        }
        if keys.len() > MAX_KEYS {
            return Err(syntax(
                MAX_KEYS + 1,
                "more than 16 keys; remove retired ones",
            ));
        }
        Ok(SigningKeys { keys })
    }

    /// Reads the key file: it must be this user's, mode 0600 or stricter.
    pub fn read(path: &Path) -> Result<SigningKeys, KeyFileError> {
        let read_err = |cause| KeyFileError::Read {
            path: path.to_owned(),
            cause,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(KeyFileError::Owner {
                path: path.to_owned(),
                uid: meta.uid(),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyFileError::Mode {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        SigningKeys::parse(&text, path)
    }

    /// A new key file's line: a random key id and a 256-bit key from the OS's CSPRNG.
    pub fn generate_line() -> std::io::Result<String> {
        let mut id = [0u8; 4];
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut id)
            .and_then(|()| getrandom::getrandom(&mut key))
            .map_err(std::io::Error::other)?;
        Ok(format!("{} {}\n", hex::encode(id), hex::encode(key)))
    }

    /// The id of the key that signs.
    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "b2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keys(text: &str) -> SigningKeys {
        SigningKeys::parse(text, Path::new("test.key")).unwrap()
    }

    #[test]
    fn key_file_syntax() {
        let line = SigningKeys::generate_line().unwrap();
        assert!(SigningKeys::parse(&line, Path::new("k")).is_ok(), "{line}");
        let cases = [
            ("", 1),
            ("a1", 1),
            ("a1 00", 1),
            ("a1 zz", 1),
            (
                "a.1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                1,
            ),
            (&format!("{KEY_A}\n{KEY_A}"), 2),
            (&format!("{KEY_A}\n\n{KEY_B} extra"), 3),
        ];
        for (text, line) in cases {
            match SigningKeys::parse(text, Path::new("k")) {
                Err(KeyFileError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let debug = format!("{:?}", keys(KEY_A));
        assert!(!debug.contains("0001020304"), "{debug}");
    }

    #[test]
    fn key_file_mode_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.key");
        std::fs::write(&path, KEY_A).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            SigningKeys::read(&path),
            Err(KeyFileError::Mode { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SigningKeys::read(&path).is_ok());
        assert!(matches!(
            SigningKeys::read(&dir.path().join("absent")),
            Err(KeyFileError::Read { .. })
        ));
    }
}
