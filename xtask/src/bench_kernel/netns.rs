//! The benchmark's own hosts: a client and a guard network namespace joined by two veth pairs,
//! addresses from the benchmarking range 198.18.0.0/15 only. Removed on drop, even after an error.
//!
//! Pair 0 (`pgbc0` / `pgbg0`, 198.18.0.0/24) carries every measured flow and is where the guard
//! (XDP or iptables) sits. Pair 1 (`pgbc1` / `pgbg1`, 198.18.1.0/24) exists only for the
//! pass-through XDP baseline of the program-cost measurement. Pair 0 also carries 2001:db8::1 and
//! 2001:db8::2, for the rotation flood's IPv6 half.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cmd;

pub const CLIENT_NS: &str = "pgbench-c";
pub const GUARD_NS: &str = "pgbench-g";
pub const GUARD_IF: &str = "pgbg0";
pub const CLIENT_IF: &str = "pgbc0";
pub const BASELINE_GUARD_IF: &str = "pgbg1";

/// The guard's address on pair 0 (the slow upstream listens here).
pub const GUARD_ADDR: &str = "198.18.0.2";
/// The guard's IPv6 address on pair 0 (the rotation flood's IPv6 target).
pub const GUARD_V6: &str = "2001:db8::2";
/// The guard's address on pair 1 (the pass-through baseline).
pub const BASELINE_GUARD_ADDR: &str = "198.18.1.2";
/// The abusive source of the connection flood.
pub const FLOOD_SRC: &str = "198.18.0.10";
/// The legitimate, paced client.
pub const LEGIT_SRC: &str = "198.18.0.20";
// The SYN flood (hping3) comes from the client veth's primary address, 198.18.0.1.

/// Both namespaces and both veth pairs; dropping it deletes the namespaces (and with them the
/// veths, any iptables rules and any XDP attachment inside).
pub struct Topology {
    _client: NetNs,
    _guard: NetNs,
}

impl Topology {
    pub fn new() -> Result<Topology> {
        let client = NetNs::new(CLIENT_NS)?;
        let guard = NetNs::new(GUARD_NS)?;
        for (pair, net) in [(0, "198.18.0"), (1, "198.18.1")] {
            let (c_if, g_if) = (format!("pgbc{pair}"), format!("pgbg{pair}"));
            ip_in(
                CLIENT_NS,
                &["link", "add", &c_if, "type", "veth", "peer", "name", &g_if],
            )?;
            ip_in(CLIENT_NS, &["link", "set", &g_if, "netns", GUARD_NS])?;
            ip_in(
                CLIENT_NS,
                &["addr", "add", &format!("{net}.1/24"), "dev", &c_if],
            )?;
            ip_in(
                GUARD_NS,
                &["addr", "add", &format!("{net}.2/24"), "dev", &g_if],
            )?;
            if pair == 0 {
                ip_in(
                    CLIENT_NS,
                    &["-6", "addr", "add", "2001:db8::1/64", "dev", &c_if, "nodad"],
                )?;
                ip_in(
                    GUARD_NS,
                    &["-6", "addr", "add", "2001:db8::2/64", "dev", &g_if, "nodad"],
                )?;
            }
            ip_in(CLIENT_NS, &["link", "set", &c_if, "up"])?;
            ip_in(GUARD_NS, &["link", "set", &g_if, "up"])?;
        }
        for src in [FLOOD_SRC, LEGIT_SRC] {
            ip_in(
                CLIENT_NS,
                &["addr", "add", &format!("{src}/24"), "dev", CLIENT_IF],
            )?;
        }
        for ns in [CLIENT_NS, GUARD_NS] {
            ip_in(ns, &["link", "set", "lo", "up"])?;
        }
        Ok(Topology {
            _client: client,
            _guard: guard,
        })
    }
}

struct NetNs {
    name: &'static str,
}

impl NetNs {
    fn new(name: &'static str) -> Result<NetNs> {
        // A namespace left behind by a killed run is removed first.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        cmd::run(Command::new("ip").args(["netns", "add", name]))?;
        Ok(NetNs { name })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", self.name])
            .status();
    }
}

pub fn path(ns: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(ns)
}

fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .status()
        .context("cannot run ip (iproute2)")?;
    if !status.success() {
        bail!("`ip -n {ns} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A command that starts inside network namespace `ns` (network only, through nsenter: unlike
/// `ip netns exec` it does not remount /sys, so bpffs stays visible).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", path(ns).display()))
        .arg("--")
        .arg(program);
    command
}

/// Moves the calling thread into `ns` (network namespaces are per thread).
pub fn enter(ns: &str) -> Result<()> {
    let file = File::open(path(ns)).with_context(|| format!("cannot open netns {ns}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("cannot enter netns {ns}"))?;
    Ok(())
}

/// The id of the XDP program attached to `ifname` in `ns`, if any.
pub fn xdp_prog_id(ns: &str, ifname: &str) -> Result<Option<u32>> {
    let out =
        cmd::output(Command::new("ip").args(["-n", ns, "-j", "link", "show", "dev", ifname]))?;
    let json: serde_json::Value = serde_json::from_str(&out).context("ip -j printed no JSON")?;
    Ok(json[0]["xdp"]["prog"]["id"].as_u64().map(|id| id as u32))
}
