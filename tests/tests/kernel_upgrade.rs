//! Upgrades with no gap: a daemon started on pins that another object left (the manifest names
//! another object hash, or a pinned map has another layout) replaces the pinned programs in
//! place while a loop keeps trying a forbidden bind, and that bind never succeeds. Maps of the
//! same layout keep their counters; a map of another layout is recreated, not adopted.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::errno::Errno;
use proxyguard_tests::{
    bpf,
    daemon::remove_pins,
    guarded::{eventually, GuardedProcess},
    in_vm, net, require_root, Daemon,
};
use serde_json::Value;

fn wildcard(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

fn bind_rule(port: u16) -> String {
    format!("[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\n")
}

/// Every family that attaches here: bind and egress (cgroup links), XDP on `lo`, and the environ
/// watch (tracepoints natively, LSM in the VM) over a guarded shell.
fn every_family(port: u16, xdp_port: u16, cgroup: &str) -> String {
    format!(
        "[guarded]\ncgroup = \"{cgroup}\"\n\n{}\n[xdp]\ninterfaces = [\"lo\"]\nports = [{xdp_port}]\n",
        bind_rule(port)
    )
}

/// Removes the pins if the test fails while no daemon owns them.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        remove_pins(&self.0);
    }
}

/// Tries an operation every 2 ms until stopped; counts refusals (EPERM) and successes.
struct Attempts {
    stop: Arc<AtomicBool>,
    /// Attempts made so far, so a test can wait for more of them (a count, not a pause).
    made: Arc<AtomicU64>,
    thread: Option<JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    refused: u64,
    succeeded: u64,
    other: Vec<Errno>,
}

