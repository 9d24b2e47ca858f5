//! `proxyguard events [--follow]`: security events from the kernel and from L7, recent first
//! then (with --follow) as they happen.

use std::{path::Path, process::ExitCode};

use serde_json::Value;

use crate::{
    config::Config,
    control::{client, Command},
};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep streaming new events until interrupted.
    #[arg(long)]
    pub follow: bool,
}

pub fn run(config_path: &Path, json: bool, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    client::for_each_line(
        &config.control.socket,
        &Command::Events {
            follow: args.follow,
        },
        |event| {
            if json {
                println!("{event}");
            } else {
                println!("{}", render(&event));
            }
            true
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `TIME KIND key=value ...`, with the time and kind pulled to the front.
fn render(event: &Value) -> String {
    let mut line = format!(
        "{} {}",
        event["ts"].as_str().unwrap_or("-"),
        event["kind"].as_str().unwrap_or("?")
    );
    if let Some(fields) = event.as_object() {
        for (key, value) in fields.iter().filter(|(k, _)| *k != "ts" && *k != "kind") {
            match value {
                Value::String(s) => line.push_str(&format!(" {key}={s}")),
                other => line.push_str(&format!(" {key}={other}")),
            }
        }
    }
    line
}
