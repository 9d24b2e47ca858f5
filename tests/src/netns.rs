//! Test hosts: network namespaces joined by a veth pair, with addresses from the benchmarking
//! ranges (198.18.0.0/15, 2001:db8::/32). Everything is removed on drop, even after a failure.

use std::{fs::File, os::unix::process::CommandExt, path::PathBuf, process::Command};

use nix::sched::{setns, CloneFlags};

/// One namespace created with `ip netns add`, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        // A namespace left over by a killed run is removed first.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", name]);
        NetNs {
            name: name.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// Moves the calling thread into this namespace (network namespaces are per thread).
    pub fn enter_current_thread(&self) {
        let file = File::open(self.path()).expect("open netns");
        setns(file, CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// Makes `command` start inside this namespace (network only: mounts stay the host's, so
    /// bpffs and the cgroup hierarchy are the real ones).
    pub fn apply_to(&self, command: &mut Command) {
        let file = File::open(self.path()).expect("open netns");
        // SAFETY: setns(2) is async-signal-safe, and the fd was opened before the fork.
        unsafe {
            command.pre_exec(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {} failed: {status}", args.join(" "));
}

/// A client namespace and a guard namespace joined by veth `pgc<id>` / `pgg<id>`:
/// client 198.18.0.1 (and any extras) and 2001:db8::1, guard 198.18.0.2 and 2001:db8::2.
pub struct Topology {
    pub client: NetNs,
    pub guard: NetNs,
    pub guard_if: String,
}

pub const GUARD_V4: &str = "198.18.0.2";
pub const GUARD_V6: &str = "2001:db8::2";

impl Topology {
    /// `extra_client_addrs` are added to the client side too (CIDR notation).
    pub fn new(tag: &str, extra_client_addrs: &[&str]) -> Topology {
        let id = format!("{tag}{}", std::process::id() % 10000);
        let client = NetNs::new(&format!("pgc-{id}"));
        let guard = NetNs::new(&format!("pgg-{id}"));
        let client_if = format!("pgc{id}");
        let guard_if = format!("pgg{id}");
        client.ip(&[
            "link", "add", &client_if, "type", "veth", "peer", "name", &guard_if,
        ]);
        client.ip(&["link", "set", &guard_if, "netns", &guard.name]);
        for (ns, ifname, v4, v6) in [
            (&client, &client_if, "198.18.0.1/24", "2001:db8::1/64"),
            (&guard, &guard_if, "198.18.0.2/24", "2001:db8::2/64"),
        ] {
            ns.ip(&["link", "set", "lo", "up"]);
            ns.ip(&["addr", "add", v4, "dev", ifname]);
            ns.ip(&["-6", "addr", "add", v6, "dev", ifname, "nodad"]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        for addr in extra_client_addrs {
            if addr.contains(':') {
                client.ip(&["-6", "addr", "add", addr, "dev", &client_if, "nodad"]);
            } else {
                client.ip(&["addr", "add", addr, "dev", &client_if]);
            }
        }
        Topology {
            client,
            guard,
            guard_if,
        }
    }
}
