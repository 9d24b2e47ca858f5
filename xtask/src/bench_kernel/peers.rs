//! The benchmark's peers, installed idempotently the way `setup` installs build dependencies:
//! iptables (the `hashlimit` comparison) and iproute2 from apt; python3 (the slow upstream) and
//! nsenter (util-linux) must already be there. The SYN flood is xtask's own raw sender.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{cmd, setup};

const APT_PACKAGES: &[&str] = &["iptables", "iproute2"];

pub fn install() -> Result<()> {
    setup::apt_install("bench-kernel", APT_PACKAGES)?;
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
