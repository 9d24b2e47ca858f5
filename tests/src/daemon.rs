//! A `proxyguard run` child process with its own config, stopped (SIGTERM, then SIGKILL) on drop.
//!
//! Two reader threads follow the daemon's stdout (JSON audit records) and stderr (its log). A
//! reader that fails (a line that is not JSON, a read error, a panic) records why in
//! [`ReaderFault`]; every accessor and `Drop` then fail the owning test with that line, since a
//! panic inside the thread alone would only stop the events and fail nothing.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        mpsc::{self, Receiver},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
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

/// `config` with a `[kernel]` table naming `pin_dir` in front (unless it has its own), and the
/// upstream guard off unless it has an `[upstream_guard]` table (see [`upstream_guard_off`]).
pub fn with_pin_dir(config: &str, pin_dir: &std::path::Path) -> String {
    let config = upstream_guard_off(config);
    if config.contains("[kernel]") {
        return config;
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

/// A config without an `[upstream_guard]` table gets the rule turned off: it refuses every
/// other process's connects to the upstream's port (127.0.0.1:4000 by default) host-wide, which
/// only the tests about it should do.
fn upstream_guard_off(config: &str) -> String {
    if config.contains("[upstream_guard]") {
        config.to_owned()
    } else {
        format!("{config}\n[upstream_guard]\nenabled = false\n")
    }
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

/// The first failure of either reader thread, shared with the test that owns the daemon.
#[derive(Clone, Default)]
struct ReaderFault(Arc<Mutex<Option<String>>>);

impl ReaderFault {
    /// Keeps the first failure: later ones are usually consequences of it.
    fn record(&self, what: String) {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert(what);
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs `body` on its own thread; a panic in it is recorded as a failure, not lost.
    fn spawn(
        &self,
        reader: &'static str,
        body: impl FnOnce(&ReaderFault) + Send + 'static,
    ) -> JoinHandle<()> {
        let fault = self.clone();
        std::thread::spawn(move || {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&fault)));
            if let Err(panic) = caught {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                fault.record(format!("the {reader} reader panicked: {message}"));
            }
        })
    }
}

/// Reads `source` line by line into `each`; a read error (e.g. a line that is not UTF-8) is a
/// failure of the reader, not a silent end of the stream.
fn read_lines(
    source: impl std::io::Read,
    reader: &str,
    fault: &ReaderFault,
    mut each: impl FnMut(String) -> Result<bool, String>,
) {
    for line in BufReader::new(source).lines() {
        match line {
            Ok(line) => match each(line) {
                Ok(true) => {}
                Ok(false) => return,
                Err(why) => return fault.record(why),
            },
            Err(err) => return fault.record(format!("reading the daemon's {reader}: {err}")),
        }
    }
}

/// Holds the stdout reader while closed, so the daemon's stdout becomes a pipe nobody reads.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) = closed;
        self.0 .1.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.0 .0.lock().unwrap_or_else(|p| p.into_inner());
        while *closed {
            closed = self.0 .1.wait(closed).unwrap_or_else(|p| p.into_inner());
        }
    }
}

