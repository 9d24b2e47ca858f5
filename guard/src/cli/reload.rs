//! `proxyguard reload`: the same as SIGHUP, with the outcome reported back.

use std::{path::Path, process::ExitCode};

use crate::{
    config::Config,
    control::{client, Command},
};

pub fn run(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let answer = client::request(&config.control.socket, &Command::Reload)?;
    if json {
        println!("{answer}");
    }
    if answer["ok"] == true {
        if !json {
            println!("reloaded {}", config_path.display());
        }
        Ok(ExitCode::SUCCESS)
    } else {
        if !json {
            eprintln!(
                "proxyguard: reload refused; the previous config stays in force:\n{}",
                answer["error"].as_str().unwrap_or("(no reason given)")
            );
        }
        Ok(ExitCode::from(2))
    }
}
