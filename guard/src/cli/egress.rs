//! `proxyguard egress allow|deny|list`: the guarded service's egress allow-list (threat 11),
//! edited in place in `[egress] allow`, validated, written atomically, and reloaded live.

use std::{path::Path, process::ExitCode};

use anyhow::bail;
use clap::Subcommand;
use serde_json::json;
use toml_edit::{value, Array, Item};

use super::edit;
use crate::config::{
    egress::{EgressPolicy, EgressTarget},
    Config, ConfigError, FieldError,
};

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Allow TARGET: `CIDR[:PORT]`, `[IPV6-CIDR]:PORT` or `HOST:PORT`.
    Allow { target: String },
    /// Take TARGET off the allow-list (everything not listed is refused).
    Deny { target: String },
    /// The policy and the allow-list, with what is always reachable (DNS resolvers, proxyguard's
    /// own port; the provider gateway alone with `policy = "gateway-only"`).
    List,
}

pub fn run(config_path: &Path, json: bool, command: EgressCommand) -> anyhow::Result<ExitCode> {
    match command {
        EgressCommand::Allow { target } => change(config_path, json, &target, true),
        EgressCommand::Deny { target } => change(config_path, json, &target, false),
        EgressCommand::List => list(config_path, json),
    }
}

fn change(path: &Path, json: bool, text: &str, allow: bool) -> anyhow::Result<ExitCode> {
    let target: EgressTarget = text.parse().map_err(|message| ConfigError::Invalid {
        path: path.to_owned(),
        errors: vec![FieldError {
            field: "egress.allow".into(),
            line: None,
            message,
        }],
    })?;
    let edit_lock = edit::lock(path)?;
    let mut doc = edit::read(path)?;
    let egress = doc.entry("egress").or_insert(toml_edit::table());
    let Some(egress) = egress.as_table_like_mut() else {
        bail!("`egress` in {} is not a table", path.display());
    };
    let list = egress
        .entry("allow")
        .or_insert(Item::Value(Array::new().into()));
    let Some(list) = list.as_array_mut() else {
        bail!("`egress.allow` in {} is not an array", path.display());
    };
    // Compare parsed targets, so `10.0.0.1` and `10.0.0.1/32` are the same entry.
    let position = list.iter().position(|v| {
        v.as_str()
            .and_then(|s| s.parse::<EgressTarget>().ok())
            .as_ref()
            == Some(&target)
    });
    match (allow, position) {
        (true, Some(_)) => {
            println!("{target} is already allowed");
            return Ok(ExitCode::SUCCESS);
        }
        (true, None) => list.push(target.to_string()),
        (false, Some(index)) => {
            list.remove(index);
        }
        (false, None) => bail!(
            "{target} is not on the allow-list in {}; `proxyguard egress list` shows it",
            path.display()
        ),
    }
    if list.is_empty() {
        *egress.get_mut("allow").expect("just set") = value(Array::new());
    }
    let config = edit::write(path, &doc)?;
    drop(edit_lock);
    let reload = edit::reload_daemon(&config);
    let verb = if allow { "allowed" } else { "removed" };
    if json {
        println!(
            "{}",
            json!({ verb: target.to_string(), "reload": edit::reload_json(&reload) })
        );
    } else {
        println!("{target} {verb}; {}", edit::describe(&reload));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let dns = if !config.egress.allow_dns {
        Vec::new()
    } else if config.egress.dns.is_empty() {
        crate::resolve::system_nameservers()
    } else {
        config.egress.dns.clone()
    };
    let gateway = crate::kernel::gateway(&config);
    let policy = config.egress.policy;
    let allow: Vec<String> = config
        .egress
        .allow
        .iter()
        .map(ToString::to_string)
        .collect();
    if json {
        println!(
            "{}",
            json!({
                "mode": config.egress.mode.as_str(),
                "policy": policy.as_str(),
                "enabled": config.egress.enabled,
                "allow": allow,
                "allow_dns": config.egress.allow_dns,
                "dns": dns,
                "guard_port": config.egress.guard_port,
                "gateway": gateway,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "egress ({}, {}, {}):",
        policy.as_str(),
        config.egress.mode.as_str(),
        if config.egress.enabled { "on" } else { "off" }
    );
    let resolvers: Vec<String> = dns.iter().map(|d| format!("{d}:53")).collect();
    let resolvers = if resolvers.is_empty() {
        "no DNS resolver".to_owned()
    } else {
        resolvers.join(" ")
    };
    if policy == EgressPolicy::GatewayOnly {
        match gateway {
            Some(gateway) => println!("  the provider gateway {gateway} alone"),
            None => println!("  (no provider gateway runs: nothing but DNS)"),
        }
        println!("always: {resolvers}");
        return Ok(ExitCode::SUCCESS);
    }
    for target in &allow {
        println!("  {target}");
    }
    if allow.is_empty() {
        println!("  (nothing listed)");
    }
    println!(
        "always: {resolvers} and loopback:{}",
        config.egress.guard_port
    );
    Ok(ExitCode::SUCCESS)
}
