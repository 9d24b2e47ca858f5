//! The benchmark's peers, installed idempotently the way `setup` installs build dependencies:
//! iptables (the `hashlimit` comparison) and iproute2 from apt; python3 (the slow upstream) and
//! nsenter (util-linux) must already be there. The SYN flood is xtask's own raw sender.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};

const APT_PACKAGES: &[&str] = &["iptables", "iproute2"];

pub fn install() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !setup::installed(p))
        .collect();
    if !missing.is_empty() {
        println!("bench-kernel: installing {}", missing.join(" "));
        let fix = format!("apt-get update && apt-get install -y {}", missing.join(" "));
        cmd::run(Command::new("apt-get").args(["update", "-qq"]))
            .with_context(|| format!("cannot update apt's lists; as root, run: {fix}"))?;
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("cannot install the benchmark's peers; as root, run: {fix}"))?;
    }
    for (tool, why) in [
        ("python3", "the slow upstream"),
        (
            "nsenter",
            "starting processes in the benchmark's namespaces (util-linux)",
        ),
    ] {
        if !cmd::succeeds(Command::new(tool).arg("--version")) {
            bail!("{tool} is needed for {why}");
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("bench-kernel needs root (namespaces, XDP, iptables)");
    }
    Ok(())
}
