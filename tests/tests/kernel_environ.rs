//! The environ watch, end to end: a guarded shell with a planted secret, and other processes
//! opening its `/proc/<pid>/environ`. Natively (no BPF LSM here) every open is detected and
//! reported once; in the VM the LSM program must also refuse it with EPERM.

use std::{process::Command, time::Duration};

use proxyguard_tests::{
    feature_or_skip,
    guarded::{eventually, GuardedProcess, CANARY},
    in_vm, proxyguard_bin, require_root, Daemon,
};
use serde_json::Value;

fn config(cgroup: &str) -> String {
    format!(
        "[guarded]\ncgroup = \"{cgroup}\"\n\n[bind]\nenabled = false\n\n[egress]\nenabled = false\n\n\
         [watch]\nmode = \"enforce\"\n"
    )
}

/// Waits until the daemon's status lists `pid` as guarded.
fn wait_guarded(daemon: &Daemon, pid: u32) {
    let listed = eventually(patience(), || {
        let out = Command::new(proxyguard_bin())
            .args(["status", "--json", "--config"])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|s| s["guarded_pids"].as_array().cloned())
            .is_some_and(|pids| pids.iter().any(|p| p == pid))
    });
    assert!(listed, "pid {pid} never became guarded");
}

fn patience() -> Duration {
    if in_vm() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

fn lsm_available(daemon: &Daemon) -> (bool, String) {
    let lsm = daemon.ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "bpf-lsm")
        .cloned()
        .unwrap();
    (
        lsm["available"] == true,
        lsm["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

fn is_environ_event(e: &Value) -> bool {
    e["kind"]
        .as_str()
        .is_some_and(|k| k.starts_with("environ_"))
}

#[test]
fn another_process_reading_the_environ_makes_exactly_one_event() {
    require_root();
    let guarded = GuardedProcess::start(
        "environ",
        "while [ ! -e go ]; do sleep 0.1; done; read -r x < /proc/self/environ; exec sleep 60",
    );
    let target = guarded.pid();
    let mut daemon = Daemon::start(&config(&guarded.cgroup.relative));
    let (lsm, detail) = lsm_available(&daemon);
    let hooks: Vec<String> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["hook"].as_str().unwrap().to_owned())
        .collect();
    if lsm {
        assert!(hooks.contains(&"lsm/file_open".to_owned()), "{hooks:?}");
    } else {
        assert!(detail.contains("detected, not denied"), "{detail}");
        // The environ pair; the created-files record adds its own pair on the exits.
        let environ_tracepoints = daemon.ready["programs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["hook"] == "tracepoint"
                    && p["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("environ_"))
            })
            .count();
        assert_eq!(environ_tracepoints, 2, "{hooks:?}");
    }
    wait_guarded(&daemon, target);

    // The process reading its own environ is its own, low-severity kind.
    std::fs::write(guarded.path("go"), "").unwrap();
    let own = daemon
        .wait_for(|e| e["kind"] == "environ_self_read" && e["target"] == target)
        .expect("an environ_self_read event");
    assert_eq!(own["pid"], target, "{own}");
    assert_eq!(own["self"], true, "{own}");

    let cat = Command::new("cat")
        .arg(format!("/proc/{target}/environ"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cat_pid = cat.id();
    let out = cat.wait_with_output().unwrap();
    if feature_or_skip("environ_read_denied", "BPF LSM", lsm, &detail) {
        assert!(!out.status.success(), "the LSM must refuse the read");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    } else {
        assert!(
            out.status.success(),
            "detection only: the read goes through"
        );
    }
    let kind = if lsm {
        "environ_read_denied"
    } else {
        "environ_read"
    };
    let event = daemon
        .wait_for(|e| e["kind"] == kind && e["pid"] == cat_pid)
        .unwrap_or_else(|| panic!("no {kind} event for cat ({cat_pid})"));
    assert_eq!(event["target"], target, "{event}");
    assert_eq!(event["comm"], "cat", "{event}");
    assert_eq!(event["uid"], 0, "{event}");
    assert_eq!(event["severity"], "high", "{event}");
    assert_eq!(event["self"], false, "{event}");
    assert_eq!(event["path"], format!("/proc/{target}/environ"), "{event}");

    // The sentinel: a second reader. Environ events leave the kernel through one ring in order,
    // and the first cat has exited, so any further event of its open would come before this one.
    let (marker_pid, _) = crate::cat(&format!("/proc/{target}/environ"));
    let later = daemon.records_until(|e| is_environ_event(e) && e["pid"] == marker_pid);
    let more: Vec<&Value> = later
        .iter()
        .filter(|e| is_environ_event(e) && e["pid"] == cat_pid)
        .collect();
    assert!(more.is_empty(), "one open, one event: {more:?}");
    for record in later.iter().chain([&event, &own]) {
        assert!(!record.to_string().contains(CANARY), "{record}");
    }
    // The guarded process itself is unaffected.
    let mut guarded = guarded;
    assert!(guarded.alive());
    let counters = daemon.stop()["counters"]["environ"].clone();
    assert!(counters["other_reads"].as_u64().unwrap() >= 1, "{counters}");
    assert!(counters["self_reads"].as_u64().unwrap() >= 1, "{counters}");
}

#[test]
fn a_dirfd_relative_open_is_caught() {
    require_root();
    let guarded = GuardedProcess::start("environ-dirfd", "exec sleep 60");
    let target = guarded.pid();
    let mut daemon = Daemon::start(&config(&guarded.cgroup.relative));
    let (lsm, _) = lsm_available(&daemon);
    wait_guarded(&daemon, target);

    use nix::{fcntl::OFlag, sys::stat::Mode};
    let dir = nix::fcntl::open(
        format!("/proc/{target}").as_str(),
        OFlag::O_DIRECTORY | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .expect("open /proc/<pid>");
    let opened = nix::fcntl::openat(Some(dir), "environ", OFlag::O_RDONLY, Mode::empty());
    match opened {
        Ok(fd) => {
            assert!(!lsm, "the LSM must refuse the dirfd-relative open");
            let _ = nix::unistd::close(fd);
        }
        Err(errno) => assert_eq!(errno, nix::errno::Errno::EPERM),
    }
    let _ = nix::unistd::close(dir);
    let me = std::process::id();
    let event = daemon
        .wait_for(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("environ_read"))
                && e["pid"] == me
        })
        .expect("an event for the dirfd-relative open");
    assert_eq!(event["target"], target, "{event}");
}

#[test]
fn the_daemon_fixes_a_new_temp_file_the_service_made_before_its_next_audit() {
    require_root();
    // The service itself makes the file (so the kernel's created-files record proves it its own);
    // a file someone else puts in its temp dir is not fixed (see the shared-dir test below).
    let guarded = GuardedProcess::start(
        "watch-tmp",
        "while [ ! -e go ]; do sleep 0.1; done; \
         printf 'model_list:\\n  - api_key: sk-x\\n' > litellm-config.yaml; \
         chmod 644 litellm-config.yaml; exec sleep 60",
    );
    // The next full audit is an hour away, far past the test's patience: a fix that comes at all
    // comes from the watch on the temp dir (inotify), not from an audit.
    let config = format!(
        "{}temp_dirs = [\"$TMPDIR\"]\ntemp_files = \"fix\"\naudit_interval_secs = 3600\n",
        config(&guarded.cgroup.relative)
    );
    let mut daemon = Daemon::start(&config);
    // The first full audit names the planted secret (by name only); the temp directories are
    // watched by then.
    let secret = daemon
        .wait_for(|e| e["kind"] == "finding" && e["check"] == "secret_env")
        .expect("a secret_env finding");
    assert_eq!(secret["subject"], "OPENAI_API_KEY", "{secret}");
    assert_eq!(secret["pid"], guarded.pid(), "{secret}");

    use std::os::unix::fs::MetadataExt;
    let file = guarded.path("litellm-config.yaml");
    let started = std::time::Instant::now();
    std::fs::write(guarded.path("go"), "").unwrap();
    let fixed = eventually(patience(), || {
        std::fs::metadata(&file).is_ok_and(|m| m.mode() & 0o777 == 0o600)
    });
    let took = started.elapsed();
    assert!(fixed, "the new 0644 file was not fixed");
    // The time is printed for whoever reads the log, not asserted (no timed asserts).
    eprintln!("new 0644 temp file fixed after {took:?}");
    let event = daemon
        .wait_for(|e| e["kind"] == "temp_file_fixed")
        .expect("a temp_file_fixed event");
    assert_eq!(event["path"], file.display().to_string(), "{event}");
    // Proven the service's: created by it, or (caught while the shell's redirect is still open)
    // held open by it.
    let detail = event["detail"].as_str().unwrap();
    assert!(
        detail.contains("created by pid") || detail.contains("held open for writing by pid"),
        "{event}"
    );

    // The audits are exported as Prometheus metrics on the admin listener.
    let admin = daemon.ready["proxy"]["admin"]
        .as_str()
        .expect("the admin listener")
        .to_owned();
    let mut stream = std::net::TcpStream::connect(&admin).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /metrics HTTP/1.0\r\nhost: localhost\r\n\r\n",
    )
    .unwrap();
    let mut metrics = String::new();
    std::io::Read::read_to_string(&mut stream, &mut metrics).unwrap();
    assert!(
        metrics.contains("proxyguard_audit_findings{check=\"secret_env\"}"),
        "{metrics}"
    );
    // The service writes the file and then loosens it again, so inotify may fix it once or twice.
    let fixed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proxyguard_audit_files_fixed "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no files_fixed gauge: {metrics}"));
    assert!(fixed >= 1, "{metrics}");
    // And so are the kernel programs' counters (environ reads among them).
    assert!(
        metrics.contains("proxyguard_kernel_events{program=\"environ\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("proxyguard_kernel_events{program=\"bind\",counter=\"denied\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains(CANARY));
    // Every record the daemon printed, up to its last (the stopping record), names no secret.
    for record in daemon.stop_records().iter().chain([&secret, &event]) {
        assert!(!record.to_string().contains(CANARY), "{record}");
    }
}

/// Files of the guarded service's owner (root) that it did not make, at depths 1, 2 and 3 of a
/// shared temp dir, a chroot's `etc/passwd` among them.
const UNRELATED: &[&str] = &[
    "other-tool.log",
    "tool/state.json",
    "tool/cache/blob.bin",
    "chroot/etc/passwd",
];

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Whether `e` is a temp-file finding about `name` (a path ending in `/name`).
fn finding_about(e: &Value, name: &str) -> bool {
    e["kind"] == "finding"
        && e["check"] == "temp_file"
        && e["subject"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/{name}")))
}

/// Waits for a temp-file finding about each of `names` (in any order).
fn wait_findings(daemon: &mut Daemon, names: &[&str]) -> Vec<Value> {
    let mut left: Vec<&str> = names.to_vec();
    let mut found = Vec::new();
    while !left.is_empty() {
        let event = daemon
            .wait_for(|e| left.iter().any(|n| finding_about(e, n)))
            .unwrap_or_else(|| panic!("no finding came for {left:?}"));
        left.retain(|n| !finding_about(&event, n));
        found.push(event);
    }
    found
}

/// The daemon in fix mode over a shared temp dir: the file the service holds open and the file
/// it creates become 0600; every other file of the same owner, there before or made later by
/// someone else, keeps its exact mode and is a report-only finding.
#[test]
fn the_daemons_fix_mode_changes_only_the_services_own_files_in_a_shared_temp_dir() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let shared = tempfile::tempdir().unwrap();
    let dir = shared.path().display().to_string();
    for name in UNRELATED.iter().copied().chain(["held.yaml"]) {
        let path = shared.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // It opens held.yaml (made by the test) for appending and keeps it open in `sleep`; it
    // creates made.yaml.
    let guarded = GuardedProcess::start(
        "watch-shared",
        &format!(
            "while [ ! -e go ]; do sleep 0.1; done; exec 3>>'{dir}/held.yaml'; \
             printf 'api_key: x\\n' > '{dir}/made.yaml'; chmod 644 '{dir}/made.yaml'; exec sleep 60"
        ),
    );
    let config = format!(
        "{}temp_dirs = [\"{dir}\"]\ntemp_files = \"fix\"\naudit_interval_secs = 1\n",
        config(&guarded.cgroup.relative)
    );
    let mut daemon = Daemon::start(&config);
    let created = daemon.ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "created-files")
        .cloned()
        .expect("a created-files feature entry");
    let recorded = feature_or_skip(
        "the_daemons_fix_mode_changes_only_the_services_own_files_in_a_shared_temp_dir",
        "created-files",
        created["available"] == true,
        created["detail"].as_str().unwrap_or_default(),
    );
    // Where BPF LSM is active the record needs no perf event (Debian refuses those to the
    // shipped unit): the LSM hook keeps it, and the tracepoints only where LSM is not.
    let (lsm, _) = lsm_available(&daemon);
    let mechanism = if lsm { "lsm/file_open" } else { "tracepoints" };
    if recorded {
        let detail = created["detail"].as_str().unwrap_or_default();
        assert!(
            detail.ends_with(&format!("recorded by {mechanism}")),
            "{created}"
        );
    }

    // The first audit reports every unrelated file, and changes none.
    for finding in wait_findings(&mut daemon, UNRELATED) {
        assert!(
            finding["detail"]
                .as_str()
                .unwrap()
                .contains("reported, not changed: not proven to be the service's"),
            "{finding}"
        );
    }

    std::fs::write(guarded.path("go"), "").unwrap();
    let held = shared.path().join("held.yaml");
    let made = shared.path().join("made.yaml");
    assert!(
        eventually(patience(), || mode(&held) == 0o600),
        "the held-open file was not fixed"
    );
    if recorded {
        assert!(
            eventually(patience(), || made.exists() && mode(&made) == 0o600),
            "the file the service created was not fixed"
        );
    }
    // A new file of the same owner, made by someone else after the service started: inotify
    // sees it at once, and fix mode still leaves it alone.
    let late = shared.path().join("late-tool.log");
    std::fs::write(&late, "x\n").unwrap();
    std::fs::set_permissions(&late, std::fs::Permissions::from_mode(0o644)).unwrap();
    let late_finding = daemon
        .wait_for(|e| finding_about(e, "late-tool.log"))
        .expect("a finding for the late file");
    assert_eq!(late_finding["severity"], "low", "{late_finding}");
    // Two more full audits pass (one a second) with everything in place.
    let audits = |daemon: &Daemon| {
        let out = Command::new(proxyguard_bin())
            .args(["status", "--json", "--config"])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|s| s.pointer("/checks/audits").and_then(Value::as_u64))
    };
    let before = audits(&daemon).expect("status shows the audits");
    assert!(
        eventually(patience(), || audits(&daemon)
            .is_some_and(|n| n >= before + 2)),
        "the audits stopped"
    );
    for name in UNRELATED.iter().copied().chain(["late-tool.log"]) {
        assert_eq!(mode(&shared.path().join(name)), 0o644, "{name} was changed");
    }
    assert_eq!(mode(&held), 0o600);
    if recorded {
        assert_eq!(mode(&made), 0o600);
        // The record is bounded and counted: its counters are metrics.
        let out = Command::new(proxyguard_bin())
            .args(["status", "--json", "--config"])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        let status: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(status["created_files"], mechanism, "{status}");
        let hooks: Vec<&str> = status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("created_"))
            })
            .filter_map(|p| p["hook"].as_str())
            .collect();
        let want: &[&str] = if lsm {
            &["lsm/file_open"]
        } else {
            &["tracepoint", "tracepoint"]
        };
        assert_eq!(hooks, want, "{status}");
        let record = &status["counters"]["created_files"];
        assert!(record["recorded"].as_u64() >= Some(1), "{status}");
        assert!(record["tracked"].as_u64() >= Some(1), "{status}");
        assert_eq!(record["evicted"], 0, "{status}");
    }
}

