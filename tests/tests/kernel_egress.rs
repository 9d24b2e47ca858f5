//! The egress allow-list, end to end: this test process joins a test cgroup that the daemon
//! guards, and real connects and UDP sends are allowed or refused with EPERM.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    time::{Duration, Instant},
};

use proxyguard_tests::{cgroup::TestCgroup, in_vm, require_root, Daemon};
use serde_json::Value;

/// Listeners on 127.0.0.1 and ::1, so a refused connect is the rule's doing, not a closed port.
struct Ports {
    _listeners: Vec<TcpListener>,
    port: u16,
}

fn listen() -> Ports {
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = v4.local_addr().unwrap().port();
    let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, port)).unwrap();
    Ports {
        _listeners: vec![v4, v6],
        port,
    }
}

fn connect(ip: &str, port: u16) -> Result<(), i32> {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn send_udp(ip: &str, port: u16) -> Result<(), i32> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    socket
        .send_to(b"probe", SocketAddr::new(ip.parse().unwrap(), port))
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

const EPERM: i32 = libc::EPERM;

fn config(cgroup: &str, mode: &str, allowed: u16, host_port: u16, guard_port: u16) -> String {
    format!(
        "[guarded]\ncgroup = \"{cgroup}\"\n\n[bind]\nenabled = false\n\n[egress]\nmode = \"{mode}\"\n\
         allow = [\"127.0.0.1:{allowed}\", \"localhost:{host_port}\"]\ndns = [\"127.0.0.53\"]\nguard_port = {guard_port}\n\n\
         [watch]\nenabled = false\n"
    )
}

#[test]
fn guarded_cgroup_reaches_only_allowed_targets() {
    require_root();
    let (allowed, refused, named, guard) = (listen(), listen(), listen(), listen());
    let cgroup = TestCgroup::create("egress");
    let mut daemon = Daemon::start(&config(
        &cgroup.relative,
        "enforce",
        allowed.port,
        named.port,
        guard.port,
    ));
    let hooks: Vec<&str> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["hook"].as_str())
        .collect();
    assert_eq!(
        hooks,
        [
            "cgroup/connect4",
            "cgroup/connect6",
            "cgroup/sendmsg4",
            "cgroup/sendmsg6"
        ]
    );
    let resolved = daemon
        .wait_for(|e| e["kind"] == "egress_resolved")
        .expect("host names resolved");
    assert!(
        resolved["hosts"][format!("localhost:{}", named.port)]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{resolved}"
    );

    {
        let _inside = cgroup.enter();
        assert_eq!(
            connect("127.0.0.1", allowed.port),
            Ok(()),
            "listed CIDR:PORT"
        );
        assert_eq!(
            connect("127.0.0.1", named.port),
            Ok(()),
            "host-name target, IPv4"
        );
        assert_eq!(connect("::1", named.port), Ok(()), "host-name target, IPv6");
        assert_eq!(
            connect("127.0.0.1", guard.port),
            Ok(()),
            "proxyguard's own port on loopback"
        );
        assert_eq!(send_udp("127.0.0.53", 53), Ok(()), "the DNS resolver");
        assert_eq!(connect("127.0.0.1", refused.port), Err(EPERM));
        assert_eq!(connect("::1", refused.port), Err(EPERM));
        assert_eq!(send_udp("127.0.0.1", refused.port), Err(EPERM));
    }
    // Outside the guarded cgroup nothing is judged.
    assert_eq!(connect("127.0.0.1", refused.port), Ok(()));

    let event = daemon
        .wait_for(|e| e["kind"] == "egress_denied")
        .expect("an egress_denied event");
    assert_eq!(event["pid"], std::process::id());
    assert_eq!(event["port"], refused.port);
    assert_eq!(event["proto"], "tcp");
    assert_eq!(event["addr"], "127.0.0.1");
    let udp = daemon
        .wait_for(|e| e["kind"] == "egress_denied" && e["proto"] == "udp")
        .expect("a UDP denial");
    assert_eq!(udp["port"], refused.port);

    // A restart gives the service a new cgroup (same path, new id); it is covered again within
    // the daemon's rescan.
    cgroup.recreate();
    let covered = {
        let _inside = cgroup.enter();
        let deadline = Instant::now()
            + if in_vm() {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(10)
            };
        loop {
            if connect("127.0.0.1", refused.port) == Err(EPERM) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(covered, "the re-created cgroup was not covered");

    // `egress allow` edits the file and the running daemon picks it up at once.
    let out = std::process::Command::new(proxyguard_tests::proxyguard_bin())
        .args([
            "egress",
            "allow",
            &format!("127.0.0.1:{}", refused.port),
            "--config",
        ])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        let _inside = cgroup.enter();
        assert_eq!(
            connect("127.0.0.1", refused.port),
            Ok(()),
            "a live `egress allow` did not take effect"
        );
    }
    assert!(daemon
        .wait_for(|e| e["kind"] == "guarded_cgroups")
        .is_some());

    let counters: Value = daemon.stop()["counters"]["egress"].clone();
    assert!(counters["denied"].as_u64().unwrap() >= 4, "{counters}");
    assert_eq!(counters["would_deny"], 0, "{counters}");
}

#[test]
fn monitor_mode_lets_everything_through_and_reports() {
    require_root();
    let (allowed, refused) = (listen(), listen());
    let cgroup = TestCgroup::create("egress-monitor");
    let mut daemon = Daemon::start(&config(
        &cgroup.relative,
        "monitor",
        allowed.port,
        allowed.port,
        allowed.port,
    ));
    {
        let _inside = cgroup.enter();
        assert_eq!(connect("127.0.0.1", allowed.port), Ok(()));
        assert_eq!(
            connect("127.0.0.1", refused.port),
            Ok(()),
            "monitor mode must not refuse"
        );
    }
    let event = daemon
        .wait_for(|e| e["kind"] == "egress_would_deny")
        .expect("a would-deny event");
    assert_eq!(event["port"], refused.port);
    let counters: Value = daemon.stop()["counters"]["egress"].clone();
    assert_eq!(counters["would_deny"], 1, "{counters}");
    assert_eq!(counters["denied"], 0, "{counters}");
}
