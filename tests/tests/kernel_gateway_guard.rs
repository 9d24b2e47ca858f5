//! The kernel half of "zero-secret LiteLLM", end to end: with `[egress] policy = "gateway-only"`
//! this test process, in the guarded cgroup, reaches the provider gateway and nothing else (a
//! "provider" on 127.0.0.2 gets EPERM and an `egress_denied` line); the gateway's port is
//! refused to a process outside both the guarded cgroup and proxyguard's (EPERM and a
//! `gateway_connect_denied` line), while proxyguard's own cgroup reaches the gateway and the
//! provider alike; a real HTTPS provider on loopback is EPERM straight and 200 through the
//! gateway, which adds its key. `status` and `egress list` show the policy and the gateway guard. Pins of the
//! one-destination layout (an older build) are recreated and the programs swapped in their
//! links, with the gateway refused to outsiders before and after.
//!
//! The gateway is the daemon's own (`[providers] listen` with one provider configured); nothing
//! is asked of the provider here, so its `base_url` only has to name the "provider" listener.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use proxyguard_tests::{
    bpf, cgroup::TestCgroup, daemon::test_pin_dir, https_provider::HttpsProvider, proxyguard_bin,
    require_root, Daemon,
};
use serde_json::Value;

const EPERM: i32 = libc::EPERM;

fn connect(addr: SocketAddr) -> Result<(), i32> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn send_udp(addr: SocketAddr) -> Result<(), i32> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    socket
        .send_to(b"probe", addr)
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn addr(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(text.parse().unwrap(), port)
}

/// The daemon's provider gateway: a free loopback port (the kernel guards the port the config
/// names, so it cannot be 0) and one provider, whose key file lives as long as this.
struct Gateway {
    addr: SocketAddr,
    text: String,
    key_dir: tempfile::TempDir,
    /// Only for its CA: the busybox VM has no system roots, and a provider needs trust anchors.
    trust: HttpsProvider,
}

impl Gateway {
    fn new() -> Gateway {
        let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let key_dir = tempfile::tempdir().unwrap();
        let key = key_dir.path().join("provider.key");
        std::fs::write(&key, "sk-provider-test\n").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        Gateway {
            addr,
            text: addr.to_string(),
            key_dir,
            trust: HttpsProvider::start("sk-provider-test", None),
        }
    }

    fn key_file(&self) -> std::path::PathBuf {
        self.key_dir.path().join("provider.key")
    }

    fn config(&self, provider: SocketAddr) -> String {
        format!(
            "[providers]\nlisten = \"{}\"\n\n[[providers.routes]]\nname = \"p\"\n\
             base_url = \"https://{provider}/v1\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\n",
            self.text,
            self.key_file().display(),
            self.trust.ca.display()
        )
    }
}

