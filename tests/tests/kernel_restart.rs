//! Pinning and restart: enforcement outlives the daemon (even `kill -9`), a restarted daemon
//! adopts the pinned programs instead of attaching twice, counters keep going, and
//! `run --detach-kernel` removes everything on purpose.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
};

use nix::errno::Errno;
use proxyguard_tests::{
    daemon::{with_json_log, with_pin_dir},
    net, proxyguard_bin, require_root, Daemon,
};

fn config(port: u16) -> String {
    format!("[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\n")
}

fn wildcard(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

#[test]
fn enforcement_survives_kill_and_is_adopted_then_detached() {
    require_root();
    let port = net::free_port();
    let first = Daemon::start(&config(port));
    let pin_dir = first.pin_dir.clone();
    assert!(first.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["adopted"] == false));
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));

    // A crash: the rule holds with no daemon running.
    first.kill_hard();
    assert_eq!(
        net::try_bind(wildcard(port)),
        Err(Errno::EPERM),
        "enforcement lapsed with the daemon"
    );
    assert!(pin_dir.join("links").read_dir().unwrap().count() >= 2);

    // A new daemon adopts the pinned links instead of attaching a second copy.
    let mut second = Daemon::start_full(&config(port), &[], None, pin_dir.clone());
    let programs = second.ready["programs"].as_array().unwrap().clone();
    assert!(
        !programs.is_empty() && programs.iter().all(|p| p["adopted"] == true),
        "{programs:?}"
    );
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    assert!(
        second.wait_for(|e| e["kind"] == "bind_denied").is_some(),
        "the adopted program's events reach the new daemon"
    );

    // Three refused binds in all. The counters kept going across the crash, and a double attach
    // would have counted the last one twice.
    second.keep_pins();
    let stopping = second.stop();
    assert_eq!(stopping["counters"]["bind"]["denied"], 3, "{stopping}");

    // A clean stop keeps enforcement on too; only --detach-kernel removes it.
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("proxyguard.toml");
    std::fs::write(
        &config_path,
        with_pin_dir(&with_json_log(&config(port)), &pin_dir),
    )
    .unwrap();
    let out = Command::new(proxyguard_bin())
        .args(["run", "--detach-kernel", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a detached record");
    assert_eq!(record["kind"], "detached");
    assert!(!pin_dir.exists(), "pins left behind");
    assert_eq!(
        net::try_bind(wildcard(port)),
        Ok(()),
        "still enforced after --detach-kernel"
    );
}
