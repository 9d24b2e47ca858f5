//! `cargo xtask run`: set up, build, and start the guard on its embedded default config.

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{bail, Result};

use crate::{build, cmd, setup};

pub fn run(args: &[String]) -> Result<()> {
    setup::run()?;
    build::workspace(false)?;
    let binary = build::proxyguard_binary();
    // The defaults compiled into the binary, written once so the operator can edit them.
    let config = build::target_dir().join("xtask/proxyguard.toml");
    if !config.exists() {
        cmd::run(
            Command::new(&binary)
                .arg("config")
                .arg("init")
                .arg("--path")
                .arg(&config),
        )?;
    }
    println!(
        "xtask run: proxyguard run --config {} (Ctrl-C stops it)",
        config.display()
    );
    let err = Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .exec();
    bail!("cannot exec {}: {err}", binary.display())
}
