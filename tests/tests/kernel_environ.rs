//! The environ watch, end to end: a guarded shell with a planted secret, and other processes
//! opening its `/proc/<pid>/environ`. Natively (no BPF LSM, no kprobes here) the path
//! tracepoints detect and report every open once; in the VM the LSM program must also refuse it
//! with EPERM, and the open probe (the LSM tier kept off by config) catches every spelling the
//! tracepoints miss.

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
        "while [ ! -e go ]; do sleep 0.1; done; read -r x < /proc/self/environ; exec sleep 600",
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
    // One tier, named in `status` with why no stronger one runs.
    let tier = watch_tier(&daemon);
    if lsm {
        assert!(hooks.contains(&"lsm/file_open".to_owned()), "{hooks:?}");
        assert!(tier.starts_with("LSM deny: "), "{tier}");
    } else if tier.starts_with("open probe: ") {
        assert!(detail.contains("detected, not denied"), "{detail}");
        assert!(hooks.contains(&"kprobe".to_owned()), "{hooks:?}");
    } else {
        assert!(tier.starts_with("path tracepoints: "), "{tier}");
        assert!(
            tier.contains("LSM deny: ") && tier.contains("open probe: "),
            "{tier}"
        );
        assert!(detail.contains("detected, not denied"), "{detail}");
        // The environ pair alone: the created-files record is not attached in report mode.
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
    // The default `temp_files = "report"` has no use for the created-files record: none of its
    // programs is attached, and `status` says why.
    assert_eq!(record_hooks(&daemon.ready), Vec::<String>::new());
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["created_files"], Value::Null, "{status}");
    assert!(
        status["created_files_detail"]
            .as_str()
            .is_some_and(|d| d.contains("temp_files = \"report\"")),
        "{status}"
    );
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
    let guarded = GuardedProcess::start("environ-dirfd", "exec sleep 600");
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
         chmod 644 litellm-config.yaml; exec sleep 600",
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
             printf 'api_key: x\\n' > '{dir}/made.yaml'; chmod 644 '{dir}/made.yaml'; exec sleep 600"
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
    let (mechanism, want) = record_mechanism(&daemon);
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
        assert_eq!(record_hooks(&status), want, "{status}");
        let record = &status["counters"]["created_files"];
        assert!(record["recorded"].as_u64() >= Some(1), "{status}");
        assert!(record["tracked"].as_u64() >= Some(1), "{status}");
        assert_eq!(record["evicted"], 0, "{status}");
    }
}

/// The hooks of the created-files record's programs in a `ready` or `status` record.
fn record_hooks(record: &Value) -> Vec<String> {
    record["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("created_"))
        })
        .filter_map(|p| p["hook"].as_str().map(str::to_owned))
        .collect()
}

/// How the created-files record is kept on this kernel at `tier = "auto"`, as `status` names it,
/// and its programs' hooks: where BPF LSM is active the LSM hook (it needs no perf event, which
/// Debian refuses to the shipped unit), else a kprobe on `security_file_open` where the kernel
/// has kprobes (only opens pay for it), else the `openat` exit tracepoints.
fn record_mechanism(daemon: &Daemon) -> (&'static str, Vec<String>) {
    let (lsm, _) = lsm_available(daemon);
    let kprobes = daemon.ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "kprobes" && f["available"] == true);
    let (mechanism, hooks): (_, &[&str]) = if lsm {
        ("lsm/file_open", &["lsm/file_open"])
    } else if kprobes {
        ("kprobe/security_file_open", &["kprobe"])
    } else {
        ("tracepoints", &["tracepoint", "tracepoint"])
    };
    (mechanism, hooks.iter().map(|h| h.to_string()).collect())
}

/// The pinned links of the created-files record's programs under the daemon's pin directory.
fn record_links(pin_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("created_"))
                .collect()
        })
        .unwrap_or_default()
}