/// `cat` run as a separate process, returning its pid and whether it could read the file.
fn cat(path: &str) -> (u32, bool) {
    let child = Command::new("cat")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap().status.success())
}

#[test]
fn allowed_executables_pass_and_monitor_mode_only_reports() {
    require_root();
    let guarded = GuardedProcess::start("environ-allow", "exec sleep 60");
    let target = guarded.pid();
    let environ = format!("/proc/{target}/environ");
    // `cat`'s real executable: coreutils natively, busybox in the VM (where busybox sh's
    // `command -v` names the applet, not a path, so PATH is searched here).
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let cat_exe = path
        .split(':')
        .map(|dir| std::path::Path::new(dir).join("cat"))
        .find(|p| p.exists())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .expect("cat on PATH");
    let base = format!(
        "[guarded]\ncgroup = \"{}\"\n\n[bind]\nenabled = false\n\n[egress]\nenabled = false\n\n[watch]\n",
        guarded.cgroup.relative
    );
    let allowing = format!(
        "{base}mode = \"enforce\"\nallow_exe = [\"{}\"]\n",
        cat_exe.display()
    );
    let mut daemon = Daemon::start(&allowing);
    let (lsm, _) = lsm_available(&daemon);
    wait_guarded(&daemon, target);

    // Allowed, even in enforce mode; reported as its own, low-severity kind.
    let (pid, read) = cat(&environ);
    assert!(read, "an allowed executable must read the environ");
    let event = daemon
        .wait_for(|e| e["kind"] == "environ_read_allowed" && e["pid"] == pid)
        .expect("an environ_read_allowed event");
    assert_eq!(event["severity"], "low", "{event}");
    assert_eq!(event["target"], target, "{event}");

    // Monitor mode: nothing is refused, every other read is reported.
    let reloaded = daemon.reload_with(&format!("{base}mode = \"monitor\"\n"));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let (pid, read) = cat(&environ);
    assert!(read, "monitor mode must not refuse");
    let kind = if lsm {
        "environ_read_would_deny"
    } else {
        "environ_read"
    };
    let event = daemon
        .wait_for(|e| e["kind"] == kind && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no {kind} event"));
    assert_eq!(event["severity"], "high", "{event}");
}
