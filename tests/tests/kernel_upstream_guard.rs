//! The upstream guard, end to end: the daemon guards a real upstream's port, this test process
//! joins a cgroup of its own (outside the daemon's) and its connects to that port, by every local
//! way in, get EPERM and an event, while a request through the guard is still served. The rule
//! outlives the daemon, and a daemon restarted in a new cgroup (as systemd restarts a unit)
//! connects again while its old cgroup no longer may. Monitor mode lets connects through and says
//! so; a reload switches the mode and the allowed cgroups; an upgrade swaps the programs inside
//! their pinned links.

use std::{
    io::BufReader,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use proxyguard_tests::{
    cgroup::TestCgroup, daemon::test_pin_dir, l7::new_key, proxyguard_bin, require_root,
    upstream::request, upstream::upstream, Daemon,
};

const EPERM: i32 = libc::EPERM;

fn config(upstream: u16, mode: &str, hash: &str) -> String {
    config_allowing(upstream, mode, "", hash)
}

/// With `allow_cgroups = [allow]` when `allow` is not empty.
fn config_allowing(upstream: u16, mode: &str, allow: &str, hash: &str) -> String {
    let allow = if allow.is_empty() {
        String::new()
    } else {
        format!("allow_cgroups = [\"{allow}\"]\n")
    };
    format!(
        "[bind]\nenabled = false\n\n[egress]\nenabled = false\n\n[watch]\nenabled = false\n\n\
         [upstream_guard]\nmode = \"{mode}\"\n{allow}\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://127.0.0.1:{upstream}\"\n\n\
         [[proxy.keys]]\nname = \"agent\"\nsha256 = \"{hash}\"\n"
    )
}

fn connect(addr: SocketAddr) -> Result<(), i32> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn addr(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(text.parse().unwrap(), port)
}

/// TCP Fast Open: data and connect in one `sendto(MSG_FASTOPEN)` on an unconnected socket, which
/// never calls connect(2). The errno, or 0 when the send went out.
fn fast_open(port: u16) -> i32 {
    // SAFETY: plain socket calls on a socket this function owns and closes; `sa` outlives them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let errno = if sent < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        };
        libc::close(fd);
        errno
    }
}

/// A chat request through the guard: its status.
fn through_guard(daemon: &Daemon, key: &str) -> u16 {
    let listen: SocketAddr = daemon.ready["proxy"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = BufReader::new(TcpStream::connect(listen).unwrap());
    request(&mut conn, key).unwrap()
}

/// Every local way to the upstream's port: loopback v4 and v6, another 127/8 address, the
/// unspecified address, and a v4-mapped address on an IPv6 socket.
fn ways_in(port: u16) -> Vec<SocketAddr> {
    [
        "127.0.0.1",
        "::1",
        "127.0.0.2",
        "0.0.0.0",
        "::ffff:127.0.0.1",
    ]
    .iter()
    .map(|ip| addr(ip, port))
    .collect()
}

#[test]
fn only_proxyguard_reaches_the_upstream() {
    require_root();
    let port = upstream();
    // An IPv6 listener on the same port, so a refused ::1 connect is the rule's doing.
    let _v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, port)).unwrap();
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let other_port = other.local_addr().unwrap().port();
    let (key, hash) = new_key();
    let outside = TestCgroup::create("upstream-outside");
    let pin_dir = test_pin_dir();
    let mut daemon =
        Daemon::start_full(&config(port, "enforce", &hash), &[], None, pin_dir.clone());
    let programs: Vec<(&str, &str)> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["hook"].as_str().unwrap()))
        .collect();
    assert_eq!(
        programs,
        [
            ("upstream_connect_v4", "cgroup/connect4"),
            ("upstream_connect_v6", "cgroup/connect6")
        ]
    );

    {
        let _inside = outside.enter();
        for to in ways_in(port) {
            assert_eq!(
                connect(to),
                Err(EPERM),
                "{to} from outside proxyguard's cgroup"
            );
        }
        assert_eq!(fast_open(port), EPERM, "TCP Fast Open, no connect(2) call");
        assert_eq!(
            connect(addr("127.0.0.1", other_port)),
            Ok(()),
            "another port is not the rule's business"
        );
        // The client is outside too; proxyguard's own connect upstream is allowed.
        assert_eq!(
            through_guard(&daemon, &key),
            200,
            "served through the guard"
        );
    }
    let event = daemon
        .wait_for(|e| e["kind"] == "upstream_connect_denied")
        .expect("an upstream_connect_denied event");
    assert_eq!(event["pid"], std::process::id());
    assert_eq!(event["port"], port);
    assert_eq!(event["addr"], "127.0.0.1");
    assert_eq!(event["family"], "ipv4");
    assert_eq!(event["mode"], "enforce");
    assert_eq!(event["severity"], "high");
    let v6 = daemon
        .wait_for(|e| e["kind"] == "upstream_connect_denied" && e["addr"] == "::1")
        .expect("the ::1 denial");
    assert_eq!(v6["family"], "ipv6");

    // The daemon is gone (a crash): the pinned rule keeps refusing everyone else.
    daemon.kill_hard();
    {
        let _inside = outside.enter();
        assert_eq!(
            connect(addr("127.0.0.1", port)),
            Err(EPERM),
            "lapsed with the daemon"
        );
    }

    // Restarted in a new cgroup, as systemd restarts a unit: the new daemon writes its own
    // cgroup id, adopts the pinned programs and reaches the upstream; the cgroup the old daemon
    // ran in (this test's own) no longer may.
    let restarted = TestCgroup::create("upstream-restarted");
    let mut second = {
        let _inside = restarted.enter();
        Daemon::start_full(&config(port, "enforce", &hash), &[], None, pin_dir)
    };
    let programs = second.ready["programs"].as_array().unwrap().clone();
    assert!(
        programs.iter().all(|p| p["adopted"] == true),
        "{programs:?}"
    );
    assert_eq!(
        through_guard(&second, &key),
        200,
        "the restarted guard is served"
    );
    assert_eq!(
        connect(addr("127.0.0.1", port)),
        Err(EPERM),
        "the old daemon's cgroup kept its allowance"
    );
    assert!(second
        .wait_for(|e| e["kind"] == "upstream_connect_denied")
        .is_some());
    let counters = second.stop()["counters"]["upstream_guard"].clone();
    // Five ways in, Fast Open, the crash check and the old cgroup's connect; two requests
    // allowed (and counted across the crash, in the pinned counters).
    assert_eq!(counters["denied"], 8, "{counters}");
    assert!(counters["allowed"].as_u64().unwrap() >= 2, "{counters}");
    assert_eq!(counters["would_deny"], 0, "{counters}");
}