impl Attempts {
    fn start(attempt: impl Fn() -> Result<(), Errno> + Send + 'static) -> Attempts {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), made.clone());
        let thread = std::thread::spawn(move || {
            let mut tally = Tally::default();
            while !flag.load(Ordering::Relaxed) {
                match attempt() {
                    Err(Errno::EPERM) => tally.refused += 1,
                    Ok(()) => tally.succeeded += 1,
                    Err(errno) => tally.other.push(errno),
                }
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            tally
        });
        Attempts {
            stop,
            made,
            thread: Some(thread),
        }
    }

    /// Returns once `n` more attempts than now have been made (bounded by the test's patience).
    fn more(&self, n: u64) {
        let target = self.made.load(Ordering::Relaxed) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.made.load(Ordering::Relaxed) < target {
            assert!(std::time::Instant::now() < deadline, "the attempts stalled");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A loop of forbidden binds to `0.0.0.0:port`.
    fn bind(port: u16) -> Attempts {
        Attempts::start(move || net::try_bind(wildcard(port)))
    }

    /// A loop of opens of `pid`'s environ, from this (not allowed) process.
    fn read_environ(pid: u32) -> Attempts {
        let path = format!("/proc/{pid}/environ");
        Attempts::start(move || {
            std::fs::File::open(&path)
                .map(drop)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })
    }

    fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Attempts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lsm_available(ready: &Value) -> bool {
    ready["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "bpf-lsm" && f["available"] == true)
}

/// (program, target) → program id, from a `ready` record.
fn program_ids(ready: &Value) -> BTreeMap<(String, String), u64> {
    ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["target"].as_str().unwrap().to_owned(),
                ),
                p["program_id"].as_u64().expect("a program id"),
            )
        })
        .collect()
}

fn manifest(pin_dir: &Path) -> Value {
    let text = std::fs::read_link(pin_dir.join("manifest")).expect("a manifest symlink");
    serde_json::from_str(&text.to_string_lossy()).expect("the manifest is JSON")
}

/// Rewrites the manifest as another build would have left it.
fn write_manifest(pin_dir: &Path, manifest: &Value) {
    let staged = pin_dir.join("staging").join("manifest-by-test");
    std::os::unix::fs::symlink(manifest.to_string(), &staged).unwrap();
    std::fs::rename(&staged, pin_dir.join("manifest")).unwrap();
}

fn links(pin_dir: &Path) -> usize {
    std::fs::read_dir(pin_dir.join("links")).unwrap().count()
}

fn patience() -> Duration {
    if in_vm() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

#[test]
fn another_objects_programs_are_replaced_while_a_forbidden_bind_never_succeeds() {
    require_root();
    let guarded = GuardedProcess::start("upgrade", "exec sleep 120");
    let (port, xdp_port) = (net::free_port(), net::free_port());
    let config = every_family(port, xdp_port, &guarded.cgroup.relative);

    let mut first = Daemon::start(&config);
    let pin_dir = first.pin_dir.clone();
    let _pins = Pins(pin_dir.clone());
    let before = program_ids(&first.ready);
    let hooks: Vec<&str> = before.keys().map(|(name, _)| name.as_str()).collect();
    assert!(
        hooks.contains(&"syn_rate_limit") && hooks.contains(&"bind_rule_v4"),
        "{hooks:?}"
    );
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    first.keep_pins();
    first.stop();
    let ours = manifest(&pin_dir);
    assert_eq!(ours["format"], 1);
    assert_eq!(ours["object"].as_str().unwrap().len(), 64);
    let pinned_links = links(&pin_dir);

    // As if the pins came from another build of the same layouts.
    let mut older = ours.clone();
    older["object"] = Value::from("0".repeat(64));
    write_manifest(&pin_dir, &older);

    let binds = Attempts::bind(port);
    let reads = Attempts::read_environ(guarded.pid());
    let mut second = Daemon::start_full(&config, &[], None, pin_dir.clone());
    // Some more tries once the new daemon is up: counted, so a slow machine makes them too.
    binds.more(20);
    reads.more(20);
    let (binds, reads) = (binds.finish(), reads.finish());
    assert_eq!(
        binds.succeeded, 0,
        "the forbidden bind succeeded during the upgrade: {binds:?}"
    );
    assert!(binds.other.is_empty(), "unexpected bind errors: {binds:?}");
    assert!(binds.refused > 0, "the loop never ran");
    let refused = binds.refused;
    // Where BPF LSM works (the VM), the environ stays closed to other processes throughout too;
    // here it is only watched, and the reads succeed.
    if lsm_available(&second.ready) {
        assert_eq!(
            (reads.succeeded, reads.other.len()),
            (0, 0),
            "an environ read got through during the upgrade: {reads:?}"
        );
        assert!(reads.refused > 0);
    }

    let programs = second.ready["programs"].as_array().unwrap().clone();
    assert!(
        programs
            .iter()
            .all(|p| p["replaced"] == true && p["adopted"] == false),
        "{programs:?}"
    );
    let after = program_ids(&second.ready);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (hook, id) in &after {
        assert_ne!(before[hook], *id, "{hook:?} still runs the old program");
    }
    assert_eq!(links(&pin_dir), pinned_links, "a second link was pinned");
    assert_eq!(
        manifest(&pin_dir),
        ours,
        "the manifest names the new object"
    );
    // The old programs are gone from the kernel, not merely unpinned.
    let old: Vec<u64> = before.values().copied().collect();
    assert!(
        eventually(patience(), || old
            .iter()
            .all(|id| !bpf::program_exists(*id as u32))),
        "an old program is still loaded"
    );
    assert!(
        second.wait_for(|e| e["kind"] == "bind_denied").is_some(),
        "the replaced program's events reach the new daemon"
    );

    // The counter map kept its layout, so it kept its state: the first daemon's refusal, and
    // every refusal of the loop exactly once (old program or new, never both).
    second.keep_pins();
    let stopping = second.stop();
    assert_eq!(
        stopping["counters"]["bind"]["denied"],
        1 + refused,
        "{stopping}"
    );

    // A restart on the same object adopts again.
    let third = Daemon::start_full(&config, &[], None, pin_dir.clone());
    assert!(
        third.ready["programs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["adopted"] == true),
        "{}",
        third.ready
    );
    assert_eq!(program_ids(&third.ready), after);
}

#[test]
fn a_pinned_map_of_another_layout_is_recreated_not_adopted() {
    require_root();
    let port = net::free_port();
    let config = bind_rule(port);
    let mut first = Daemon::start(&config);
    let pin_dir = first.pin_dir.clone();
    let _pins = Pins(pin_dir.clone());
    let before = program_ids(&first.ready);
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    first.keep_pins();
    first.stop();

    // An older build's counter map: same name, another value size.
    let stats = manifest(&pin_dir)["maps"]["BIND_STATS"].clone();
    let pin = pin_dir.join("maps").join("BIND_STATS");
    std::fs::remove_file(&pin).unwrap();
    bpf::pin_map(
        &pin,
        stats["type"].as_u64().unwrap() as u32,
        stats["key_size"].as_u64().unwrap() as u32,
        2 * stats["value_size"].as_u64().unwrap() as u32,
        stats["max_entries"].as_u64().unwrap() as u32,
    )
    .expect("pin a map of another layout");

    let binds = Attempts::bind(port);
    let mut second = Daemon::start_full(&config, &[], None, pin_dir.clone());
    binds.more(20);
    let binds = binds.finish();
    assert_eq!(
        binds.succeeded, 0,
        "the forbidden bind succeeded during the swap: {binds:?}"
    );
    assert!(binds.refused > 0);
    let refused = binds.refused;
    let programs = second.ready["programs"].as_array().unwrap().clone();
    assert!(
        programs.iter().all(|p| p["replaced"] == true),
        "programs over a recreated map must not be adopted: {programs:?}"
    );
    for (hook, id) in program_ids(&second.ready) {
        assert_ne!(before[&hook], id, "{hook:?}");
    }
    assert!(
        second
            .log_lines()
            .iter()
            .any(|l| l.contains("BIND_STATS") && l.contains("a new map replaces it")),
        "the recreation is logged"
    );

    // The new map is the one in force and the one pinned: two refusals now count two.
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    second.keep_pins();
    let stopping = second.stop();
    let denied = stopping["counters"]["bind"]["denied"].as_u64().unwrap();
    assert!(
        (2..=2 + refused).contains(&denied),
        "the new map counts from zero: {stopping}"
    );

    // Its layout is now this build's: the next daemon adopts everything and the count goes on.
    let third = Daemon::start_full(&config, &[], None, pin_dir.clone());
    assert!(
        third.ready["programs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["adopted"] == true),
        "{}",
        third.ready
    );
    assert_eq!(net::try_bind(wildcard(port)), Err(Errno::EPERM));
    let stopping = third.stop();
    assert_eq!(stopping["counters"]["bind"]["denied"], denied + 1);
}
