//! The two defences under comparison, with the same per-source limit: proxyguard's XDP SYN
//! limit (the daemon in the guard namespace) and iptables `hashlimit` on SYNs. Each is removed on
//! drop, even after an error.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;

use super::netns;
use crate::cmd;

/// The per-source limit both defences enforce: proxyguard's defaults.
pub const RATE_PER_SEC: u32 = 20;
pub const BURST: u32 = 40;

/// `proxyguard run` inside the guard namespace. Dropping it stops the daemon and then runs
/// `run --detach-kernel`, because the pinned XDP link deliberately outlives the daemon.
pub struct Daemon {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    events: Receiver<Value>,
    /// The `ready` record.
    pub ready: Value,
}

impl Daemon {
    pub fn start(binary: &Path, port: u16) -> Result<Daemon> {
        let pid = std::process::id();
        let pin_dir = format!("/sys/fs/bpf/pg-bench-{pid}");
        let config = std::env::temp_dir().join(format!("pg-bench-{pid}.toml"));
        // A control socket of its own: the default path may belong to a real daemon on this host.
        let socket = std::env::temp_dir().join(format!("pg-bench-{pid}/control.sock"));
        std::fs::write(
            &config,
            format!(
                "[kernel]\npin_dir = \"{pin_dir}\"\n\n[control]\nsocket = \"{}\"\n\n[bind]\nenabled = false\n\n[egress]\nenabled = false\n\n\
                 [xdp]\nmode = \"enforce\"\ninterfaces = [\"{}\"]\nports = [{port}]\n\
                 rate_per_sec = {RATE_PER_SEC}\nburst = {BURST}\n\n[log]\nformat = \"json\"\nlevel = \"error\"\n",
                socket.display(),
                netns::GUARD_IF
            ),
        )?;
        let mut daemon = Daemon {
            child: None,
            binary: binary.to_owned(),
            config,
            events: mpsc::channel().1,
            ready: Value::Null,
        };
        let mut child = netns::command_in(netns::GUARD_NS, binary)
            .arg("run")
            .arg("--config")
            .arg(&daemon.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start proxyguard")?;
        let stdout = child.stdout.take().expect("piped");
        daemon.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if tx.send(value).is_err() {
                        break;
                    }
                }
            }
        });
        daemon.events = rx;
        daemon.ready = daemon
            .wait_for("ready")
            .context("proxyguard did not report ready")?;
        Ok(daemon)
    }

    /// How the XDP program is attached (`xdp (native)` or `xdp (generic)`).
    pub fn hook(&self) -> String {
        // The XDP program's hook: the daemon attaches others too (the upstream guard's).
        self.ready["programs"]
            .as_array()
            .and_then(|programs| {
                programs
                    .iter()
                    .filter(|p| p["name"] == guard_common::xdp::PROG_XDP_SYN_LIMIT)
                    .find_map(|p| p["hook"].as_str())
            })
            .unwrap_or("unknown")
            .to_owned()
    }

    fn wait_for(&mut self, kind: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if event["kind"] == kind => return Ok(event),
                Ok(_) => continue,
                Err(_) => bail!("no `{kind}` record from proxyguard within 30 s"),
            }
        }
    }

    /// SIGTERM, then the XDP counters from the `stopping` record.
    pub fn stop(&mut self) -> Result<Value> {
        let Some(child) = &self.child else {
            bail!("proxyguard is not running");
        };
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)?;
        let stopping = self.wait_for("stopping")?;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        Ok(stopping["counters"]["xdp"].clone())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = netns::command_in(netns::GUARD_NS, &self.binary)
            .args(["run", "--detach-kernel", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// iptables `hashlimit` dropping SYNs to the port above the per-source limit, in the guard
/// namespace only (the rule dies with the namespace at the latest). It sits in raw/PREROUTING,
/// the earliest netfilter hook and before conntrack: the fair place to compare with XDP, which
/// runs earlier still.
pub struct Hashlimit {
    rule: Vec<String>,
}

impl Hashlimit {
    pub fn add(port: u16) -> Result<Hashlimit> {
        let rule: Vec<String> = [
            "PREROUTING",
            "-p",
            "tcp",
            "--syn",
            "--dport",
            &port.to_string(),
            "-m",
            "hashlimit",
            "--hashlimit-mode",
            "srcip",
            "--hashlimit-above",
            &format!("{RATE_PER_SEC}/sec"),
            "--hashlimit-burst",
            &BURST.to_string(),
            "--hashlimit-name",
            "pgbench",
            "-j",
            "DROP",
        ]
        .map(String::from)
        .to_vec();
        cmd::run(
            netns::command_in(netns::GUARD_NS, "iptables")
                .args(["-t", "raw", "-A"])
                .args(&rule),
        )?;
        Ok(Hashlimit { rule })
    }

    /// Packets the rule dropped so far.
    pub fn dropped(&self) -> Result<u64> {
        let out = cmd::output(netns::command_in(netns::GUARD_NS, "iptables").args([
            "-t",
            "raw",
            "-L",
            "PREROUTING",
            "-v",
            "-x",
            "-n",
        ]))?;
        out.lines()
            .find(|line| line.contains("DROP") && line.contains("limit: above"))
            .and_then(|line| line.split_whitespace().next()?.parse().ok())
            .context("the hashlimit rule is not listed")
    }
}

impl Drop for Hashlimit {
    fn drop(&mut self) {
        let _ = netns::command_in(netns::GUARD_NS, "iptables")
            .arg("-D")
            .args(&self.rule)
            .status();
    }
}
