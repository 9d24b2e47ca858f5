//! What the daemon prints for one kernel event, as a newcomer (a pipe, a file) and journald see
//! it: exactly one line, readable by default and JSON when asked, never an escape byte off a
//! terminal, and under journald a syslog priority instead of a timestamp.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use nix::{errno::Errno, sys::signal::Signal, unistd::Pid};
use proxyguard_tests::{
    daemon::{remove_pins, test_pin_dir, with_control_socket, with_pin_dir},
    guarded::eventually,
    in_vm, net, otlp, proxyguard_bin, require_root, Daemon,
};

fn patience() -> Duration {
    Duration::from_secs(if in_vm() { 120 } else { 30 })
}

/// A bind rule on `port` (loopback only) and nothing else the test does not need.
fn rule(port: u16) -> String {
    format!(
        "[bind]\nmode = \"enforce\"\n\n[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\n\n\
         [egress]\nenabled = false\n\n[watch]\nenabled = false\n\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n"
    )
}

/// `proxyguard run` on `config` with the given stdout and stderr, in the environment a user's
/// shell would give it: no `RUST_LOG`, no `NO_COLOR`, no journal. Stopped and its pins removed
/// on drop.
struct Run {
    child: Child,
    pin_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    fn start(config: &str, stdout: Stdio, stderr: Stdio, env: &[(&str, String)]) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let pin_dir = test_pin_dir();
        let path = dir.path().join("proxyguard.toml");
        let text = with_control_socket(
            &with_pin_dir(config, &pin_dir),
            &dir.path().join("control.sock"),
        );
        std::fs::write(&path, text).unwrap();
        let child = Command::new(proxyguard_bin())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("start proxyguard");
        Run {
            child,
            pin_dir,
            _dir: dir,
        }
    }

    /// SIGTERM, and waits for the exit: every line it printed is then written.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        remove_pins(&self.pin_dir);
    }
}

/// Reads `stream` line by line (bytes kept as they are) on a thread of its own.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Lines from `rx` until one satisfies `pred` (returned with everything before it), or a timeout.
fn until(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> (Vec<String>, bool) {
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(patience()) {
        let found = pred(&line);
        seen.push(line);
        if found {
            return (seen, true);
        }
    }
    (seen, false)
}

/// RFC 3339 in UTC with milliseconds, as the records carry it: `2026-12-01T08:00:00.000Z`.
fn is_timestamp(word: &str) -> bool {
    let bytes = word.as_bytes();
    bytes.len() == 24
        && bytes[10] == b'T'
        && word.ends_with('Z')
        && bytes[..4].iter().all(u8::is_ascii_digit)
}

fn refuse_one_bind(port: u16) {
    assert_eq!(
        net::try_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(Errno::EPERM)
    );
}

fn is_about_the_denial(line: &str) -> bool {
    line.contains("bind_denied") || line.contains("bind denied") || line.contains("bind rule")
}

#[test]
fn one_bind_denial_is_one_plain_line_on_a_pipe() {
    require_root();
    let port = net::free_port();
    let mut run = Run::start(&rule(port), Stdio::piped(), Stdio::piped(), &[]);
    let stdout = lines_of(run.child.stdout.take().unwrap());
    let stderr = lines_of(run.child.stderr.take().unwrap());

    let (mut out, ready) = until(&stdout, |l| l.split(' ').nth(1) == Some("ready"));
    assert!(ready, "no ready line on stdout: {out:#?}");
    refuse_one_bind(port);
    let (seen, denied) = until(&stdout, |l| l.contains("bind_denied"));
    out.extend(seen);
    assert!(denied, "no bind_denied line on stdout: {out:#?}");
    run.stop();
    out.extend(stdout.iter());
    let err: Vec<String> = stderr.iter().collect();

    let about: Vec<&String> = out
        .iter()
        .chain(&err)
        .filter(|l| is_about_the_denial(l))
        .collect();
    assert_eq!(about.len(), 1, "one line for one denial: {about:#?}");
    let line = about[0];
    assert!(out.contains(line), "the line is on stdout: {line}");
    let words: Vec<&str> = line.split(' ').collect();
    assert!(is_timestamp(words[0]), "it starts with its time: {line}");
    assert_eq!(words[1], "bind_denied", "{line}");
    for field in [
        "severity=high".to_owned(),
        format!("port={port}"),
        format!("pid={}", std::process::id()),
        "addr=0.0.0.0".to_owned(),
    ] {
        assert!(words.contains(&field.as_str()), "{field} in {line}");
    }
    // Text, not JSON, and not a colour code anywhere: neither stream is a terminal.
    assert!(out.iter().all(|l| !l.starts_with('{')), "{out:#?}");
    for l in out.iter().chain(&err) {
        assert!(!l.contains('\u{1b}'), "an escape byte: {l:?}");
    }
    assert!(!err.is_empty(), "the diagnostic log is on stderr");
}

#[test]
fn with_json_format_the_denial_is_one_json_record_and_nothing_on_stderr() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&rule(port));
    refuse_one_bind(port);
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied record");
    assert_eq!(event["port"], port);
    // Stopped, so everything it logged about the denial is in.
    daemon.signal(Signal::SIGTERM);
    let stopping = daemon
        .wait_for(|e| e["kind"] == "stopping")
        .expect("a stopping record");
    assert_eq!(stopping["counters"]["bind"]["denied"], 1, "{stopping}");
    let log = daemon.log_lines();
    let about: Vec<&String> = log.iter().filter(|l| is_about_the_denial(l)).collect();
    assert!(about.is_empty(), "logged a second time: {about:#?}");
}

