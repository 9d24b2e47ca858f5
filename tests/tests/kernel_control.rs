//! The control channel, end to end: `status`, `reload` and `events` against a running daemon, and
//! the socket closed to anyone but root.

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddr},
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
};

use nix::errno::Errno;
use proxyguard_tests::{net, proxyguard_bin, require_root, Daemon};
use serde_json::Value;

fn config(port: u16, mode: &str) -> String {
    format!(
        "[bind]\nmode = \"{mode}\"\n\n[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\n"
    )
}

fn cli(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_reload_and_events_over_the_control_socket() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&config(port, "enforce"));
    assert_eq!(
        net::try_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(Errno::EPERM)
    );
    daemon.wait_for(|e| e["kind"] == "bind_denied").unwrap();

    let status = json_of(&cli(&daemon, &["status", "--json"]));
    assert_eq!(status["modes"]["bind"], "enforce");
    let names: Vec<&str> = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["bind_rule_v4", "bind_rule_v6"]);
    assert_eq!(status["counters"]["bind"]["denied"], 1);
    assert!(status["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| !f["detail"].as_str().unwrap().is_empty()));
    let human = cli(&daemon, &["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("bind_rule_v4") && text.contains("enforce") && text.contains("denied 1"),
        "{text}"
    );

    // Recent events, without --follow.
    let events = cli(&daemon, &["events", "--json"]);
    assert!(events.status.success());
    let kinds: Vec<Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|e| e["kind"] == "bind_denied" && e["port"] == port),
        "{kinds:?}"
    );

    // A new event reaches a follower.
    let mut follower = Command::new(proxyguard_bin())
        .args(["events", "--follow", "--json", "--config"])
        .arg(&daemon.config_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // The backlog comes first; the ready record is in it.
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["kind"], "ready");
    assert_eq!(
        net::try_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(Errno::EPERM)
    );
    let seen = lines
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|e| e["kind"] == "bind_denied")
        .nth(1);
    assert!(seen.is_some(), "the follower did not see the new denial");
    let _ = follower.kill();
    let _ = follower.wait();

    // reload: monitor mode takes effect; an invalid file is refused with exit 2 and the field path.
    std::fs::write(
        &daemon.config_path,
        std::fs::read_to_string(&daemon.config_path)
            .unwrap()
            .replace("enforce", "monitor"),
    )
    .unwrap();
    let out = cli(&daemon, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json_of(&cli(&daemon, &["status", "--json"]))["modes"]["bind"],
        "monitor"
    );
    assert_eq!(
        net::try_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Ok(())
    );

    let good = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        good.replace(&format!("port = {port}"), "port = 0"),
    )
    .unwrap();
    let out = cli(&daemon, &["reload"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bind.rules[0].port"));
    std::fs::write(&daemon.config_path, good).unwrap();
    assert_eq!(
        json_of(&cli(&daemon, &["status", "--json"]))["modes"]["bind"],
        "monitor"
    );
}

#[test]
fn the_control_socket_is_root_only() {
    require_root();
    let daemon = Daemon::start(&config(net::free_port(), "enforce"));
    // The config is readable to the unprivileged user for this test; the socket must not be.
    let copy = std::env::temp_dir().join(format!("pg-control-{}.toml", std::process::id()));
    std::fs::copy(&daemon.config_path, &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(proxyguard_bin())
        .args(["status", "--config"])
        .arg(&copy)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&copy);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the daemon") && stderr.contains("root"),
        "{stderr}"
    );
}
