//! Issue #19: a log level that crashed tracing-subscriber's filter parser (`"\tב["`) killed
//! `config check` (exit 101) and a running daemon on SIGHUP. Now the file is refused, naming
//! `log.level` and its line, and the daemon keeps serving with the config it had. The same text
//! in `RUST_LOG` is ignored with a warning.

use std::{io::BufReader, net::TcpStream, path::Path, process::Command};

use proxyguard_tests::{
    daemon::Daemon,
    l7::{new_key, Guard},
    proxyguard_bin,
    upstream::{request, upstream},
};

/// The TOML from the issue: a tab (escaped), a Hebrew letter, an open bracket.
const CRASH_LEVEL: &str = "\n[log]\nlevel = \"\\tב[\"\n";

fn proxyguard(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("PROXYGUARD_CONFIG")
        .output()
        .unwrap()
}

fn status_of(base: &str, key: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut stream = BufReader::new(TcpStream::connect(addr).unwrap());
    request(&mut stream, key).unwrap()
}

/// The 1-based line of `level =` in the file, as the error must name it.
fn level_line(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    1 + text
        .lines()
        .position(|line| line.starts_with("level ="))
        .expect("the file sets log.level")
}

#[test]
fn a_crashing_log_level_is_refused_and_the_daemon_keeps_serving() {
    let port = upstream();
    let mut guard = Guard::start(port, "sk-upstream", &["alice"], "");
    let alice = guard.key("alice").to_owned();
    assert_eq!(status_of(&guard.base, &alice), 200);

    // The new file would swap alice for bob; its log level is the crash input.
    let (bob, bob_hash) = new_key();
    let keys = vec![("bob".to_owned(), bob.clone(), bob_hash)];
    let good = Guard::config(port, &guard.key_file, &keys, "");
    let refused = guard.daemon.reload_with(&format!("{good}{CRASH_LEVEL}"));
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("log.level"), "{refused}");

    // Alive, and still on the old config: alice passes, bob is unknown.
    assert_eq!(status_of(&guard.base, &alice), 200);
    assert_eq!(status_of(&guard.base, &bob), 401);
    // `status` reads only the socket from its config; the daemon's own file is the bad one now.
    let path = guard.daemon.config_path.clone();
    let socket_only = guard.daemon.dir.path().join("socket-only.toml");
    let socket = guard.daemon.dir.path().join("control.sock");
    std::fs::write(&socket_only, format!("[control]\nsocket = {socket:?}\n")).unwrap();
    let status = proxyguard(&["status", "--json"], &socket_only);
    assert!(status.status.success(), "{status:?}");

    // The CLI answers the same file with exit 2, the field and its line.
    let line = format!("line {}: log.level", level_line(&path));
    for args in [&["config", "check"][..], &["reload"][..]] {
        let out = proxyguard(args, &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&line), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    // A good file afterwards applies as usual.
    assert_eq!(guard.daemon.reload_with(&good)["kind"], "reloaded");
    assert_eq!(status_of(&guard.base, &bob), 200);
    assert_eq!(status_of(&guard.base, &alice), 401);
    let log = guard.daemon.log_lines().join("\n");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_daemon_refuses_to_start_on_it_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxyguard.toml");
    std::fs::write(&path, format!("[proxy]\nenabled = false\n{CRASH_LEVEL}")).unwrap();
    let out = proxyguard(&["run", "--no-kernel"], &path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 5: log.level"), "{stderr}");
}

#[test]
fn the_same_text_in_rust_log_is_ignored_with_a_warning() {
    let daemon = Daemon::start_with_env(
        "[proxy]\nenabled = false\n",
        &["--no-kernel"],
        &[("RUST_LOG", "\tב[")],
    );
    assert_eq!(daemon.ready["kind"], "ready");
    // stderr is read by its own thread: give it a bounded moment to catch up with stdout.
    let warned = |log: &str| log.contains("RUST_LOG is ignored: directive 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut log = daemon.log_lines().join("\n");
    while !warned(&log) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = daemon.log_lines().join("\n");
    }
    assert!(warned(&log), "{log}");
    daemon.stop();
}
