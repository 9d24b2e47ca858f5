//! The benchmark's processes (nginx's two are in `nginx.rs`) and proxyguard (release build), each
//! stopped on drop; and what is read of them from /proc: CPU time (a process and its children,
//! for nginx's master and workers) and peak RSS.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The fixed JSON the upstream answers with: a small chat completion.
pub const RESPONSE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

pub struct Process {
    child: Child,
    /// SIGTERM first (nginx's master then stops its workers), SIGKILL after 5 s.
    graceful: bool,
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.graceful {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn new(child: Child) -> Process {
        Process {
            child,
            graceful: false,
        }
    }

    pub fn graceful(child: Child) -> Process {
        Process {
            child,
            graceful: true,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Waits until `port` accepts connections.
pub fn wait_for(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on 127.0.0.1:{port}")
}

/// The upstream's own key (LiteLLM's master key), which each guard sets on the way up.
pub const UPSTREAM_KEY: &str = "sk-bench-upstream-0123456789abcdef";

/// `proxyguard run --no-kernel` on its defaults (worker threads included) with every check on:
/// the limits that would trigger under the bench's load are sized not to, content rules are
/// set, and the upstream's key comes from a key file.
pub fn proxyguard(
    binary: &Path,
    dir: &Path,
    upstream_port: u16,
    key_hash: &str,
    extra: &str,
) -> Result<(Process, u16)> {
    let key_file = dir.join("upstream.key");
    fs::write(&key_file, format!("{UPSTREAM_KEY}\n"))?;
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))?;
    // Its own control socket: the soak runs a second proxyguard beside the first, and neither
    // may take the default path from a real daemon on this host.
    let config = format!(
        r#"[control]
socket = "{socket}"
# The audit stream as a log collector takes it: the benchmark reads `ready` from it.
[log]
format = "json"
[bind]
enabled = false
[proxy]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:{upstream_port}"
upstream_key_file = "{key_file}"
[proxy.limits]
max_connections = 4096
# wrk's 1,000 connections all come from 127.0.0.1.
max_connections_per_source = 4096
max_pending_heads_per_source = 4096
max_concurrent_per_key = 4096
[proxy.rate]
per_key_rpm = 1000000000
per_key_burst = 1000000
per_ip_rpm = 1000000000
per_ip_burst = 1000000
[proxy.content]
max_messages = 100
max_message_chars = 100000
deny_patterns = ["(?i)ignore (all )?previous instructions"]
{extra}
[[proxy.keys]]
name = "bench"
sha256 = "{key_hash}"
"#,
        socket = dir.join("control.sock").display(),
        key_file = key_file.display(),
    );
    let path = dir.join("proxyguard.toml");
    fs::write(&path, config)?;
    let line = format!(
        "ulimit -n $(ulimit -Hn) && exec {} run --no-kernel --config {}",
        binary.display(),
        path.display()
    );
    // The audit stream (one line per request) goes to a file, as it would to journald: a pipe
    // read by this process would put a reader on the benchmark's two cores as well.
    let audit = dir.join("audit.jsonl");
    let child = Command::new("sh")
        .args(["-c", &line])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&audit)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start proxyguard")?;
    let process = Process::new(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let text = fs::read_to_string(&audit)?;
        if let Some(line) = text.lines().find(|line| line.contains("\"ready\"")) {
            break line.to_owned();
        }
        if Instant::now() > deadline {
            bail!(
                "proxyguard was not ready within 20 s; see {}",
                audit.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let value: serde_json::Value = serde_json::from_str(&ready)?;
    let listen = value["proxy"]["listen"]
        .as_str()
        .context("no listen address in `ready`")?;
    let port = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("bad listen address")?;
    Ok((process, port))
}

/// `pid` and its children (nginx's master and workers).
pub fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let parent = fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|stat| {
                let rest = stat.rsplit_once(')')?.1.to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// CPU seconds used so far by `pids` together (a process gone since is left out).
pub fn cpu_seconds_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid).ok()).sum()
}

/// CPU seconds (user and system, all threads) that `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |at: usize| -> Result<f64> {
        fields
            .get(at)
            .and_then(|n| n.parse::<f64>().ok())
            .context("short /proc/PID/stat")
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in USER_HZ ticks, which
    // the kernel ABI fixes at 100 per second on x86 and arm64.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Peak resident memory of `pid` (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024.0)
}