pub struct Daemon {
    child: Child,
    stdout_gate: Gate,
    /// Removed on drop unless [`Daemon::keep_pins`] was called.
    pub pin_dir: PathBuf,
    remove_pins: bool,
    events: Receiver<Value>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The `ready` record: attached programs and kernel features.
    pub ready: Value,
    log: Arc<Mutex<Vec<String>>>,
    fault: ReaderFault,
    readers: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// `proxyguard ARGS --json --config <this daemon's>`, which must succeed, parsed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let output = Command::new(crate::proxyguard_bin())
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run proxyguard");
        assert!(
            output.status.success(),
            "proxyguard {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("JSON output")
    }

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
        let fault = ReaderFault::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let stderr_reader = fault.spawn("stderr", move |fault| {
            read_lines(stderr, "stderr", fault, |line| {
                eprintln!("[proxyguard] {line}");
                kept.lock().expect("log lock").push(line);
                Ok(true)
            })
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::channel();
        let stdout_gate = Gate::default();
        let gate = stdout_gate.clone();
        let stdout_reader = fault.spawn("stdout", move |fault| {
            read_lines(stdout, "stdout", fault, |line| {
                let value = serde_json::from_str::<Value>(&line).map_err(|err| {
                    format!("proxyguard printed a non-JSON line on stdout ({err}): {line}")
                })?;
                // The receiver is gone once the test dropped the daemon: stop reading.
                let more = tx.send(value).is_ok();
                gate.pass();
                Ok(more)
            })
        });
        let mut daemon = Daemon {
            child,
            stdout_gate,
            pin_dir,
            remove_pins: true,
            events,
            dir,
            config_path,
            ready: Value::Null,
            log,
            fault,
            readers: vec![stderr_reader, stdout_reader],
        };
        daemon.ready = daemon
            .wait_for(|e| e["kind"] == "ready")
            .unwrap_or_else(|| panic!("proxyguard did not become ready within {:?}", patience()));
        daemon
    }

    /// Stops reading the daemon's stdout after the line being read now: the pipe fills and the
    /// daemon's writes to it block, as with a stalled journald. [`Daemon::resume_stdout`] undoes it.
    pub fn pause_stdout(&self) {
        self.stdout_gate.set_closed(true);
    }

    pub fn resume_stdout(&self) {
        self.stdout_gate.set_closed(false);
    }

    /// The next audit record matching `pred`, skipping others, within the patience bound.
    pub fn wait_for(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Option<Value> {
        self.check_readers();
        let deadline = Instant::now() + patience();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if pred(&event) => return Some(event),
                Ok(_) => continue,
                Err(_) => {
                    // The stdout reader may have stopped on a bad line: that, not a timeout,
                    // is the failure to report.
                    self.check_readers();
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!("proxyguard exited early: {status}");
                    }
                    return None;
                }
            }
        }
    }

    /// Every record before the first one matching `marker`, and that one (last). This is how a
    /// test shows that something did NOT happen: it causes a marker after the thing that must not
    /// appear (a record from the same ordered source), and once the marker arrives everything
    /// before it has been seen. Waiting a fixed time instead proves nothing on a slow machine.
    pub fn records_until(&mut self, marker: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        let found = self.wait_for(|e| {
            if marker(e) {
                return true;
            }
            seen.push(e.clone());
            false
        });
        let Some(found) = found else {
            panic!(
                "the marker record never came within {:?}; before it: {seen:?}",
                patience()
            );
        };
        seen.push(found);
        seen
    }

    /// The daemon's process id (for reading its /proc entries).
    pub fn pid(&self) -> u32 {
        self.check_readers();
        self.child.id()
    }

    /// Every line the daemon wrote to stderr (its diagnostic log) so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.check_readers();
        self.log.lock().expect("log lock").clone()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        self.check_readers();
        self.send_signal(signal);
    }

    fn send_signal(&self, signal: nix::sys::signal::Signal) {
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
    pub fn stop(self) -> Value {
        self.stop_records().pop().expect("the stopping record")
    }

    /// Stops the daemon with SIGTERM and returns every record it printed from here on, its
    /// `stopping` record last (the daemon's final word: nothing comes after it).
    pub fn stop_records(mut self) -> Vec<Value> {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.records_until(|e| e["kind"] == "stopping")
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
        // A paused reader would keep the daemon's last writes (and its exit) waiting.
        self.resume_stdout();
        self.terminate();
        if self.remove_pins {
            remove_pins(&self.pin_dir);
        }
        // The daemon is gone, so its pipes reach end of file: let the readers see its last lines
        // (bounded, in case a child of the daemon still holds a pipe open).
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !self.readers.iter().all(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A test that never looked at the events again still fails on a broken reader; one
        // already failing keeps its own message (a second panic would abort the process).
        if !std::thread::panicking() {
            self.check_readers();
        }
    }
}

impl Daemon {
    /// Fails the test if a reader thread failed, with the offending line.
    fn check_readers(&self) {
        if let Some(fault) = self.fault.get() {
            panic!("the test harness lost the daemon's output: {fault}");
        }
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.send_signal(nix::sys::signal::Signal::SIGTERM);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(fault: &ReaderFault, reader: JoinHandle<()>) -> Option<String> {
        reader
            .join()
            .expect("the reader thread itself never unwinds");
        fault.get()
    }

    #[test]
    fn a_non_json_line_is_recorded_with_the_line() {
        let fault = ReaderFault::default();
        let (tx, rx) = mpsc::channel();
        let reader = fault.spawn("stdout", move |fault| {
            read_lines(
                &b"{\"kind\":\"ready\"}\nINFO ready\n{}\n"[..],
                "stdout",
                fault,
                |l| {
                    let value =
                        serde_json::from_str::<Value>(&l).map_err(|_| format!("bad: {l}"))?;
                    Ok(tx.send(value).is_ok())
                },
            )
        });
        assert_eq!(settled(&fault, reader).as_deref(), Some("bad: INFO ready"));
        // The record before the bad line arrived; nothing after it did.
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn a_panic_in_a_reader_is_recorded_not_lost() {
        let fault = ReaderFault::default();
        let reader = fault.spawn("stderr", |_| panic!("boom on line 3"));
        let got = settled(&fault, reader).expect("recorded");
        assert!(
            got.contains("stderr reader panicked: boom on line 3"),
            "{got}"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_read_failure() {
        let fault = ReaderFault::default();
        let reader = fault.spawn("stderr", |fault| {
            read_lines(&b"ok\n\xff\xfe\n"[..], "stderr", fault, |_| Ok(true))
        });
        let got = settled(&fault, reader).expect("recorded");
        assert!(got.starts_with("reading the daemon's stderr:"), "{got}");
    }

    #[test]
    fn the_first_failure_is_kept() {
        let fault = ReaderFault::default();
        fault.record("first".into());
        fault.record("second".into());
        assert_eq!(fault.get().as_deref(), Some("first"));
    }
}
