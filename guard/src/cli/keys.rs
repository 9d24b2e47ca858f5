//! `proxyguard keys add|list|revoke|mint`: client keys for the L7 proxy (threats 1 and 16).
//!
//! A new key is 256 bits from the OS's CSPRNG, printed once; only its SHA-256 is written, into
//! `[[proxy.keys]]` of the config, edited in place (comments kept) and written atomically, 0600.
//! The running daemon picks the change up on reload (SIGHUP).

use std::{path::Path, process::ExitCode, time::SystemTime};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::json;
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

mod mint;

use super::edit;
use crate::{config::Config, proxy::layers::auth::hash_hex};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a client key and print it exactly once, alone on one line. Only its hash is stored.
    Add {
        /// The name logs and metrics show for this key (letters, digits, '-', '_', '.').
        name: String,
        /// Expire the key after this long, like `30d` or `12h`.
        #[arg(long, value_name = "DUR")]
        expires: Option<humantime::Duration>,
        /// Requests per minute for this key (overrides proxy.rate.per_key_rpm).
        #[arg(long, value_name = "N")]
        rpm: Option<u32>,
    },
    /// List keys by name with their created and expiry times. Never shows a key.
    List,
    /// Remove a key by name (from `proxy.admin_routes.keys` too, in the same edit).
    Revoke { name: String },
    /// Print, alone on one line, a signed token valid only on rollout R's paths (and attempt A's,
    /// if given) until it expires. No state is stored; the format is in docs/rollout-tokens.md,
    /// so a trainer can mint tokens itself. The first mint creates the signing key.
    Mint {
        /// The rollout id, as in /rollout/{id}/... (letters, digits, '-', '_'; at most 128).
        #[arg(long, value_name = "R")]
        rollout: String,
        /// Bind the token to this attempt of the rollout, too.
        #[arg(long, value_name = "A")]
        attempt: Option<String>,
        /// How long the token is valid, like `6h` (at most 30d).
        #[arg(long, value_name = "DUR", default_value = "24h")]
        ttl: humantime::Duration,
    },
}

pub fn run(config_path: &Path, json: bool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Add { name, expires, rpm } => add(config_path, json, &name, expires, rpm),
        KeysCommand::List => list(config_path, json),
        KeysCommand::Revoke { name } => revoke(config_path, json, &name),
        KeysCommand::Mint {
            rollout,
            attempt,
            ttl,
        } => mint::mint(config_path, json, &rollout, attempt.as_deref(), *ttl),
    }
}

