//! The benchmark's processes: nginx as the fast upstream, nginx as the comparison guard, and
//! proxyguard (release build). Each is stopped on drop.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The fixed JSON the upstream answers with: a small chat completion.
pub const RESPONSE: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

pub struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn new(child: Child) -> Process {
        Process { child }
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

/// nginx serving `RESPONSE` on `upstream_port`, and on `guard_port` a proxy to it with the
/// limits proxyguard applies: a key check by `map`, `client_max_body_size`, and `limit_req`
/// sized not to trigger, plus an access log line per request (proxyguard's audit line).
pub fn nginx(dir: &Path, upstream_port: u16, guard_port: u16, key: &str) -> Result<Process> {
    fs::create_dir_all(dir.join("logs"))?;
    let config = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    map_hash_bucket_size 256;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    map $http_authorization $key_ok {{ default 0; "Bearer {key}" 1; }}
    limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;
    upstream fast {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{upstream_port} reuseport backlog=4096;
        location / {{ default_type application/json; return 200 '{RESPONSE}'; }}
    }}
    server {{
        listen 127.0.0.1:{guard_port} backlog=4096;
        client_max_body_size 2m;
        # One line per request, unbuffered, as proxyguard writes its audit line.
        access_log {dir}/logs/guard-access.log combined;
        location / {{
            if ($key_ok = 0) {{ return 401; }}
            limit_req zone=perip burst=1000000 nodelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_pass http://fast;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    fs::write(&path, config)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    let process = Process { child };
    wait_for(upstream_port, "nginx (upstream)")?;
    wait_for(guard_port, "nginx (guard)")?;
    Ok(process)
}

/// `proxyguard run --no-kernel` with every check on, limits sized not to trigger.
pub fn proxyguard(
    binary: &Path,
    dir: &Path,
    upstream_port: u16,
    key_hash: &str,
    extra: &str,
) -> Result<(Process, u16)> {
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
# One thread, as the comparison nginx has one worker process.
worker_threads = 1
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
        socket = dir.join("control.sock").display()
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
    let process = Process { child };
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

/// Peak resident memory of `pid` (VmHWM), in MiB.
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