/// Fix mode is the record's one consumer: a reload into fix mode attaches it (pinned), and the
/// file the service then creates is fixed; a reload back to report mode detaches it, and
/// `status` says so each time; a restart in report mode over a fix-mode daemon's pins drops the
/// record's.
#[test]
fn the_created_files_record_follows_fix_mode_across_reloads() {
    require_root();
    let guarded = GuardedProcess::start(
        "watch-reload",
        "while [ ! -e go ]; do sleep 0.1; done; \
         printf 'api_key: x\\n' > made.yaml; chmod 644 made.yaml; exec sleep 600",
    );
    let with_mode = |mode: &str| {
        format!(
            "{}temp_dirs = [\"$TMPDIR\"]\ntemp_files = \"{mode}\"\naudit_interval_secs = 1\n",
            config(&guarded.cgroup.relative)
        )
    };
    let mut daemon = Daemon::start(&with_mode("report"));
    let (mechanism, want) = record_mechanism(&daemon);
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["created_files"], Value::Null, "{status}");
    assert_eq!(record_hooks(&status), Vec::<String>::new(), "{status}");
    assert_eq!(record_links(&daemon.pin_dir), Vec::<String>::new());

    let reloaded = daemon.reload_with(&with_mode("fix"));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let status = daemon.cli_json(&["status"]);
    let detail = status["created_files_detail"].as_str().unwrap_or_default();
    if !feature_or_skip(
        "the_created_files_record_follows_fix_mode_across_reloads",
        "created-files",
        status["created_files"].is_string(),
        detail,
    ) {
        return;
    }
    assert_eq!(status["created_files"], mechanism, "{status}");
    assert_eq!(record_hooks(&status), want, "{status}");
    assert_eq!(record_links(&daemon.pin_dir).len(), want.len());
    assert!(
        detail.ends_with(&format!("recorded by {mechanism}")),
        "{status}"
    );

    // The record works: the service's new file is fixed, and the kernel reported its creation.
    wait_guarded(&daemon, guarded.pid());
    std::fs::write(guarded.path("go"), "").unwrap();
    let made = guarded.path("made.yaml");
    assert!(
        eventually(patience(), || made.exists() && mode(&made) == 0o600),
        "the file the service created was not fixed"
    );
    let recorded = eventually(patience(), || {
        daemon.cli_json(&["status"])["counters"]["created_files"]["recorded"]
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    assert!(recorded, "no creation was recorded");

    let reloaded = daemon.reload_with(&with_mode("report"));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["created_files"], Value::Null, "{status}");
    assert_eq!(record_hooks(&status), Vec::<String>::new(), "{status}");
    assert_eq!(record_links(&daemon.pin_dir), Vec::<String>::new());
    assert!(
        status["created_files_detail"]
            .as_str()
            .is_some_and(|d| d.contains("temp_files = \"report\"")),
        "{status}"
    );

    // Fix mode again, then a crash: the record stays pinned (attached); a daemon that starts in
    // report mode on those pins detaches it.
    let reloaded = daemon.reload_with(&with_mode("fix"));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    assert_eq!(record_links(&daemon.pin_dir).len(), want.len());
    let pin_dir = daemon.pin_dir.clone();
    daemon.kill_hard();
    assert_eq!(record_links(&pin_dir).len(), want.len());
    let restarted = Daemon::start_full(&with_mode("report"), &[], None, pin_dir.clone());
    assert_eq!(record_hooks(&restarted.ready), Vec::<String>::new());
    assert_eq!(record_links(&pin_dir), Vec::<String>::new());
    drop(restarted);
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
    let guarded = GuardedProcess::start("environ-allow", "exec sleep 600");
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

/// The daemon's `environ-watch` feature line: the tier in use, and why no stronger one.
fn watch_tier(daemon: &Daemon) -> String {
    daemon.ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "environ-watch")
        .and_then(|f| f["detail"].as_str())
        .unwrap_or_else(|| panic!("no environ-watch feature: {}", daemon.ready))
        .to_owned()
}

