//! The provider gateway's added latency (issue 13). wrk runs against a local HTTPS provider
//! (nginx with TLS, from a CA made here with openssl, which checks the key) in two ways: directly,
//! and through proxyguard's gateway (plain HTTP in, verified TLS out, the caller's credential
//! swapped for the key file's). Both use keep-alive connections, and the gateway's pool reuses its
//! TLS connections. The figure is the latency the gateway adds at half of its own peak rate:
//! p50 and p99 (target ≤ 0.5 ms and ≤ 1 ms). As with the rest of the bench, ratios and
//! differences matter; the machine is shared.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{free_port, lua_script, peers, wrk, KEY};
use crate::{build, cmd};

/// A CA and a certificate for 127.0.0.1 signed by it (P-256), in `dir`.
fn certificates(dir: &Path) -> Result<()> {
    let script = format!(
        "set -e; cd {dir}
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=proxyguard bench CA' 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout server.key -out server.csr -subj '/CN=127.0.0.1' 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null",
        dir = dir.display()
    );
    cmd::run(Command::new("sh").args(["-c", &script]))
}

/// nginx serving the fixed chat completion over TLS on `port`, 401 for any other key.
fn provider(dir: &Path, port: u16) -> Result<peers::Process> {
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
    client_body_temp_path {dir}/body;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} ssl reuseport backlog=4096;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        location / {{
            if ($http_authorization != "Bearer {KEY}") {{ return 401; }}
            default_type application/json;
            return 200 '{response}';
        }}
    }}
}}
"#,
        dir = dir.display(),
        response = peers::RESPONSE,
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
    let process = peers::Process::new(child);
    peers::wait_for(port, "nginx (HTTPS provider)")?;
    Ok(process)
}

/// `proxyguard run --no-kernel` with the front off and the gateway routing `bench` to the
/// provider; one worker thread, as nginx has one worker process.
fn gateway(binary: &Path, dir: &Path, provider_port: u16, port: u16) -> Result<peers::Process> {
    let key_file = dir.join("bench.key");
    fs::write(&key_file, format!("{KEY}\n"))?;
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))?;
    let config = format!(
        r#"[control]
socket = "{socket}"
[log]
format = "json"
[bind]
enabled = false
[proxy]
enabled = false
worker_threads = 1
[providers]
listen = "127.0.0.1:{port}"
max_connections = 4096
[[providers.routes]]
name = "bench"
base_url = "https://127.0.0.1:{provider_port}"
key_file = "{key}"
ca_file = "{ca}"
"#,
        socket = dir.join("control.sock").display(),
        key = key_file.display(),
        ca = dir.join("ca.pem").display(),
    );
    let path = dir.join("proxyguard.toml");
    fs::write(&path, config)?;
    let line = format!(
        "ulimit -n $(ulimit -Hn) && exec {} run --no-kernel --config {}",
        binary.display(),
        path.display()
    );
    // One audit line per request goes to a file, as it would to journald.
    let child = Command::new("sh")
        .args(["-c", &line])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("audit.jsonl"))?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start proxyguard")?;
    let process = peers::Process::new(child);
    peers::wait_for(port, "proxyguard's provider gateway")?;
    Ok(process)
}

pub fn run(quick: bool) -> Result<Value> {
    super::install_peers()?;
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    let binary = build::target_dir().join("release/proxyguard");
    let work = build::target_dir().join("bench/gateway");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    certificates(&work)?;
    let (provider_port, gateway_port) = (free_port()?, free_port()?);
    let _provider = provider(&work, provider_port)?;
    let _gateway = gateway(&binary, &work, provider_port, gateway_port)?;

    let script = work.join("chat.lua");
    fs::write(&script, lua_script())?;
    let direct = format!("https://127.0.0.1:{provider_port}/v1/chat/completions");
    let through = format!("http://127.0.0.1:{gateway_port}/bench/v1/chat/completions");
    let duration = Duration::from_secs(if quick { 3 } else { 10 });
    let connections = 64;
    for url in [&direct, &through] {
        let warm = wrk::run(url, &script, connections, Duration::from_secs(1))?;
        anyhow::ensure!(
            warm.non_2xx == 0,
            "{url} answered {} requests with a non-2xx status (see {})",
            warm.non_2xx,
            work.display()
        );
    }
    let peak = wrk::run(&through, &script, connections, duration)?;
    let direct_peak = wrk::run(&direct, &script, connections, duration)?;

    // Half of the gateway's peak, paced as the L7 bench paces (wrk's `delay()`).
    let half_rate = peak.rps / 2.0;
    let delay_ms = (f64::from(connections) * 1000.0 / half_rate).max(1.0);
    let paced = work.join("paced.lua");
    fs::write(
        &paced,
        format!(
            "{}function delay()\n  return {delay_ms:.0}\nend\n",
            lua_script()
        ),
    )?;
    let direct_half = wrk::run(&direct, &paced, connections, duration)?;
    let gateway_half = wrk::run(&through, &paced, connections, duration)?;
    let added_p50 = gateway_half.p50 - direct_half.p50;
    let added_p99 = gateway_half.p99 - direct_half.p99;
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>8}",
        "target", "req/s", "p50 ms", "p99 ms", "non-2xx"
    );
    for (name, run) in [
        ("provider direct", direct_peak),
        ("through gateway", peak),
        ("direct, half peak", direct_half),
        ("gateway, half peak", gateway_half),
    ] {
        println!(
            "{name:<22} {:>10.0} {:>9.3} {:>9.3} {:>8}",
            run.rps, run.p50, run.p99, run.non_2xx
        );
    }
    println!(
        "gateway at half of its peak ({half_rate:.0} req/s): added p50 {added_p50:.3} ms (target <= 0.5), added p99 {added_p99:.3} ms (target <= 1)"
    );
    Ok(json!({
        "quick": quick,
        "seconds_per_target": duration.as_secs(),
        "connections": connections,
        "direct_peak": direct_peak.to_json(),
        "gateway_peak": peak.to_json(),
        "half_peak": {
            "target_rps": half_rate,
            "direct": direct_half.to_json(),
            "gateway": gateway_half.to_json(),
            "added_p50_ms": added_p50,
            "added_p99_ms": added_p99,
        },
    }))
}
