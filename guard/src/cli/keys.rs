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

use super::{edit, usage};
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
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Change an existing key's policy in place: only the flags given change; 0 (or an empty
    /// list) removes a limit.
    Set {
        name: String,
        /// Expire the key this long from now.
        #[arg(long, value_name = "DUR")]
        expires: Option<humantime::Duration>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Lift a key's suspension after a usage spike (in the running daemon, or in the state file
    /// when none runs).
    Resume { name: String },
    /// List keys by name with their created and expiry times, limits and suspension. Never shows
    /// a key.
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

/// A key's budgets and policy (issue 14); every one is off unless given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PolicyArgs {
    /// Requests per minute for this key (overrides proxy.rate.per_key_rpm).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Tokens (in and out) per minute.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Tokens (in and out) per UTC day.
    #[arg(long, value_name = "N")]
    pub tokens_per_day: Option<u64>,
    /// Input (prompt) tokens per UTC day.
    #[arg(long, value_name = "N")]
    pub input_tokens_per_day: Option<u64>,
    /// Output (completion) tokens per UTC day.
    #[arg(long, value_name = "N")]
    pub output_tokens_per_day: Option<u64>,
    /// Requests per UTC day.
    #[arg(long, value_name = "N")]
    pub requests_per_day: Option<u64>,
    /// Spend per UTC day, in US dollars at proxy.pricing's prices.
    #[arg(long, value_name = "X")]
    pub usd_per_day: Option<f64>,
    /// Spend per UTC month, in US dollars.
    #[arg(long, value_name = "X")]
    pub usd_per_month: Option<f64>,
    /// Models the key may call, as globs (`gpt-4o*,mock-*`).
    #[arg(long, value_name = "GLOB,...", value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Source addresses the key may come from (`10.0.0.0/8,::1`).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub from: Option<Vec<String>>,
    /// A cap on max_tokens (and its aliases) in this key's requests (its `caps.max_tokens`).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
}

impl PolicyArgs {
    /// Writes the given flags into a `[[proxy.keys]]` entry; 0 or an empty list removes one.
    fn apply(&self, entry: &mut Table) -> anyhow::Result<()> {
        let mut int = |field: &str, number: Option<u64>| match number {
            Some(0) => {
                entry.remove(field);
            }
            Some(n) => entry[field] = value(i64::try_from(n).unwrap_or(i64::MAX)),
            None => {}
        };
        int("rpm", self.rpm.map(u64::from));
        int("tpm", self.tpm);
        int("tokens_per_day", self.tokens_per_day);
        int("input_tokens_per_day", self.input_tokens_per_day);
        int("output_tokens_per_day", self.output_tokens_per_day);
        int("requests_per_day", self.requests_per_day);
        for (field, usd) in [
            ("usd_per_day", self.usd_per_day),
            ("usd_per_month", self.usd_per_month),
        ] {
            match usd {
                Some(x) if !x.is_finite() || x < 0.0 => {
                    bail!(
                        "--{} must be a non-negative number",
                        field.replace('_', "-")
                    )
                }
                Some(0.0) => {
                    entry.remove(field);
                }
                Some(x) => entry[field] = value(x),
                None => {}
            }
        }
        for (field, list) in [("models", &self.models), ("from", &self.from)] {
            let Some(list) = list else { continue };
            let list: Vec<&str> = list
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect();
            if list.is_empty() {
                entry.remove(field);
            } else {
                entry[field] = value(list.into_iter().collect::<toml_edit::Array>());
            }
        }
        if let Some(max) = self.max_tokens {
            let caps = entry
                .entry("caps")
                .or_insert_with(|| value(toml_edit::InlineTable::new()));
            let caps = caps
                .as_table_like_mut()
                .context("`caps` of this key is not a table")?;
            caps.insert("max_tokens", value(i64::try_from(max).unwrap_or(i64::MAX)));
        }
        Ok(())
    }
}

pub fn run(config_path: &Path, json: bool, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Add {
            name,
            expires,
            policy,
        } => add(config_path, json, &name, expires, &policy),
        KeysCommand::Set {
            name,
            expires,
            policy,
        } => set(config_path, json, &name, expires, &policy),
        KeysCommand::Resume { name } => resume(config_path, json, &name),
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
    policy: &PolicyArgs,
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
    policy.apply(&mut entry)?;
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

fn set(
    path: &Path,
    json: bool,
    name: &str,
    expires: Option<humantime::Duration>,
    policy: &PolicyArgs,
) -> anyhow::Result<ExitCode> {
    let edit_lock = edit::lock(path)?;
    let mut doc = read(path)?;
    let entry = doc
        .get_mut("proxy")
        .and_then(|proxy| proxy.get_mut("keys"))
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|keys| {
            keys.iter_mut()
                .find(|table| table.get("name").and_then(Item::as_str) == Some(name))
        });
    let Some(entry) = entry else {
        bail!("no key named \"{name}\" in {}", path.display());
    };
    if let Some(expires) = expires {
        entry["expires"] =
            value(humantime::format_rfc3339_seconds(SystemTime::now() + *expires).to_string());
    }
    policy.apply(entry)?;
    let reload = write(path, &doc, edit_lock)?;
    if json {
        println!(
            "{}",
            json!({ "name": name, "reload": edit::reload_json(&reload) })
        );
    } else {
        println!("key \"{name}\" changed; {}", edit::describe(&reload));
    }
    Ok(ExitCode::SUCCESS)
}

