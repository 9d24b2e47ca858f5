//! A reload is all or nothing. The daemon runs bind rules, XDP lists, the egress allow-list for a
//! guarded cgroup and the L7 proxy. Then the last map a reload writes (`EGRESS_CONFIG`, the egress
//! mode) is frozen, so the kernel itself refuses that write, and a reload that changes every
//! family (and adds a proxy key) fails in its last step. Every kernel map then holds exactly what
//! it held before, the proxy still refuses the new key, and the old bind rule is enforced.
//! A reload that leaves the frozen map's content as it is then applies in full. Before all that,
//! a reload with a list longer than its map holds is refused before any map is touched.

use std::{
    io::BufReader,
    net::{Ipv4Addr, SocketAddr, TcpStream},
};

use nix::errno::Errno;
use proxyguard_tests::{
    bpf_map, cgroup::TestCgroup, l7::new_key, net, require_root, upstream::request,
    upstream::upstream, Daemon,
};

struct Rules<'a> {
    bind_allow: &'a str,
    xdp_allow: &'a str,
    egress_mode: &'a str,
    egress_allow: &'a str,
}

fn config(
    cgroup: &str,
    upstream: u16,
    bind_port: u16,
    rules: &Rules,
    keys: &[(&str, &str)],
) -> String {
    let mut text = format!(
        "[guarded]\ncgroup = \"{cgroup}\"\n\n\
         [[bind.rules]]\nport = {bind_port}\nallow = [\"{}\"]\n\n\
         [xdp]\nports = [{bind_port}]\nallow = [\"{}\"]\n\n\
         [egress]\nmode = \"{}\"\nallow = [\"{}\"]\ndns = [\"127.0.0.53\"]\n\n\
         [watch]\nenabled = false\n\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n",
        rules.bind_allow, rules.xdp_allow, rules.egress_mode, rules.egress_allow
    );
    for (name, hash) in keys {
        text.push_str(&format!(
            "\n[[proxy.keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n"
        ));
    }
    text
}

fn status(listen: SocketAddr, key: &str) -> u16 {
    let mut conn = BufReader::new(TcpStream::connect(listen).unwrap());
    request(&mut conn, key).unwrap()
}

#[test]
fn a_reload_refused_in_its_last_step_changes_nothing() {
    require_root();
    let upstream = upstream();
    let bind_port = net::free_port();
    let cgroup = TestCgroup::create("rollback");
    let (old_key, old_hash) = new_key();
    let (new_key_text, new_hash) = new_key();
    let before = Rules {
        bind_allow: "127.0.0.1/32",
        xdp_allow: "198.18.0.0/24",
        egress_mode: "monitor",
        egress_allow: "127.0.0.1:4242",
    };
    let changed = Rules {
        bind_allow: "127.0.0.2/32",
        xdp_allow: "198.18.1.0/24",
        egress_mode: "enforce",
        egress_allow: "198.18.2.0/24:443",
    };
    let mut daemon = Daemon::start(&config(
        &cgroup.relative,
        upstream,
        bind_port,
        &before,
        &[("old", &old_hash)],
    ));
    let listen: SocketAddr = daemon.ready["proxy"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let hooks: Vec<&str> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["hook"].as_str())
        .collect();
    assert!(hooks.contains(&"cgroup/bind4"), "{hooks:?}");
    assert!(hooks.contains(&"cgroup/connect4"), "{hooks:?}");
    let on_127_2 = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), bind_port));
    assert_eq!(net::try_bind(on_127_2), Err(Errno::EPERM));

    let maps = bpf_map::dump_rule_maps(&daemon.pin_dir);
    for name in [
        "BIND_PORTS",
        "BIND_ALLOW_V4",
        "XDP_ALLOW_V4",
        "XDP_CONFIG",
        "EGRESS_ALLOW_V4",
        "EGRESS_CGROUPS",
        "EGRESS_CONFIG",
    ] {
        assert!(
            maps.get(name).is_some_and(|m| !m.is_empty()),
            "{name} is empty or missing: {:?}",
            maps.keys()
        );
    }

    // A list longer than its map holds (XDP_ALLOW_V4 holds 16384 prefixes) is refused before any
    // map is touched.
    let too_many: Vec<String> = (0..=16384u32)
        .map(|i| format!("\"{}/32\"", Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    let oversized = config(
        &cgroup.relative,
        upstream,
        bind_port,
        &changed,
        &[("old", &old_hash)],
    )
    .replace(
        &format!("allow = [\"{}\"]", changed.xdp_allow),
        &format!("allow = [{}]", too_many.join(", ")),
    );
    let refused = daemon.reload_with(&oversized);
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("xdp.allow") && error.contains("at most 16384"),
        "{error}"
    );
    assert_eq!(bpf_map::dump_rule_maps(&daemon.pin_dir), maps);

    bpf_map::freeze(&daemon.pin_dir.join("maps/EGRESS_CONFIG")).expect("freeze EGRESS_CONFIG");

    let both = [("old", old_hash.as_str()), ("new", new_hash.as_str())];
    let refused = daemon.reload_with(&config(
        &cgroup.relative,
        upstream,
        bind_port,
        &changed,
        &both,
    ));
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(error.contains("EGRESS_CONFIG"), "{error}");

    assert_eq!(
        bpf_map::dump_rule_maps(&daemon.pin_dir),
        maps,
        "a map changed although the reload was refused"
    );
    assert_eq!(net::try_bind(on_127_2), Err(Errno::EPERM));
    assert_eq!(status(listen, &old_key), 200);
    assert_eq!(
        status(listen, &new_key_text),
        401,
        "the proxy took the refused config"
    );

    // The same changes with the egress mode left as it is: the frozen map needs no write, so the
    // reload applies, kernel and proxy alike.
    let applied = Rules {
        egress_mode: "monitor",
        ..changed
    };
    let reloaded = daemon.reload_with(&config(
        &cgroup.relative,
        upstream,
        bind_port,
        &applied,
        &both,
    ));
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let now = bpf_map::dump_rule_maps(&daemon.pin_dir);
    for name in ["BIND_ALLOW_V4", "XDP_ALLOW_V4", "EGRESS_ALLOW_V4"] {
        assert_ne!(now[name], maps[name], "{name} did not change");
    }
    assert_eq!(now["EGRESS_CONFIG"], maps["EGRESS_CONFIG"]);
    assert_eq!(net::try_bind(on_127_2), Ok(()));
    assert_eq!(status(listen, &new_key_text), 200);
    drop(daemon);
    drop(cgroup);
}