#[test]
fn monitor_mode_lets_connects_through_and_reports_them() {
    require_root();
    let port = upstream();
    let (key, hash) = new_key();
    let outside = TestCgroup::create("upstream-monitor");
    let mut daemon = Daemon::start(&config(port, "monitor", &hash));
    {
        let _inside = outside.enter();
        assert_eq!(
            connect(addr("127.0.0.1", port)),
            Ok(()),
            "monitor refuses nothing"
        );
        assert_eq!(through_guard(&daemon, &key), 200);
        // `check` names a process holding a connection to the upstream from outside, and not
        // proxyguard's own connections.
        let held = TcpStream::connect(addr("127.0.0.1", port)).unwrap();
        let out = std::process::Command::new(proxyguard_bin())
            .args([
                "check",
                "--json",
                "--pid",
                &daemon.pid().to_string(),
                "--config",
            ])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let clients: Vec<&serde_json::Value> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "upstream_client")
            .collect();
        let local = held.local_addr().unwrap();
        assert_eq!(clients.len(), 1, "{clients:?}");
        assert_eq!(clients[0]["pid"], std::process::id());
        assert_eq!(
            clients[0]["subject"],
            format!("{local} -> 127.0.0.1:{port}")
        );
        assert!(
            clients[0]["detail"]
                .as_str()
                .unwrap()
                .contains(&outside.relative),
            "{clients:?}"
        );
        assert!(
            clients[0]["detail"]
                .as_str()
                .unwrap()
                .contains("the kernel's list"),
            "judged by the pinned map: {clients:?}"
        );
    }
    let event = daemon
        .wait_for(|e| e["kind"] == "upstream_connect_would_deny")
        .expect("an upstream_connect_would_deny event");
    assert_eq!(event["pid"], std::process::id());
    assert_eq!(event["port"], port);
    assert_eq!(event["mode"], "monitor");

    // A reload to enforce takes effect at once; one that allows the cgroup lets it in again.
    let reloaded = daemon.reload_with(&config(port, "enforce", &hash));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    {
        let _inside = outside.enter();
        assert_eq!(
            connect(addr("127.0.0.1", port)),
            Err(EPERM),
            "enforced after reload"
        );
    }
    let reloaded = daemon.reload_with(&config_allowing(port, "enforce", &outside.relative, &hash));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    {
        let _inside = outside.enter();
        assert_eq!(
            connect(addr("127.0.0.1", port)),
            Ok(()),
            "an allowed cgroup"
        );
    }
    let counters = daemon.stop()["counters"]["upstream_guard"].clone();
    assert_eq!(counters["would_deny"], 2, "{counters}");
    assert_eq!(counters["denied"], 1, "{counters}");
}

/// Rewrites the pin manifest as another build would have left it (another object hash).
fn pretend_another_object(pin_dir: &std::path::Path) {
    let text = std::fs::read_link(pin_dir.join("manifest")).expect("a manifest symlink");
    let mut manifest: serde_json::Value = serde_json::from_str(&text.to_string_lossy()).unwrap();
    manifest["object"] = serde_json::Value::from("0".repeat(64));
    let staged = pin_dir.join("staging").join("manifest-by-test");
    std::os::unix::fs::symlink(manifest.to_string(), &staged).unwrap();
    std::fs::rename(&staged, pin_dir.join("manifest")).unwrap();
}

#[test]
fn an_upgrade_swaps_the_programs_in_their_pinned_links() {
    require_root();
    let port = upstream();
    let (key, hash) = new_key();
    // The daemons run in a cgroup of their own, so this test's process is outside throughout.
    let service = TestCgroup::create("upstream-upgrade");
    let pin_dir = test_pin_dir();
    let start = |pin_dir: &std::path::Path| {
        let _inside = service.enter();
        Daemon::start_full(
            &config(port, "enforce", &hash),
            &[],
            None,
            pin_dir.to_owned(),
        )
    };
    let mut first = start(&pin_dir);
    let ids: Vec<u64> = first.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["program_id"].as_u64().unwrap())
        .collect();
    assert_eq!(connect(addr("127.0.0.1", port)), Err(EPERM));
    first.keep_pins();
    first.stop();
    pretend_another_object(&pin_dir);

    let second = start(&pin_dir);
    for program in second.ready["programs"].as_array().unwrap() {
        assert_eq!(program["replaced"], true, "{program}");
        assert!(
            !ids.contains(&program["program_id"].as_u64().unwrap()),
            "{program}"
        );
    }
    assert_eq!(
        connect(addr("127.0.0.1", port)),
        Err(EPERM),
        "refused after the swap"
    );
    assert_eq!(through_guard(&second, &key), 200, "served after the swap");
    let counters = second.stop()["counters"]["upstream_guard"].clone();
    assert_eq!(counters["denied"], 2, "{counters}");
}
