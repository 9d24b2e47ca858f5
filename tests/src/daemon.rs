//! A `proxyguard run` child process with its own config, stopped (SIGTERM, then SIGKILL) on drop.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        mpsc::{self, Receiver},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

/// Under TCG in the VM everything is slower; waits are bounds, not timings.
fn patience() -> Duration {
    if crate::in_vm() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    }
}

/// A pin directory of one test's own, so tests never adopt each other's (or a real daemon's)
/// kernel state.
pub fn test_pin_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/pg-test-{}-{n}", std::process::id()))
}

/// `config` with a `[kernel]` table naming `pin_dir` in front (unless it has its own).
pub fn with_pin_dir(config: &str, pin_dir: &std::path::Path) -> String {
    if config.contains("[kernel]") {
        return config.to_owned();
    }
    format!("[kernel]\npin_dir = \"{}\"\n\n{config}", pin_dir.display())
}

/// `config` with a `[control]` table naming `socket` in front (unless it has its own).
pub fn with_control_socket(config: &str, socket: &std::path::Path) -> String {
    if config.contains("[control]") {
        return config.to_owned();
    }
    format!("[control]\nsocket = \"{}\"\n\n{config}", socket.display())
}

/// `config` with `[log] format = "json"` (unless it has its own `[log]`): the harness reads the
/// daemon's stdout as JSON records, which the default text format does not print.
pub fn with_json_log(config: &str) -> String {
    if config.contains("[log]") {
        return config.to_owned();
    }
    format!("{config}\n[log]\nformat = \"json\"\n")
}

/// A config without a `[proxy]` section gets one on free loopback ports, so tests that are not
/// about the L7 proxy never collide on its default ports (8080, 9464).
fn free_proxy_ports(config: &str) -> String {
    if config.contains("[proxy]") {
        config.to_owned()
    } else {
        format!("{config}\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n")
    }
}

pub struct Daemon {
    child: Child,
    /// Removed on drop unless [`Daemon::keep_pins`] was called.
    pub pin_dir: PathBuf,
    remove_pins: bool,
    events: Receiver<Value>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The `ready` record: attached programs and kernel features.
    pub ready: Value,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Writes `config` and starts `proxyguard run` on it, waiting for its `ready` line.
    pub fn start(config: &str) -> Daemon {
        Self::start_with_args(config, &[])
    }

    pub fn start_with_args(config: &str, args: &[&str]) -> Daemon {
        Self::start_in(config, args, None)
    }

    /// Also sets `env` for the daemon (`RUST_LOG` among them overrides the default `info`).
    pub fn start_with_env(config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::launch(config, args, None, test_pin_dir(), env)
    }

    /// Starts the daemon inside network namespace `netns` (when given).
    pub fn start_in(config: &str, args: &[&str], netns: Option<&crate::netns::NetNs>) -> Daemon {
        Self::launch(config, args, netns, test_pin_dir(), &[])
    }

    /// Starts on an existing pin directory (a restart that adopts pinned state).
    pub fn start_full(
        config: &str,
        args: &[&str],
        netns: Option<&crate::netns::NetNs>,
        pin_dir: PathBuf,
    ) -> Daemon {
        Self::launch(config, args, netns, pin_dir, &[])
    }

    fn launch(
        config: &str,
        args: &[&str],
        netns: Option<&crate::netns::NetNs>,
        pin_dir: PathBuf,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("proxyguard.toml");
        let socket = dir.path().join("control.sock");
        let text = with_control_socket(
            &with_pin_dir(&with_json_log(&free_proxy_ports(config)), &pin_dir),
            &socket,
        );
        std::fs::write(&config_path, text).expect("write config");
        let mut command = Command::new(crate::proxyguard_bin());
        if let Some(netns) = netns {
            netns.apply_to(&mut command);
        }
        let mut child = command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start proxyguard");
        // Through eprintln!, so libtest shows the daemon's log only for a failing test.
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[proxyguard] {line}");
                kept.lock().expect("log lock").push(line);
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) => {
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                    Err(_) => panic!("proxyguard printed a non-JSON line on stdout: {line}"),
                }
            }
        });
        let mut daemon = Daemon {
            child,
            pin_dir,
            remove_pins: true,
            events,
            dir,
            config_path,
            ready: Value::Null,
            log,
        };
        daemon.ready = daemon
            .wait_for(|e| e["kind"] == "ready")
            .unwrap_or_else(|| panic!("proxyguard did not become ready within {:?}", patience()));
        daemon
    }

    /// The next audit record matching `pred`, skipping others, within the patience bound.
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + patience();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if pred(&event) => return Some(event),
                Ok(_) => continue,
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("proxyguard exited early: {status}");
                    }
                    return None;
                }
            }
        }
    }

    /// Every record that arrives within `window` (for asserting that nothing else happened).
    pub fn drain(&mut self, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(event) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(event);
        }
        out
    }

    /// The daemon's process id (for reading its /proc entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line the daemon wrote to stderr (its diagnostic log) so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal proxyguard");
    }

    /// Rewrites the config, sends SIGHUP, and returns the `reloaded` or `reload_failed` record.
    pub fn reload_with(&mut self, config: &str) -> Value {
        let socket = self.dir.path().join("control.sock");
        let text = with_control_socket(
            &with_pin_dir(&with_json_log(&free_proxy_ports(config)), &self.pin_dir),
            &socket,
        );
        std::fs::write(&self.config_path, text).expect("rewrite config");
        self.signal(nix::sys::signal::Signal::SIGHUP);
        self.wait_for(|e| e["kind"] == "reloaded" || e["kind"] == "reload_failed")
            .expect("no reload outcome")
    }

    /// Stops the daemon with SIGTERM and returns its `stopping` record.
    pub fn stop(mut self) -> Value {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_for(|e| e["kind"] == "stopping")
            .expect("no stopping record")
    }

    /// Leaves the pinned state in place when this daemon is dropped (the caller cleans it up).
    pub fn keep_pins(&mut self) {
        self.remove_pins = false;
    }

    /// SIGKILL, as a crash would: nothing is cleaned up by the daemon.
    pub fn kill_hard(mut self) {
        self.keep_pins();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes a pin directory the way `run --detach-kernel` does: links first (which detaches the
/// programs), then staged pins and maps, then the manifest.
pub fn remove_pins(pin_dir: &std::path::Path) {
    for sub in ["links", "staging", "maps"] {
        if let Ok(entries) = std::fs::read_dir(pin_dir.join(sub)) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(pin_dir.join(sub));
    }
    let _ = std::fs::remove_file(pin_dir.join("manifest"));
    let _ = std::fs::remove_dir(pin_dir);
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
        if self.remove_pins {
            remove_pins(&self.pin_dir);
        }
    }
}

impl Daemon {
    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