/// `[export]`: the kernel's event reaches an OTLP receiver too, as a log record with the
/// event's fields as attributes and its severity.
#[test]
fn the_denial_is_exported_as_an_otlp_log_record() {
    require_root();
    let port = net::free_port();
    let received = otlp::Received::default();
    let receiver = otlp::receiver(received.clone());
    let config = format!(
        "{}\n[export]\notlp_endpoint = \"http://127.0.0.1:{receiver}/v1/logs\"\nbatch_size = 1\n",
        rule(port)
    );
    let mut daemon = Daemon::start(&config);
    refuse_one_bind(port);
    daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied record on stdout");
    let denial =
        |all: &[otlp::LogRecord]| all.iter().find(|r| r.event_name == "bind_denied").cloned();
    let records = otlp::records_once(&received, |all| denial(all).is_some());
    let record = denial(&records).unwrap_or_else(|| panic!("not exported: {records:#?}"));
    assert_eq!(
        otlp::attribute(&record.attributes, "port"),
        Some(&otlp::Any::IntValue(i64::from(port)))
    );
    assert_eq!(
        otlp::attribute(&record.attributes, "pid"),
        Some(&otlp::Any::IntValue(i64::from(std::process::id())))
    );
    assert_eq!(
        otlp::text(otlp::attribute(&record.attributes, "severity")),
        Some("high")
    );
    assert_eq!(record.severity_text, "WARN");
}

/// stdout and stderr on one file whose device and inode `JOURNAL_STREAM` names, as systemd
/// connects a service to journald: every line starts with its priority and none with a time.
#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    require_root();
    let port = net::free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut run = Run::start(
        &rule(port),
        Stdio::from(file.try_clone().unwrap()),
        Stdio::from(file),
        &[("JOURNAL_STREAM", stream)],
    );
    let has = |path: &Path, word: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(word))
    };
    assert!(eventually(patience(), || has(&path, ">ready ")));
    refuse_one_bind(port);
    assert!(
        eventually(patience(), || has(&path, "bind_denied")),
        "{}",
        std::fs::read_to_string(&path).unwrap()
    );
    run.stop();

    let text = std::fs::read_to_string(&path).unwrap();
    let denial: Vec<&str> = text.lines().filter(|l| is_about_the_denial(l)).collect();
    assert_eq!(denial.len(), 1, "{text}");
    assert!(
        denial[0].starts_with("<4>bind_denied severity=high "),
        "a warning for journald, with no timestamp: {}",
        denial[0]
    );
    for line in text.lines() {
        let rest = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .filter(|(n, _)| matches!(*n, "3" | "4" | "5" | "6" | "7"))
            .map(|(_, rest)| rest);
        let rest = rest.unwrap_or_else(|| panic!("no priority prefix: {line:?}"));
        let first = rest.split_whitespace().next().unwrap_or_default();
        assert!(
            !is_timestamp(first) && !first.starts_with(|c: char| c.is_ascii_digit()),
            "a timestamp of its own: {line:?}"
        );
        assert!(!line.contains('\u{1b}'), "an escape byte: {line:?}");
    }
}