/// Opens `path` through io_uring (`IORING_OP_OPENAT`) with the raw syscalls, and returns the
/// open's result (an fd, or minus the errno). One submission, one completion.
fn io_uring_open(path: &std::ffi::CStr) -> i32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    #[repr(C)]
    #[derive(Default)]
    struct RingOffsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        // sq: flags, dropped, array; cq: overflow, cqes, flags.
        a: u32,
        b: u32,
        c: u32,
        resv: u32,
        user_addr: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: RingOffsets,
        cq_off: RingOffsets,
    }
    const FEAT_SINGLE_MMAP: u32 = 1;
    const OFF_SQES: i64 = 0x1000_0000;
    const OP_OPENAT: u8 = 18;
    const ENTER_GETEVENTS: u32 = 1;
    let mut params = Params::default();
    // SAFETY: the kernel fills `params`, which has the layout of `struct io_uring_params`.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut params) } as i32;
    assert!(
        fd >= 0,
        "io_uring_setup: {}",
        std::io::Error::last_os_error()
    );
    assert!(params.features & FEAT_SINGLE_MMAP != 0, "an old io_uring");
    let ring_len = (params.sq_off.c as usize + params.sq_entries as usize * 4)
        .max(params.cq_off.b as usize + params.cq_entries as usize * 16);
    let sqes_len = params.sq_entries as usize * 64;
    // SAFETY: mapping the ring and the SQE array the kernel made for `fd`, at its offsets;
    // every access below stays inside them, and the shared indices go through atomics.
    let res = unsafe {
        let map = |len: usize, offset: i64| {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                offset,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap io_uring");
            ptr as *mut u8
        };
        let ring = map(ring_len, 0);
        let sqes = map(sqes_len, OFF_SQES);
        std::ptr::write_bytes(sqes, 0, 64);
        *sqes = OP_OPENAT;
        *(sqes.add(4) as *mut i32) = libc::AT_FDCWD;
        *(sqes.add(16) as *mut u64) = path.as_ptr() as u64;
        *(sqes.add(28) as *mut u32) = (libc::O_RDONLY | libc::O_CLOEXEC) as u32;
        *(sqes.add(32) as *mut u64) = 7;
        let word = |offset: u32| &*(ring.add(offset as usize) as *const AtomicU32);
        let sq_mask = word(params.sq_off.ring_mask).load(Ordering::Relaxed);
        let tail = word(params.sq_off.tail).load(Ordering::Acquire);
        *(ring.add(params.sq_off.c as usize + ((tail & sq_mask) as usize) * 4) as *mut u32) = 0;
        word(params.sq_off.tail).store(tail.wrapping_add(1), Ordering::Release);
        let entered = libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            1u32,
            1u32,
            ENTER_GETEVENTS,
            std::ptr::null::<u8>(),
            0usize,
        );
        assert_eq!(
            entered,
            1,
            "io_uring_enter: {}",
            std::io::Error::last_os_error()
        );
        let head = word(params.cq_off.head).load(Ordering::Acquire);
        assert_ne!(head, word(params.cq_off.tail).load(Ordering::Acquire));
        let cq_mask = word(params.cq_off.ring_mask).load(Ordering::Relaxed);
        let cqe = ring.add(params.cq_off.b as usize + ((head & cq_mask) as usize) * 16);
        assert_eq!(*(cqe as *const u64), 7, "the completion of our submission");
        let res = *(cqe.add(8) as *const i32);
        word(params.cq_off.head).store(head.wrapping_add(1), Ordering::Release);
        libc::munmap(sqes as *mut libc::c_void, sqes_len);
        libc::munmap(ring as *mut libc::c_void, ring_len);
        libc::close(fd);
        res
    };
    if res >= 0 {
        // SAFETY: the fd the open returned, ours to close.
        unsafe { libc::close(res) };
    }
    res
}