fn resume(path: &Path, json: bool, name: &str) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let resumed = usage::resume(&config, name)?;
    if json {
        println!("{}", json!({ "name": name, "resumed": resumed }));
    } else if resumed {
        println!("key \"{name}\" resumed");
    } else {
        println!("key \"{name}\" was not suspended");
    }
    Ok(ExitCode::SUCCESS)
}

fn list(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let keys = &config.proxy.keys;
    let suspended = usage::suspensions(&config);
    if json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({ "name": k.name, "created": k.created, "expires": k.expires, "rpm": k.rpm,
                        "tpm": k.tpm, "tokens_per_day": k.tokens_per_day,
                        "input_tokens_per_day": k.input_tokens_per_day,
                        "output_tokens_per_day": k.output_tokens_per_day,
                        "requests_per_day": k.requests_per_day, "usd_per_day": k.usd_per_day,
                        "usd_per_month": k.usd_per_month, "models": k.models, "from": k.from,
                        "suspended": suspended.get(&k.name) })
            })
            .collect();
        println!("{}", json!({ "keys": rows }));
    } else {
        println!(
            "{:<24} {:<22} {:<22} {:<6} state",
            "name", "created", "expires", "rpm"
        );
        for k in keys {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let rpm = k.rpm.map_or("-".into(), |r| r.to_string());
            let state = match suspended.get(&k.name) {
                Some(since) => format!("suspended since {since}"),
                None => "active".into(),
            };
            println!(
                "{:<24} {:<22} {:<22} {rpm:<6} {state}",
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
        let rpm = PolicyArgs {
            rpm: Some(60),
            ..PolicyArgs::default()
        };
        let none = PolicyArgs::default();
        add(&path, true, "ci", Some("30d".parse().unwrap()), &rpm).unwrap();
        add(&path, true, "dev", None, &none).unwrap();
        assert!(
            add(&path, true, "ci", None, &none).is_err(),
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
    fn set_changes_a_key_in_place_and_zero_removes_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        let policy = PolicyArgs {
            tpm: Some(1000),
            tokens_per_day: Some(50_000),
            requests_per_day: Some(100),
            usd_per_day: Some(1.5),
            usd_per_month: Some(20.0),
            models: Some(vec!["gpt-4o*".into(), "mock-*".into()]),
            from: Some(vec!["10.0.0.0/8".into(), "::1".into()]),
            max_tokens: Some(512),
            input_tokens_per_day: Some(7),
            ..PolicyArgs::default()
        };
        add(&path, true, "ci", None, &policy).unwrap();
        let key = &Config::load(&path).unwrap().proxy.keys[0];
        assert_eq!(
            (
                key.tpm,
                key.tokens_per_day,
                key.requests_per_day,
                key.usd_per_day,
                key.usd_per_month
            ),
            (Some(1000), Some(50_000), Some(100), Some(1.5), Some(20.0))
        );
        assert_eq!(key.models, ["gpt-4o*", "mock-*"]);
        assert_eq!(key.from, ["10.0.0.0/8", "::1"]);
        assert_eq!(key.caps["max_tokens"], 512);
        assert_eq!(
            (key.input_tokens_per_day, key.output_tokens_per_day),
            (Some(7), None)
        );
        let change = PolicyArgs {
            tpm: Some(0),
            usd_per_day: Some(3.0),
            models: Some(vec![String::new()]),
            max_tokens: Some(64),
            ..PolicyArgs::default()
        };
        set(&path, true, "ci", None, &change).unwrap();
        let key = &Config::load(&path).unwrap().proxy.keys[0];
        assert_eq!(
            (key.tpm, key.usd_per_day, key.tokens_per_day),
            (None, Some(3.0), Some(50_000))
        );
        assert!(key.models.is_empty());
        assert_eq!(key.caps["max_tokens"], 64);
        assert!(set(&path, true, "nobody", None, &change).is_err());
        let bad = PolicyArgs {
            usd_per_day: Some(-1.0),
            ..PolicyArgs::default()
        };
        assert!(set(&path, true, "ci", None, &bad).is_err());
    }

    #[test]
    fn revoking_an_admin_key_removes_it_from_admin_routes_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.toml");
        config::write_initial(&path, &config::InitOptions::default()).unwrap();
        add(&path, true, "ops", None, &PolicyArgs::default()).unwrap();
        add(&path, true, "ops2", None, &PolicyArgs::default()).unwrap();
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