fn add(
    path: &Path,
    json: bool,
    name: &str,
    expires: Option<humantime::Duration>,
    rpm: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let edit_lock = edit::lock(path)?;
    let mut doc = read(path)?;
    if entries(&doc).any(|table| table.get("name").and_then(Item::as_str) == Some(name)) {
        bail!("a key named \"{name}\" exists; revoke it first or pick another name");
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).context("the OS random source failed")?;
    let key = format!("pgk_{}", hex::encode(bytes));
    let now = SystemTime::now();
    let mut entry = Table::new();
    entry["name"] = value(name);
    entry["sha256"] = value(hash_hex(&key));
    entry["created"] = value(humantime::format_rfc3339_seconds(now).to_string());
    if let Some(expires) = expires {
        entry["expires"] = value(humantime::format_rfc3339_seconds(now + *expires).to_string());
    }
    if let Some(rpm) = rpm {
        entry["rpm"] = value(i64::from(rpm));
    }
    let proxy = doc
        .entry("proxy")
        .or_insert_with(|| Item::Table(Table::new()));
    let keys = proxy
        .as_table_like_mut()
        .context("`proxy` in the config is not a table")?
        .entry("keys")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    keys.as_array_of_tables_mut()
        .context("`proxy.keys` in the config is not an array of tables ([[proxy.keys]])")?
        .push(entry);
    let reload = write(path, &doc, edit_lock)?;
    if json {
        println!(
            "{}",
            json!({ "name": name, "key": key, "reload": edit::reload_json(&reload) })
        );
    } else {
        println!("{key}");
        eprintln!(
            "key \"{name}\" added to {}; {}. It is shown only this once.",
            path.display(),
            edit::describe(&reload)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn list(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let keys = &config.proxy.keys;
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| json!({ "name": k.name, "created": k.created, "expires": k.expires, "rpm": k.rpm }))
            .collect();
        println!("{}", json!({ "keys": rows }));
    } else {
        println!("{:<24} {:<22} {:<22} rpm", "name", "created", "expires");
        for k in keys {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let rpm = k.rpm.map_or("-".into(), |r| r.to_string());
            println!(
                "{:<24} {:<22} {:<22} {rpm}",
                k.name,
                or_dash(&k.created),
                or_dash(&k.expires)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(path: &Path, json: bool, name: &str) -> anyhow::Result<ExitCode> {
    let edit_lock = edit::lock(path)?;
    let mut doc = read(path)?;
    let keys = doc
        .get_mut("proxy")
        .and_then(|proxy| proxy.get_mut("keys"))
        .and_then(Item::as_array_of_tables_mut);
    let Some(keys) = keys else {
        bail!("no key named \"{name}\" in {}", path.display());
    };
    let before = keys.len();
    keys.retain(|table| table.get("name").and_then(Item::as_str) != Some(name));
    if keys.len() == before {
        bail!("no key named \"{name}\" in {}", path.display());
    }
    // An admin key is named in `proxy.admin_routes.keys` too; a name there without its key does
    // not validate, so both go in the same edit.
    let admin_keys = doc
        .get_mut("proxy")
        .and_then(|proxy| proxy.get_mut("admin_routes"))
        .and_then(|admin| admin.get_mut("keys"))
        .and_then(Item::as_array_mut);
    if let Some(admin_keys) = admin_keys {
        loop {
            let at = admin_keys
                .iter()
                .position(|entry| entry.as_str() == Some(name));
            let Some(at) = at else { break };
            let removed = admin_keys.remove(at);
            // The next entry takes the removed one's leading space: `["a", "b"]` minus "a" is
            // `["b"]`, not `[ "b"]`.
            if let Some(next) = admin_keys.get_mut(at) {
                if let Some(prefix) = removed.decor().prefix().cloned() {
                    next.decor_mut().set_prefix(prefix);
                }
            }
        }
    }
    let reload = write(path, &doc, edit_lock)?;
    if json {
        println!(
            "{}",
            json!({ "revoked": name, "reload": edit::reload_json(&reload) })
        );
    } else {
        println!("key \"{name}\" revoked; {}", edit::describe(&reload));
    }
    Ok(ExitCode::SUCCESS)
}

fn entries(doc: &DocumentMut) -> impl Iterator<Item = &Table> {
    doc.get("proxy")
        .and_then(|proxy| proxy.get("keys"))
        .and_then(Item::as_array_of_tables)
        .into_iter()
        .flat_map(|keys| keys.iter())
}

fn read(path: &Path) -> anyhow::Result<DocumentMut> {
    edit::read(path)
}

/// Validates and writes the edited file, then (with the edit lock released, so other editors need
/// not wait for the daemon) asks a running daemon to reload.
fn write(
    path: &Path,
    doc: &DocumentMut,
    edit_lock: nix::fcntl::Flock<std::fs::File>,
) -> anyhow::Result<edit::Reload> {
    let config = edit::write(path, doc)?;
    drop(edit_lock);
    Ok(edit::reload_daemon(&config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    #[test]
    fn add_list_revoke_keep_comments_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        add(&path, true, "ci", Some("30d".parse().unwrap()), Some(60)).unwrap();
        add(&path, true, "dev", None, None).unwrap();
        assert!(
            add(&path, true, "ci", None, None).is_err(),
            "names are unique"
        );
        let loaded = Config::load(&path).unwrap();
        let names: Vec<_> = loaded.proxy.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["ci", "dev"]);
        assert_eq!(loaded.proxy.keys[0].rpm, Some(60));
        assert!(loaded.proxy.keys[0].expires.is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("# The authenticating L7 proxy"),
            "comments are kept"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        revoke(&path, true, "ci").unwrap();
        assert!(revoke(&path, true, "ci").is_err());
        let names: Vec<_> = Config::load(&path)
            .unwrap()
            .proxy
            .keys
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["dev"]);
    }

    #[test]
    fn revoking_an_admin_key_removes_it_from_admin_routes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        add(&path, true, "ops", None, None).unwrap();
        add(&path, true, "ops2", None, None).unwrap();
        let mut doc = read(&path).unwrap();
        let mut admins = toml_edit::Array::new();
        admins.push("ops");
        admins.push("ops2");
        doc["proxy"]["admin_routes"]["keys"] = value(admins);
        edit::write(&path, &doc).unwrap();

        revoke(&path, true, "ops").unwrap();
        let loaded = Config::load(&path).unwrap();
        let names: Vec<_> = loaded.proxy.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["ops2"]);
        assert_eq!(loaded.proxy.admin_routes.keys, ["ops2"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"ops\""), "{text}");
        assert!(
            text.contains("# The authenticating L7 proxy"),
            "comments are kept"
        );
    }
}
