//! Bind rules, end to end: the real daemon attaches bind4/bind6 at the cgroup v2 root, and real
//! bind(2) calls from this process are refused or allowed.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use nix::errno::Errno;
use proxyguard_tests::{cgroup::TestCgroup, in_vm, net, require_root, Daemon};

fn config(port: u16, mode: &str, allow: &str) -> String {
    format!("[bind]\nmode = \"{mode}\"\n\n[[bind.rules]]\nport = {port}\nallow = [{allow}]\n")
}

const LOOPBACK: &str = r#""127.0.0.1/32", "::1/128""#;

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

#[test]
fn wildcard_bind_of_guarded_port_is_refused_with_an_event() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&config(port, "enforce", LOOPBACK));
    let programs: Vec<_> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(programs, ["bind_rule_v4", "bind_rule_v6"]);

    assert_eq!(
        net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)),
        Err(Errno::EPERM)
    );
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied event");
    assert_eq!(event["port"], port);
    assert_eq!(event["addr"], "0.0.0.0");
    assert_eq!(event["family"], "ipv4");
    assert_eq!(event["pid"], std::process::id());
    assert_eq!(event["uid"], 0);

    assert_eq!(
        net::try_bind(v6(Ipv6Addr::UNSPECIFIED, port)),
        Err(Errno::EPERM)
    );
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied event");
    assert_eq!(event["addr"], "::");
    assert_eq!(event["family"], "ipv6");

    let stopping = daemon.stop();
    assert_eq!(stopping["counters"]["bind"]["denied"], 2);
}

#[test]
fn loopback_bind_of_guarded_port_is_allowed() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&config(port, "enforce", LOOPBACK));
    assert_eq!(net::try_bind(v4(Ipv4Addr::LOCALHOST, port)), Ok(()));
    assert_eq!(net::try_bind(v6(Ipv6Addr::LOCALHOST, port)), Ok(()));
    // On a dual-stack socket a v4-mapped address binds IPv4, so the IPv4 rules judge it.
    assert_eq!(
        net::try_bind_dual_stack(v6(Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port)),
        Ok(())
    );
    assert_eq!(
        net::try_bind_dual_stack(v6(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), port)),
        Err(Errno::EPERM)
    );
    let mapped = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied event");
    assert_eq!(mapped["addr"], "::ffff:0.0.0.0");
    // The sentinel: one more denied bind, on IPv4's 0.0.0.0. Bind events leave the kernel through
    // one ring in order, so once its event arrives, a denial of the loopback binds above would
    // have arrived before it.
    assert_eq!(
        net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)),
        Err(Errno::EPERM)
    );
    let records = daemon.records_until(|e| e["kind"] == "bind_denied" && e["addr"] == "0.0.0.0");
    let others = &records[..records.len() - 1];
    assert!(
        others.iter().all(|e| e["kind"] != "bind_denied"),
        "unexpected denial: {others:?}"
    );
    let stopping = daemon.stop();
    assert_eq!(stopping["counters"]["bind"]["allowed"], 3);
    // The mapped 0.0.0.0 and the sentinel.
    assert_eq!(stopping["counters"]["bind"]["denied"], 2);
}

#[test]
fn other_ports_are_untouched() {
    require_root();
    let port = net::free_port();
    let other = net::free_port();
    assert_ne!(port, other);
    let _daemon = Daemon::start(&config(port, "enforce", LOOPBACK));
    assert_eq!(net::try_bind(v4(Ipv4Addr::UNSPECIFIED, other)), Ok(()));
    assert_eq!(net::try_bind(v6(Ipv6Addr::UNSPECIFIED, other)), Ok(()));
}

#[test]
fn monitor_mode_allows_and_reports() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&config(port, "monitor", LOOPBACK));
    assert_eq!(daemon.ready["programs"][0]["mode"], "monitor");
    assert_eq!(net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)), Ok(()));
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_would_deny")
        .expect("a would-deny event");
    assert_eq!(event["port"], port);
    let stopping = daemon.stop();
    assert_eq!(stopping["counters"]["bind"]["would_deny"], 1);
    assert_eq!(stopping["counters"]["bind"]["denied"], 0);
}

#[test]
fn cidr_rules_and_reload_take_effect_without_restart() {
    require_root();
    let port = net::free_port();
    let mut daemon = Daemon::start(&config(port, "enforce", LOOPBACK));
    assert_eq!(
        net::try_bind(v4(Ipv4Addr::new(127, 0, 0, 2), port)),
        Err(Errno::EPERM)
    );

    let reloaded = daemon.reload_with(&config(port, "enforce", r#""127.0.0.0/8", "::1/128""#));
    assert_eq!(reloaded["kind"], "reloaded");
    assert_eq!(net::try_bind(v4(Ipv4Addr::new(127, 0, 0, 2), port)), Ok(()));
    assert_eq!(
        net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)),
        Err(Errno::EPERM)
    );

    // An invalid config is refused, and the rules in force stay.
    let refused = daemon.reload_with(&config(0, "enforce", LOOPBACK));
    assert_eq!(refused["kind"], "reload_failed");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("bind.rules[0].port"),
        "{refused}"
    );
    assert_eq!(
        net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)),
        Err(Errno::EPERM)
    );
    assert_eq!(net::try_bind(v4(Ipv4Addr::new(127, 0, 0, 2), port)), Ok(()));
}

#[test]
fn only_the_owner_cgroup_may_bind_an_owned_port() {
    require_root();
    let port = net::free_port();
    let owner = TestCgroup::create("owner");
    let config = format!(
        "[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\nowner = \"{}\"\n",
        owner.relative
    );
    let mut daemon = Daemon::start(&config);

    // Outside the owner cgroup even an allowed address is refused.
    assert_eq!(
        net::try_bind(v4(Ipv4Addr::LOCALHOST, port)),
        Err(Errno::EPERM)
    );
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied event");
    assert_eq!(event["reason"], "not_owner");
    {
        let _inside = owner.enter();
        assert_eq!(net::try_bind(v4(Ipv4Addr::LOCALHOST, port)), Ok(()));
        // The owner still obeys the address rules.
        assert_eq!(
            net::try_bind(v4(Ipv4Addr::UNSPECIFIED, port)),
            Err(Errno::EPERM)
        );
    }
    let event = daemon
        .wait_for(|e| e["kind"] == "bind_denied")
        .expect("a bind_denied event");
    assert_eq!(event["reason"], "address");

    // A restarted owner (same path, new cgroup id) is followed.
    owner.recreate();
    let _inside = owner.enter();
    let deadline = Instant::now() + Duration::from_secs(if in_vm() { 30 } else { 10 });
    while net::try_bind(v4(Ipv4Addr::LOCALHOST, port)) != Ok(()) {
        assert!(
            Instant::now() < deadline,
            "the re-created owner cgroup was not followed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