/// One HTTP/1.1 POST to the gateway from the calling thread (so from the cgroup it is in): the
/// status line's code.
fn post_through_gateway(gateway: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&gateway, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {gateway}\r\nContent-Type: application/json\r\n\
         Authorization: Bearer placeholder\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn config(guarded: &str, gateway: &Gateway, provider: SocketAddr) -> String {
    format!(
        "[guarded]\ncgroup = \"{guarded}\"\n\n[bind]\nenabled = false\n\n[watch]\nenabled = false\n\n\
         [egress]\npolicy = \"gateway-only\"\ndns = [\"127.0.0.53\"]\n\n\
         [upstream_guard]\nmode = \"enforce\"\n\n[proxy]\nenabled = false\n\n{}",
        gateway.config(provider)
    )
}

/// `proxyguard ARGS --json --config PATH`, parsed.
fn cli_json(daemon: &Daemon, args: &[&str]) -> Value {
    let out = std::process::Command::new(proxyguard_bin())
        .args(args)
        .args(["--json", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_guarded_service_reaches_providers_only_through_the_gateway() {
    require_root();
    // The daemon's gateway on loopback, and a "provider" on another loopback address: without
    // the rules both would accept.
    let gateway = Gateway::new();
    let gateway_port = gateway.addr.port();
    let gateway_text = gateway.text.clone();
    let provider = TcpListener::bind(("127.0.0.2", 0)).unwrap();
    let provider = provider.local_addr().unwrap();
    // Another listener on loopback (proxyguard's front, say): not the gateway.
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let other = other.local_addr().unwrap();

    let service = TestCgroup::create("gw-proxyguard");
    let guarded = TestCgroup::create("gw-guarded");
    let outside = TestCgroup::create("gw-outside");
    let mut daemon = {
        // The daemon runs in a cgroup of its own, as under systemd.
        let _inside = service.enter();
        Daemon::start(&config(&guarded.relative, &gateway, provider))
    };
    let programs: Vec<&str> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        programs.contains(&"egress_connect_v4") && programs.contains(&"upstream_connect_v4"),
        "{programs:?}"
    );

    {
        let _inside = guarded.enter();
        assert_eq!(
            connect(provider),
            Err(EPERM),
            "straight to the provider from the guarded service"
        );
        assert_eq!(
            connect(addr("127.0.0.1", gateway_port)),
            Ok(()),
            "through the gateway"
        );
        assert_eq!(
            connect(other),
            Err(EPERM),
            "gateway-only: no other loopback port either"
        );
        assert_eq!(
            connect(addr("127.0.0.2", gateway_port)),
            Err(EPERM),
            "the gateway's port on another loopback address is not the gateway"
        );
        assert_eq!(
            send_udp(addr("127.0.0.53", 53)),
            Ok(()),
            "DNS to the resolver"
        );
        assert_eq!(send_udp(addr("127.0.0.53", 5353)), Err(EPERM), "not DNS");
    }
    let denied = daemon
        .wait_for(|e| e["kind"] == "egress_denied")
        .expect("an egress_denied event");
    assert_eq!(denied["pid"], std::process::id());
    assert_eq!(denied["addr"], "127.0.0.2");
    assert_eq!(denied["port"], provider.port());

    {
        let _inside = outside.enter();
        for to in [
            addr("127.0.0.1", gateway_port),
            addr("127.0.0.2", gateway_port),
            addr("::ffff:127.0.0.1", gateway_port),
        ] {
            assert_eq!(
                connect(to),
                Err(EPERM),
                "{to}: the gateway from outside the guarded service and proxyguard"
            );
        }
        assert_eq!(
            connect(provider),
            Ok(()),
            "the egress rule judges the guarded service alone"
        );
    }
    let event = daemon
        .wait_for(|e| e["kind"] == "gateway_connect_denied")
        .expect("a gateway_connect_denied event");
    assert_eq!(event["pid"], std::process::id());
    assert_eq!(event["port"], gateway_port);
    assert_eq!(event["destination"], "gateway");
    assert_eq!(event["mode"], "enforce");

    {
        // proxyguard's own cgroup: the gateway (its own listener) and the provider's host.
        let _inside = service.enter();
        assert_eq!(connect(addr("127.0.0.1", gateway_port)), Ok(()));
        assert_eq!(
            connect(provider),
            Ok(()),
            "proxyguard itself reaches the provider"
        );
    }

    let status = cli_json(&daemon, &["status"]);
    assert_eq!(status["egress"]["policy"], "gateway-only", "{status}");
    assert_eq!(
        status["egress"]["gateway"]["listen"], gateway_text,
        "{status}"
    );
    assert_eq!(
        status["egress"]["gateway"]["kernel_guard"], true,
        "{status}"
    );
    let list = cli_json(&daemon, &["egress", "list"]);
    assert_eq!(list["policy"], "gateway-only", "{list}");
    assert_eq!(list["gateway"], gateway_text, "{list}");

    let counters = daemon.stop()["counters"].clone();
    // The provider, the other port, the gateway port on 127.0.0.2 and the UDP send.
    assert_eq!(counters["egress"]["denied"], 4, "{counters}");
    // Three ways in from outside.
    assert_eq!(counters["upstream_guard"]["denied"], 3, "{counters}");
}

#[test]
fn a_reload_back_to_the_allow_list_restores_it() {
    require_root();
    let gateway = Gateway::new();
    let provider = TcpListener::bind(("127.0.0.2", 0)).unwrap();
    let provider = provider.local_addr().unwrap();
    // A real HTTPS provider on loopback, behind the gateway as `real`.
    let https = HttpsProvider::start("sk-provider-test", None);
    let https_route = format!(
        "[[providers.routes]]\nname = \"real\"\nbase_url = \"{}/v1\"\nkey_file = \"{}\"\n\
         ca_file = \"{}\"\n\n",
        https.base_url(),
        gateway.key_file().display(),
        https.ca.display()
    );
    let guarded = TestCgroup::create("gw-reload");
    let mut daemon = Daemon::start(&format!(
        "{}{https_route}",
        config(&guarded.relative, &gateway, provider)
    ));
    {
        let _inside = guarded.enter();
        assert_eq!(connect(provider), Err(EPERM), "gateway-only");
        assert_eq!(
            connect(addr("127.0.0.1", https.port)),
            Err(EPERM),
            "the HTTPS provider, straight"
        );
        assert_eq!(
            post_through_gateway(gateway.addr, "/real/v1/chat/completions"),
            200,
            "the same provider through the gateway, with the key added on the way"
        );
    }
    assert_eq!(https.seen().len(), 1, "one request reached the provider");
    assert!(https.seen()[0].key_ok, "with the real key");
    let allow_list = format!(
        "{}{https_route}",
        config(&guarded.relative, &gateway, provider)
    )
    .replace(
        "policy = \"gateway-only\"",
        &format!("policy = \"allow-list\"\nallow = [\"{provider}\"]"),
    );
    let reloaded = daemon.reload_with(&allow_list);
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    {
        let _inside = guarded.enter();
        assert_eq!(connect(provider), Ok(()), "listed again");
        assert_eq!(
            connect(gateway.addr),
            Ok(()),
            "the guarded service keeps the gateway under either policy"
        );
    }
    // A gateway-only config with targets left in `allow` is refused; the old one stays.
    let refused = daemon.reload_with(&allow_list.replace("allow-list", "gateway-only"));
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    {
        let _inside = guarded.enter();
        assert_eq!(connect(provider), Ok(()), "the allow-list stays in force");
    }
    daemon.stop();
}

/// Replaces the pinned map `name` by an empty one of layout 1's sizes, and makes the manifest
/// name another object: the pins an older build (one destination, a `u32` per cgroup) left.
fn pin_layout_1(pin_dir: &std::path::Path) {
    // (name, BPF_MAP_TYPE_HASH or _ARRAY, key size, value size, max entries) as layout 1 had them.
    for (name, map_type, key, value, max) in [
        ("UPSTREAM_CGROUPS", 1, 8, 4, 64),
        ("UPSTREAM_CONFIG", 2, 4, 8, 1),
    ] {
        let pin = pin_dir.join("maps").join(name);
        std::fs::remove_file(&pin).unwrap();
        bpf::pin_map(&pin, map_type, key, value, max).expect("pin a layout-1 map");
    }
    let text = std::fs::read_link(pin_dir.join("manifest")).expect("a manifest symlink");
    let mut manifest: Value = serde_json::from_str(&text.to_string_lossy()).unwrap();
    manifest["object"] = Value::from("0".repeat(64));
    let staged = pin_dir.join("staging").join("manifest-by-test");
    std::os::unix::fs::symlink(manifest.to_string(), &staged).unwrap();
    std::fs::rename(&staged, pin_dir.join("manifest")).unwrap();
}

#[test]
fn pins_of_the_one_destination_layout_are_recreated_and_the_programs_swapped() {
    require_root();
    let gateway = Gateway::new();
    let provider = TcpListener::bind(("127.0.0.2", 0)).unwrap();
    let provider = provider.local_addr().unwrap();
    let service = TestCgroup::create("gw-upgrade-svc");
    let guarded = TestCgroup::create("gw-upgrade-guarded");
    let outside = TestCgroup::create("gw-upgrade-outside");
    let pin_dir = test_pin_dir();
    let start = |pin_dir: &std::path::Path| {
        let _inside = service.enter();
        Daemon::start_full(
            &config(&guarded.relative, &gateway, provider),
            &[],
            None,
            pin_dir.to_owned(),
        )
    };
    let mut first = start(&pin_dir);
    first.keep_pins();
    let before: Vec<u64> = first.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["program_id"].as_u64())
        .collect();
    first.stop();
    pin_layout_1(&pin_dir);

    let second = start(&pin_dir);
    for program in second.ready["programs"].as_array().unwrap() {
        if program["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("upstream_"))
        {
            assert_eq!(program["replaced"], true, "{program}");
            assert_eq!(program["adopted"], false, "{program}");
            assert!(
                !before.contains(&program["program_id"].as_u64().unwrap()),
                "{program}"
            );
        }
    }
    assert!(
        second
            .log_lines()
            .iter()
            .any(|l| l.contains("UPSTREAM_CGROUPS") && l.contains("a new map replaces it")),
        "the recreation is logged"
    );
    {
        let _inside = outside.enter();
        assert_eq!(connect(gateway.addr), Err(EPERM), "refused after the swap");
    }
    {
        let _inside = guarded.enter();
        assert_eq!(
            connect(gateway.addr),
            Ok(()),
            "the guarded service after the swap"
        );
    }
    // One refusal: the outsider after the swap (the first daemon refused nobody).
    let counters = second.stop()["counters"]["upstream_guard"].clone();
    assert_eq!(counters["denied"], 1, "{counters}");
}