/// The open probe (a kprobe at the kernel's `environ_open`, where kprobes exist: the VM) sees
/// the opened file, not a path: every spelling the path tracepoints miss (the documented gaps)
/// is caught, each as one event with the opener's identity, and other processes' ordinary opens
/// make none. `tier = "probe"` keeps the LSM tier off, as a host without BPF LSM would.
#[test]
fn the_open_probe_catches_every_spelling_with_the_openers_identity() {
    use std::{ffi::CString, os::unix::fs::MetadataExt};

    use nix::{fcntl::OFlag, sys::stat::Mode};
    require_root();
    let guarded = GuardedProcess::start("environ-probe", "exec sleep 600");
    let target = guarded.pid();
    let mut daemon = Daemon::start(&format!(
        "{}tier = \"probe\"\n",
        config(&guarded.cgroup.relative)
    ));
    let tier = watch_tier(&daemon);
    let kprobes = daemon.ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "kprobes" && f["available"] == true);
    if !kprobes {
        // Passed over with the reason, and the path tracepoints run instead.
        assert!(tier.starts_with("path tracepoints: "), "{tier}");
        assert!(tier.contains("open probe: kprobes: absent"), "{tier}");
    }
    if !feature_or_skip(
        "the_open_probe_catches_every_spelling_with_the_openers_identity",
        "the environ open probe",
        tier.starts_with("open probe: "),
        &tier,
    ) {
        return;
    }
    assert!(tier.contains("LSM deny: not used"), "{tier}");
    let hooks: Vec<&str> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("environ_"))
        })
        .filter_map(|p| p["hook"].as_str())
        .collect();
    assert_eq!(hooks, ["kprobe"], "{}", daemon.ready);
    wait_guarded(&daemon, target);

    // The opener's identity: this process, in a cgroup of its own (its id is the directory's
    // inode), as root, with its thread's comm.
    let opener = proxyguard_tests::cgroup::TestCgroup::create("environ-opener");
    let _inside = opener.enter();
    let cgroup_id = std::fs::metadata(&opener.path).unwrap().ino();
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    let comm = comm.trim_end();
    let me = std::process::id();

    let scratch = tempfile::tempdir().unwrap();
    let link = scratch.path().join("p");
    std::os::unix::fs::symlink(format!("/proc/{target}"), &link).unwrap();
    let file_link = scratch.path().join("e");
    std::os::unix::fs::symlink(format!("/proc/{target}/environ"), &file_link).unwrap();
    let other_proc = scratch.path().join("proc");
    std::fs::create_dir(&other_proc).unwrap();
    nix::mount::mount(
        Some("proc"),
        &other_proc,
        Some("proc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount a second procfs");
    let long = format!("/proc{}/{target}/environ", "/.".repeat(70));
    assert!(long.len() > 128);
    let spellings = [
        format!("//proc/{target}/environ"),
        format!("/proc//{target}/environ"),
        format!("/proc/{target}/./environ"),
        format!("/proc/1/../{target}/environ"),
        format!("{}/environ", link.display()),
        file_link.display().to_string(),
        format!("{}/{target}/environ", other_proc.display()),
        long,
    ];
    let mut caught = 0;
    let mut expect = |daemon: &mut Daemon, how: &str, check_comm: bool| {
        let event = daemon
            .wait_for(|e| is_environ_event(e) && e["pid"] == me)
            .unwrap_or_else(|| panic!("no environ event for {how}"));
        assert_eq!(event["kind"], "environ_read", "{how}: {event}");
        assert_eq!(event["source"], "probe", "{how}: {event}");
        assert_eq!(event["target"], target, "{how}: {event}");
        assert_eq!(event["uid"], 0, "{how}: {event}");
        assert_eq!(event["cgroup_id"], cgroup_id, "{how}: {event}");
        assert_eq!(event["severity"], "high", "{how}: {event}");
        if check_comm {
            assert_eq!(event["comm"], comm, "{how}: {event}");
        }
        caught += 1;
    };
    for path in &spellings {
        let fd = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY, Mode::empty())
            .unwrap_or_else(|err| panic!("open {path}: {err}"));
        let _ = nix::unistd::close(fd);
        expect(&mut daemon, path, true);
    }
    // Relative to a dirfd of /proc itself.
    let proc_dir =
        nix::fcntl::open("/proc", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    let fd = nix::fcntl::openat(
        Some(proc_dir),
        format!("{target}/environ").as_str(),
        OFlag::O_RDONLY,
        Mode::empty(),
    )
    .expect("openat(/proc fd, <pid>/environ)");
    let _ = nix::unistd::close(fd);
    let _ = nix::unistd::close(proc_dir);
    expect(&mut daemon, "openat(/proc dirfd, \"<pid>/environ\")", true);
    // The legacy open(2) syscall.
    let plain = CString::new(format!("/proc/{target}/environ")).unwrap();
    // SAFETY: a NUL-terminated path; the returned fd is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_open, plain.as_ptr(), libc::O_RDONLY) } as i32;
    assert!(fd >= 0, "open(2): {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    unsafe { libc::close(fd) };
    expect(&mut daemon, "open(2)", true);
    // io_uring: the open may run on one of this process's io-wq workers (its comm is theirs).
    let res = io_uring_open(&plain);
    assert!(res >= 0, "io_uring openat: errno {}", -res);
    expect(&mut daemon, "io_uring", false);
    // Relative to the working directory, in another process (cat, which the shell execs).
    let cat = Command::new("sh")
        .args(["-c", "cd \"/proc/$1\" && exec cat environ", "sh"])
        .arg(target.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cat_pid = cat.id();
    assert!(cat.wait_with_output().unwrap().status.success());
    let event = daemon
        .wait_for(|e| is_environ_event(e) && e["pid"] == cat_pid)
        .expect("an event for `cd /proc/<pid>; cat environ`");
    assert_eq!(event["comm"], "cat", "{event}");
    assert_eq!(event["cgroup_id"], cgroup_id, "{event}");
    assert_eq!(event["source"], "probe", "{event}");
    assert_eq!(event["target"], target, "{event}");
    nix::mount::umount(&other_proc).expect("unmount the second procfs");

    // Another process's ordinary opens (its own and the target's other procfs files, and a
    // plain file) make nothing; the marker is one more environ open of ours, after them.
    let other = Command::new("sh")
        .args([
            "-c",
            "cat /etc/passwd \"/proc/$1/status\" \"/proc/$1/cmdline\" /proc/self/environ > /dev/null",
            "sh",
        ])
        .arg(target.to_string())
        .spawn()
        .unwrap();
    let other_pid = other.id();
    assert!(other.wait_with_output().unwrap().status.success());
    let fd = nix::fcntl::open(plain.as_c_str(), OFlag::O_RDONLY, Mode::empty()).unwrap();
    let _ = nix::unistd::close(fd);
    let before = daemon.records_until(|e| is_environ_event(e) && e["pid"] == me);
    let stray: Vec<&Value> = before
        .iter()
        .filter(|e| is_environ_event(e) && e["pid"] != me)
        .collect();
    assert!(
        stray.is_empty(),
        "only our own environ opens make events (other: {other_pid}): {stray:?}"
    );
    let counters = daemon.stop()["counters"]["environ"].clone();
    assert!(
        counters["other_reads"].as_u64().unwrap() >= caught + 2,
        "{counters}"
    );
}

/// The watch's cost on an ordinary open, in the tier this kernel gives `tier = "probe"` (the open
/// probe in the VM, the path tracepoints here): an open/close loop of a plain file without the
/// programs and with them attached and pinned (the daemon killed, so its rescans do not compete),
/// interleaved over three rounds, the best of each kept. The daemon runs in fix mode, so the
/// created-files record is attached too (at `tier = "probe"` it starts at the kprobe, as on a
/// kernel with kprobes and no BPF LSM); with its links then unpinned, what is left is the
/// default config's (report mode: the environ tier alone). The figures are printed for whoever
/// reads the log (`cargo xtask bench-watch` is the benchmark proper, on the host); what is
/// asserted is only that the programs were attached while the loop ran. At full length (three
/// rounds, `PROXYGUARD_BENCHES=1`: `cargo xtask vm-test --only kernel_environ --benches`) only;
/// the test command runs one short round, which times nothing worth reading.
#[test]
fn the_open_loop_cost_of_the_watch_is_printed() {
    require_root();
    let guarded = GuardedProcess::start("environ-cost", "exec sleep 600");
    let benches = std::env::var_os("PROXYGUARD_BENCHES").is_some();
    let rounds = if benches { 3 } else { 1 };
    let iterations: u32 = match (benches, in_vm()) {
        (true, true) => 50_000,
        (true, false) => 500_000,
        (false, _) => 2_000,
    };
    let file = guarded.path("opened");
    std::fs::write(&file, "x").unwrap();
    let open_loop = || {
        let started = std::time::Instant::now();
        for _ in 0..iterations {
            drop(std::fs::File::open(&file).unwrap());
        }
        started.elapsed()
    };
    let config = format!(
        "{}tier = \"probe\"\ntemp_dirs = []\ntemp_files = \"fix\"\n",
        config(&guarded.cgroup.relative)
    );
    let (mut without, mut with, mut environ_only) = (Vec::new(), Vec::new(), Vec::new());
    let (mut tier, mut record) = (String::new(), String::new());
    for _ in 0..rounds {
        without.push(open_loop());
        let daemon = Daemon::start(&config);
        tier = watch_tier(&daemon);
        record = daemon.ready["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "created-files")
            .and_then(|f| f["detail"].as_str())
            .unwrap_or("no created-files line")
            .to_owned();
        let pin_dir = daemon.pin_dir.clone();
        daemon.kill_hard();
        let links: Vec<std::path::PathBuf> = std::fs::read_dir(pin_dir.join("links"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let environ_links = links
            .iter()
            .filter(|l| {
                l.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("environ_")
            })
            .count();
        assert!(
            environ_links > 0,
            "the programs stay attached after a kill: {links:?}"
        );
        // Not for correctness: the killed daemon's teardown (its maps and programs freed) runs
        // on the same CPUs, and under TCG it takes seconds; let it pass before timing.
        if benches {
            std::thread::sleep(if in_vm() {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(500)
            });
        }
        with.push(open_loop());
        // Then the environ tier's programs alone: the created-files record's unpinned (which
        // detaches them), to show what each part costs.
        for link in &links {
            if link
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("created_")
            {
                std::fs::remove_file(link).unwrap();
            }
        }
        environ_only.push(open_loop());
        proxyguard_tests::daemon::remove_pins(&pin_dir);
    }
    let best = |runs: &[Duration]| runs.iter().min().copied().unwrap();
    let base = best(&without);
    let per_open = |d: Duration| d.as_nanos() as f64 / iterations as f64;
    let ratio = |d: Duration| d.as_secs_f64() / base.as_secs_f64();
    // Past libtest's output capture (as `feature_or_skip` writes), so a passing run shows it.
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout(),
        "\nenviron watch open/close cost: tier \"{}\", created-files record \"{}\", best of {rounds} rounds of \
         {iterations}: {:.0} ns without; \
         {:.0} ns with the watch and the created-files record, fix mode (ratio {:.4}, {:+.1}%); \
         {:.0} ns with the environ tier's programs alone, report mode (ratio {:.4}, {:+.1}%)",
        tier.split(':').next().unwrap_or_default(),
        record,
        per_open(base),
        per_open(best(&with)),
        ratio(best(&with)),
        (ratio(best(&with)) - 1.0) * 100.0,
        per_open(best(&environ_only)),
        ratio(best(&environ_only)),
        (ratio(best(&environ_only)) - 1.0) * 100.0,
    );
}
