//! `proxyguard keys mint --rollout R [--attempt A] [--ttl DUR]`: a rollout-scoped token
//! (docs/rollout-tokens.md), printed alone on one line. Nothing is stored per token.
//!
//! The first mint creates the signing key: a 0600 file next to the config (or at
//! `proxy.rollout_tokens.key_file` if that is set), with `key_file` written into the config under
//! the edit lock, atomically, and a running daemon asked to reload, like `keys add`.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context};
use serde_json::json;
use toml_edit::{value, DocumentMut, Item, Table};

use super::edit;
use crate::{
    config::Config,
    proxy::rollout_token::{valid_id, SigningKeys, MAX_TTL},
};

/// The key file's name when the config names none: beside the config.
const DEFAULT_FILE: &str = "rollout-tokens.key";

pub fn mint(
    path: &Path,
    json: bool,
    rollout: &str,
    attempt: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let ids = [("--rollout", Some(rollout)), ("--attempt", attempt)];
    for (flag, id) in ids {
        if let Some(id) = id.filter(|id| !valid_id(id)) {
            bail!(
                "{flag} {id:?} is not an id: use 1 to 128 of the letters, digits, '-' and '_', as in the path /rollout/{{rollout}}/attempt/{{attempt}}/..."
            );
        }
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        bail!(
            "--ttl {} is out of range: give a lifetime from 1s to 30d, like 6h",
            humantime::format_duration(ttl)
        );
    }
    let (keys, note) = signing_keys(path)?;
    let expires = SystemTime::now() + ttl;
    let token = keys.mint(rollout, attempt, expires);
    let expires_text = humantime::format_rfc3339_seconds(expires).to_string();
    if json {
        println!(
            "{}",
            json!({
                "token": token,
                "rollout": rollout,
                "attempt": attempt,
                "expires": expires_text,
                "key_id": keys.current_id(),
            })
        );
    } else {
        println!("{token}");
        if let Some(note) = note {
            eprintln!("{note}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn configured_key_file(doc: &DocumentMut) -> Option<PathBuf> {
    doc.get("proxy")
        .and_then(|proxy| proxy.get("rollout_tokens"))
        .and_then(|tokens| tokens.get("key_file"))
        .and_then(Item::as_str)
        .map(PathBuf::from)
}

/// The signing keys, creating the key file (and naming it in the config) on first use; with a
/// line for people when it did.
fn signing_keys(path: &Path) -> anyhow::Result<(SigningKeys, Option<String>)> {
    if let Some(key_file) = configured_key_file(&edit::read(path)?).filter(|f| f.exists()) {
        return Ok((SigningKeys::read(&key_file)?, None));
    }
    let edit_lock = edit::lock(path)?;
    // Read again under the lock: another mint may have created it meanwhile.
    let mut doc = edit::read(path)?;
    let configured = configured_key_file(&doc);
    let key_file = match &configured {
        Some(file) => file.clone(),
        None => std::path::absolute(path)
            .with_context(|| format!("cannot resolve {}", path.display()))?
            .with_file_name(DEFAULT_FILE),
    };
    let created = !key_file.exists();
    if created {
        let line = SigningKeys::generate_line().context("the OS random source failed")?;
        crate::config::write_atomic(&key_file, line.as_bytes()).with_context(|| {
            format!(
                "cannot write the signing key {} (run as the config's owner, or set proxy.rollout_tokens.key_file to a writable place)",
                key_file.display()
            )
        })?;
    }
    let keys = SigningKeys::read(&key_file)?;
    let config = if configured.is_none() {
        let proxy = doc
            .entry("proxy")
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_like_mut()
            .context("`proxy` in the config is not a table")?;
        let tokens = proxy
            .entry("rollout_tokens")
            .or_insert_with(|| Item::Table(Table::new()))
            .as_table_like_mut()
            .context("`proxy.rollout_tokens` in the config is not a table")?;
        tokens.insert("key_file", value(key_file.display().to_string()));
        Some(edit::write(path, &doc)?)
    } else {
        Config::load(path).ok()
    };
    drop(edit_lock);
    let reload = config.map_or(edit::Reload::NoDaemon, |config| {
        edit::reload_daemon(&config)
    });
    let note = format!(
        "{} the signing key {} ({}); {}.",
        if created { "created" } else { "using" },
        key_file.display(),
        if configured.is_none() {
            "proxy.rollout_tokens.key_file now names it"
        } else {
            "proxy.rollout_tokens.key_file"
        },
        edit::describe(&reload)
    );
    Ok((keys, Some(note)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_first_mint_creates_the_key_and_names_it_in_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        mint(&path, true, "ro-1", Some("at-1"), Duration::from_secs(60)).unwrap();
        let key_file = dir.path().join(DEFAULT_FILE);
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Config::load(&path).unwrap();
        assert_eq!(
            loaded.proxy.rollout_tokens.key_file.as_deref(),
            Some(key_file.as_path())
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# The authenticating L7 proxy"),
            "comments are kept"
        );
        let key = std::fs::read_to_string(&key_file).unwrap();
        assert!(
            !text.contains(key.split_whitespace().nth(1).unwrap()),
            "the config holds the path only"
        );

        // Later mints reuse the key.
        mint(&path, true, "ro-2", None, Duration::from_secs(60)).unwrap();
        assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
        let (keys, note) = signing_keys(&path).unwrap();
        assert!(note.is_none());
        let token = keys.mint("ro-3", None, SystemTime::now() + Duration::from_secs(60));
        assert!(SigningKeys::read(&key_file)
            .unwrap()
            .verify(token.as_bytes(), SystemTime::now())
            .is_ok());
    }

    #[test]
    fn bad_ids_and_ttls_name_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        let day = Duration::from_secs(86400);
        let cases = [
            ("ro/1", None, day, "--rollout"),
            ("ro", Some("a b"), day, "--attempt"),
            ("ro", None, Duration::ZERO, "--ttl"),
            ("ro", None, day * 31, "--ttl"),
        ];
        for (rollout, attempt, ttl, flag) in cases {
            let err = mint(&path, false, rollout, attempt, ttl)
                .unwrap_err()
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert!(
            !dir.path().join(DEFAULT_FILE).exists(),
            "no key for a refused mint"
        );
    }
}
