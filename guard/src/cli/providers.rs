//! `proxyguard providers add|list|remove`: the provider gateway's `[[providers.routes]]`, edited
//! in place (comments kept), validated as the daemon would (the key file and CA file read),
//! written atomically, and reloaded live. `list` never shows a key.

use std::{path::Path, process::ExitCode};

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;
use toml_edit::{value, ArrayOfTables, InlineTable, Item, Table};

use super::edit;
use crate::config::{Config, ConfigError, FieldError};

#[derive(Debug, Subcommand)]
pub enum ProvidersCommand {
    /// Add provider NAME: requests to http://LISTEN/NAME/REST go to BASE_URL/REST with the key
    /// from KEY_FILE (owned by proxyguard's user, mode 0600).
    Add {
        name: String,
        /// The provider's API base, https:// only (e.g. https://api.openai.com/v1).
        #[arg(long, value_name = "URL")]
        base_url: String,
        /// The file with the provider's key alone on one line, or
        /// `$CREDENTIALS_DIRECTORY/NAME` for a systemd credential.
        #[arg(long, value_name = "PATH")]
        key_file: String,
        /// How the key is sent: `Authorization: Bearer` (bearer), `x-api-key` or `api-key`.
        #[arg(long, default_value = "bearer", value_parser = ["bearer", "x-api-key", "api-key"])]
        auth: String,
        /// An extra trust anchor (PEM) beside the system roots, for a private endpoint.
        #[arg(long, value_name = "PATH")]
        ca_file: Option<String>,
        /// A fixed header for every request, `'K: V'` (repeatable).
        #[arg(long = "header", value_name = "'K: V'")]
        headers: Vec<String>,
    },
    /// The providers, their base URLs, auth and key files (never a key).
    List,
    /// Remove provider NAME.
    Remove { name: String },
}

pub fn run(config_path: &Path, json: bool, command: ProvidersCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProvidersCommand::Add {
            name,
            base_url,
            key_file,
            auth,
            ca_file,
            headers,
        } => add(
            config_path,
            json,
            &name,
            &base_url,
            &key_file,
            &auth,
            ca_file.as_deref(),
            &headers,
        ),
        ProvidersCommand::List => list(config_path, json),
        ProvidersCommand::Remove { name } => remove(config_path, json, &name),
    }
}

fn usage(path: &Path, field: &str, message: String) -> anyhow::Error {
    ConfigError::Invalid {
        path: path.to_owned(),
        errors: vec![FieldError {
            field: field.into(),
            line: None,
            message,
        }],
    }
    .into()
}

/// The `[[providers.routes]]` array of the document, made if absent.
fn routes_mut<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    path: &Path,
) -> anyhow::Result<&'d mut ArrayOfTables> {
    let providers = doc.entry("providers").or_insert(toml_edit::table());
    let Some(providers) = providers.as_table_mut() else {
        bail!("`providers` in {} is not a table", path.display());
    };
    let routes = providers
        .entry("routes")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()));
    match routes.as_array_of_tables_mut() {
        Some(routes) => Ok(routes),
        None => bail!(
            "`providers.routes` in {} is not an array of tables ([[providers.routes]])",
            path.display()
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn add(
    path: &Path,
    json: bool,
    name: &str,
    base_url: &str,
    key_file: &str,
    auth: &str,
    ca_file: Option<&str>,
    headers: &[String],
) -> anyhow::Result<ExitCode> {
    let mut fixed = InlineTable::new();
    for header in headers {
        let Some((key, val)) = header.split_once(':') else {
            return Err(usage(
                path,
                "providers.routes.headers",
                format!("`--header {header}` is not `NAME: VALUE`"),
            ));
        };
        fixed.insert(key.trim().to_ascii_lowercase().as_str(), val.trim().into());
    }
    let edit_lock = edit::lock(path)?;
    let mut doc = edit::read(path)?;
    let routes = routes_mut(&mut doc, path)?;
    if routes
        .iter()
        .any(|t| t.get("name").and_then(Item::as_str) == Some(name))
    {
        bail!(
            "a provider named {name} is already in {}; `proxyguard providers remove {name}` first",
            path.display()
        );
    }
    let mut table = Table::new();
    table.insert("name", value(name));
    table.insert("base_url", value(base_url));
    table.insert("key_file", value(key_file));
    table.insert("auth", value(auth));
    if !fixed.is_empty() {
        table.insert("headers", value(fixed));
    }
    if let Some(ca) = ca_file {
        table.insert("ca_file", value(ca));
    }
    routes.push(table);
    let config = edit::write(path, &doc)?;
    drop(edit_lock);
    let reload = edit::reload_daemon(&config);
    let api_base = format!("http://{}/{name}", config.providers.listen);
    if json {
        println!(
            "{}",
            json!({ "added": name, "api_base": api_base, "reload": edit::reload_json(&reload) })
        );
    } else {
        println!(
            "provider {name} added; point the LLM proxy at {api_base} (with a placeholder key); {}",
            edit::describe(&reload)
        );
        // Until the kernel rule on the gateway's port exists (issue 13, points 2 and 3).
        println!(
            "note: no kernel rule guards the gateway's port yet, so any local process could use it (`proxyguard status` shows this)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn remove(path: &Path, json: bool, name: &str) -> anyhow::Result<ExitCode> {
    let edit_lock = edit::lock(path)?;
    let mut doc = edit::read(path)?;
    let routes = routes_mut(&mut doc, path)?;
    let Some(index) = routes
        .iter()
        .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
    else {
        bail!(
            "no provider named {name} in {}; `proxyguard providers list` shows them",
            path.display()
        );
    };
    routes.remove(index);
    let config = edit::write(path, &doc)?;
    drop(edit_lock);
    let reload = edit::reload_daemon(&config);
    if json {
        println!(
            "{}",
            json!({ "removed": name, "reload": edit::reload_json(&reload) })
        );
    } else {
        println!("provider {name} removed; {}", edit::describe(&reload));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let section = &config.providers;
    let rows: Vec<serde_json::Value> = section
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "base_url": r.base_url,
                "auth": r.auth.as_str(),
                "key_file": r.key_file,
                "ca_file": r.ca_file,
                "headers": r.headers.keys().collect::<Vec<_>>(),
                "api_base": format!("http://{}/{}", section.listen, r.name),
            })
        })
        .collect();
    if json {
        println!("{}", json!({ "listen": section.listen, "providers": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    println!("provider gateway on {}:", section.listen);
    if rows.is_empty() {
        println!(
            "  (no providers; `proxyguard providers add NAME --base-url URL --key-file PATH`)"
        );
    }
    for (route, row) in section.routes.iter().zip(&rows) {
        println!(
            "  {:<12} {} ({}, key {}){}",
            route.name,
            route.base_url,
            route.auth.as_str(),
            route.key_file.display(),
            row["api_base"]
                .as_str()
                .map(|b| format!(" <- {b}"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
