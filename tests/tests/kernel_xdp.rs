//! The XDP SYN rate limit over a real network path: a client namespace and a guard namespace
//! joined by a veth pair, real TCP connects, and the kernel's own counters checked against what
//! the client saw. Counts are bounded in number and time. The rotation tests add raw SYN frames
//! from 200,000 IPv6 sources in one /48 and 65,536 IPv4 sources in one /16 (benchmarking ranges,
//! inside the test's namespaces, with no route back out).

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use proxyguard_tests::{
    bpf_map,
    guarded::eventually,
    in_vm,
    netns::{NetNs, Topology, GUARD_V4, GUARD_V6},
    proxyguard_bin, require_root,
    syn_frames::{self, FrameSocket},
    Daemon,
};
use serde_json::Value;
use socket2::{Domain, SockAddr, Socket, Type};

const RATE: u64 = 2;
const BURST: u64 = 3;

/// Accepts and closes connections on the guard side until dropped.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(guard: &NetNs, port: u16) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = guard.path();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let v4 = TcpListener::bind((GUARD_V4, port)).unwrap();
            let v6 = TcpListener::bind((GUARD_V6.parse::<IpAddr>().unwrap(), port)).unwrap();
            for l in [&v4, &v6] {
                l.set_nonblocking(true).unwrap();
            }
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in [&v4, &v6] {
                    while let Ok((stream, _)) = l.accept() {
                        drop(stream);
                        idle = false;
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        ready_rx.recv().expect("listener ready");
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A connect that is not answered within this long counts as dropped. The socket is closed
/// before the first SYN retransmit (1 s), so one attempt is exactly one SYN.
fn attempt_timeout() -> Duration {
    if in_vm() {
        Duration::from_millis(800)
    } else {
        Duration::from_millis(300)
    }
}

/// `attempts` connects from `source` to `target`, `pause` apart; returns how many succeeded.
fn connects(
    client: &NetNs,
    source: &str,
    target: SocketAddr,
    attempts: u32,
    pause: Duration,
) -> u64 {
    connects_within(client, source, target, attempts, pause, attempt_timeout())
}

/// As [`connects`], each connect given `timeout`.
fn connects_within(
    client: &NetNs,
    source: &str,
    target: SocketAddr,
    attempts: u32,
    pause: Duration,
    timeout: Duration,
) -> u64 {
    let path = client.path();
    let source: IpAddr = source.parse().unwrap();
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut ok = 0;
        for _ in 0..attempts {
            let socket = Socket::new(Domain::for_address(target), Type::STREAM, None).unwrap();
            socket
                .bind(&SockAddr::from(SocketAddr::new(source, 0)))
                .unwrap();
            if socket
                .connect_timeout(&SockAddr::from(target), timeout)
                .is_ok()
            {
                ok += 1;
            }
            drop(socket);
            std::thread::sleep(pause);
        }
        ok
    })
    .join()
    .unwrap()
}

fn config(interface: &str, port: u16, mode: &str) -> String {
    format!(
        "[bind]\nenabled = false\n\n[xdp]\nmode = \"{mode}\"\ninterfaces = [\"{interface}\"]\nports = [{port}]\n\
         rate_per_sec = {RATE}\nburst = {BURST}\nipv6_prefix = 64\nallow = [\"198.18.0.3/32\"]\ndeny = [\"198.18.0.4/32\", \"{SENTINEL}/32\"]\n"
    )
}

/// A deny-listed source used only as the last client: its drop event comes after every other
/// (one ring, in order), so once it arrives every earlier event has been seen.
const SENTINEL: &str = "198.18.0.9";

/// Rate events for one source, at most one per second.
fn events_for(events: &[Value], kind: &str, source: &str) -> usize {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["source"] == source)
        .count()
}

#[test]
fn syn_rate_limit_over_veth() {
    require_root();
    let topo = Topology::new(
        "x",
        &[
            "198.18.0.3/24",
            "198.18.0.4/24",
            "198.18.0.6/24",
            "198.18.0.9/24",
            "2001:db8::5/64",
        ],
    );
    let port = 18080;
    let _listener = Listener::start(&topo.guard, port);
    let mut daemon = Daemon::start_in(
        &config(&topo.guard_if, port, "enforce"),
        &[],
        Some(&topo.guard),
    );
    let program = &daemon.ready["programs"][0];
    assert_eq!(program["name"], "syn_rate_limit");
    assert_eq!(program["target"], topo.guard_if.as_str());
    assert!(
        program["hook"].as_str().unwrap().starts_with("xdp ("),
        "{program}"
    );

    let v4 = SocketAddr::new(GUARD_V4.parse().unwrap(), port);
    let v6 = SocketAddr::new(GUARD_V6.parse().unwrap(), port);
    let started = Instant::now();

    // A client within its rate connects every time.
    let paced = connects(
        &topo.client,
        "198.18.0.6",
        v4,
        4,
        Duration::from_millis(1000 / RATE + 150),
    );
    assert_eq!(paced, 4, "a client within its rate must always connect");

    // A client over its rate gets some SYNs dropped; at least its burst gets through.
    let flood = 12;
    let over = connects(&topo.client, "198.18.0.1", v4, flood, Duration::ZERO);
    assert!(
        over >= BURST && over < u64::from(flood),
        "over-rate client connected {over} of {flood}"
    );

    // An allow-listed source is never limited.
    let allowed = connects(&topo.client, "198.18.0.3", v4, 12, Duration::ZERO);
    assert_eq!(allowed, 12, "allow-listed source was limited");

    // A deny-listed source never connects.
    let denied = connects(&topo.client, "198.18.0.4", v4, 3, Duration::ZERO);
    assert_eq!(denied, 0, "deny-listed source connected");

    // IPv6 behaves the same, and two addresses of one /64 share one bucket.
    let v6_attempts = 6;
    let v6_a = connects(&topo.client, "2001:db8::1", v6, v6_attempts, Duration::ZERO);
    let v6_b = connects(&topo.client, "2001:db8::5", v6, v6_attempts, Duration::ZERO);
    let v6_ok = v6_a + v6_b;
    assert!(v6_a >= BURST, "IPv6 client did not get its burst: {v6_a}");
    let refill_bound = BURST + RATE * (started.elapsed().as_secs() + 1);
    assert!(
        v6_ok <= refill_bound,
        "a /64 got {v6_ok} connects: more than one bucket's worth"
    );
    assert!(
        v6_ok < 2 * u64::from(v6_attempts),
        "IPv6 over-rate SYNs were not dropped"
    );

    assert_eq!(connects(&topo.client, SENTINEL, v4, 1, Duration::ZERO), 0);
    let mut events =
        daemon.records_until(|e| e["kind"] == "syn_dropped" && e["source"] == SENTINEL);
    events.pop();
    let counters = daemon.stop()["counters"]["xdp"].clone();
    events.retain(|e| e["kind"] == "syn_dropped");

    // The kernel's counters match what the clients saw, SYN for SYN.
    let rate_failures = (u64::from(flood) - over) + (2 * u64::from(v6_attempts) - v6_ok);
    assert_eq!(
        counters["passed"],
        paced + over + allowed + v6_ok,
        "{counters}"
    );
    assert_eq!(counters["dropped_rate"], rate_failures, "{counters}");
    // Three from 198.18.0.4 and the sentinel's one.
    assert_eq!(counters["dropped_deny"], 4, "{counters}");
    assert_eq!(counters["would_drop"], 0, "{counters}");

    // Drop events: present, with the reason, and at most one per source per second.
    let seconds = started.elapsed().as_secs() as usize + 1;
    let rate_events = events_for(&events, "syn_dropped", "198.18.0.1");
    assert!(
        (1..=seconds).contains(&rate_events),
        "{rate_events} rate events in {seconds}s: {events:?}"
    );
    let deny = events
        .iter()
        .find(|e| e["source"] == "198.18.0.4")
        .expect("deny-list event");
    assert_eq!(deny["reason"], "deny_list");
    assert_eq!(deny["port"], port);
    assert!(
        events.iter().any(|e| e["source"] == "2001:db8::"),
        "IPv6 events name the /64: {events:?}"
    );
}

#[test]
fn monitor_mode_counts_and_drops_nothing() {
    require_root();
    let topo = Topology::new("m", &[]);
    let port = 18081;
    let _listener = Listener::start(&topo.guard, port);
    let mut daemon = Daemon::start_in(
        &config(&topo.guard_if, port, "monitor"),
        &[],
        Some(&topo.guard),
    );
    assert_eq!(daemon.ready["programs"][0]["mode"], "monitor");
    let v4 = SocketAddr::new(GUARD_V4.parse().unwrap(), port);
    let attempts = 10;
    let ok = connects(&topo.client, "198.18.0.1", v4, attempts, Duration::ZERO);
    assert_eq!(ok, u64::from(attempts), "monitor mode must drop nothing");
    let event = daemon
        .wait_for(|e| e["kind"] == "syn_would_drop")
        .expect("a would-drop event");
    assert_eq!(event["source"], "198.18.0.1");
    let counters = daemon.stop()["counters"]["xdp"].clone();
    assert_eq!(counters["dropped_rate"], 0, "{counters}");
    let would = counters["would_drop"].as_u64().unwrap();
    assert!(
        would >= 1 && would <= u64::from(attempts) - BURST,
        "{counters}"
    );
}

/// New-source admission per wider prefix in the rotation tests: small, so the bounds are tight.
const NEW_RATE: u64 = 2;
const NEW_BURST: u64 = 4;

fn rotation_config(interface: &str, port: u16, extra: &str) -> String {
    format!(
        "[bind]\nenabled = false\n\n[xdp]\nmode = \"enforce\"\ninterfaces = [\"{interface}\"]\nports = [{port}]\n\
         rate_per_sec = {RATE}\nburst = {BURST}\nipv6_prefix = 64\nnew_source_prefix_v4 = 24\nnew_source_prefix_v6 = 48\n\
         new_sources_per_sec = {NEW_RATE}\nnew_sources_burst = {NEW_BURST}\n{extra}"
    )
}

/// The client side of the veth pair (`Topology` names it after the guard side).
fn client_if(topo: &Topology) -> String {
    topo.guard_if.replacen("pgg", "pgc", 1)
}

/// Sends one SYN from each of `sources` from the client namespace; returns how many were sent.
fn raw_flood(topo: &Topology, sources: Vec<IpAddr>, port: u16) -> u64 {
    let dst_mac = syn_frames::mac_of(&topo.guard.name, &topo.guard_if);
    let path = topo.client.path();
    let interface = client_if(topo);
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let socket = FrameSocket::open(&interface).expect("an AF_PACKET socket on the client veth");
        syn_frames::flood(
            &socket,
            dst_mac,
            sources.into_iter(),
            GUARD_V4.parse().unwrap(),
            GUARD_V6.parse().unwrap(),
            port,
            64,
        )
    })
    .join()
    .unwrap()
}

/// The pinned bucket map `name`'s entries.
fn buckets(daemon: &Daemon, name: &str) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    bpf_map::dump(&daemon.pin_dir.join("maps").join(name)).expect("dump a pinned bucket map")
}

fn v4_key(addr: &str) -> Vec<u8> {
    addr.parse::<std::net::Ipv4Addr>()
        .unwrap()
        .octets()
        .to_vec()
}

/// An IPv6 bucket key: the first 64 bits (the /64).
fn v6_key(addr: &str) -> Vec<u8> {
    addr.parse::<std::net::Ipv6Addr>().unwrap().octets()[..8].to_vec()
}

#[test]
fn a_flood_rotating_over_200k_sources_stays_limited_and_known_sources_keep_their_state() {
    require_root();
    let (legit4, known4, legit6, known6) =
        ("198.18.0.6", "198.18.0.7", "2001:db8::6", "2001:db8:0:7::7");
    let topo = Topology::new(
        "r",
        &[
            "198.18.0.6/24",
            "198.18.0.7/24",
            "2001:db8::6/64",
            "2001:db8:0:7::7/64",
        ],
    );
    topo.guard.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:0:7::/64",
        "dev",
        &topo.guard_if,
    ]);
    let port = 18082;
    let _listener = Listener::start(&topo.guard, port);
    let daemon = Daemon::start_in(
        &rotation_config(&topo.guard_if, port, "events_per_sec = 50\n"),
        &[],
        Some(&topo.guard),
    );
    let v4 = SocketAddr::new(GUARD_V4.parse().unwrap(), port);
    let v6 = SocketAddr::new(GUARD_V6.parse().unwrap(), port);
    let started = Instant::now();

    // Before the flood: two legitimate sources become known, and two known sources run out of
    // tokens (their buckets are the state a rotation must not reset).
    let mut legit_ok = connects(&topo.client, legit4, v4, 1, Duration::ZERO);
    legit_ok += connects(&topo.client, legit6, v6, 1, Duration::ZERO);
    assert_eq!(
        legit_ok, 2,
        "the legitimate sources could not connect at all"
    );
    let over4 = connects(&topo.client, known4, v4, 8, Duration::ZERO);
    let over6 = connects(&topo.client, known6, v6, 8, Duration::ZERO);
    assert!(
        over4 < 8 && over6 < 8,
        "the known sources were never limited"
    );
    let known4_before = buckets(&daemon, "XDP_BUCKETS_V4")[&v4_key(known4)].clone();
    let known6_before = buckets(&daemon, "XDP_BUCKETS_V6")[&v6_key(known6)].clone();

    // The flood: 200,000 IPv6 sources in 2001:db8:1::/48 and every address of 198.19.0.0/16,
    // while the legitimate sources keep connecting at their rate.
    let sources: Vec<IpAddr> = syn_frames::v6_sources(200_000)
        .chain(syn_frames::v4_sources(65_536))
        .collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let legit = {
        let (flag, client, target4, target6) = (flooding.clone(), topo.client.name.clone(), v4, v6);
        std::thread::spawn(move || {
            let client = NetNs { name: client };
            let (mut attempts, mut ok) = (0, 0);
            while flag.load(Ordering::Relaxed) {
                for (source, target) in [(legit4, target4), (legit6, target6)] {
                    attempts += 1;
                    // Long enough to survive one SYN retransmit: a failure is a refusal.
                    ok += connects_within(
                        &client,
                        source,
                        target,
                        1,
                        Duration::ZERO,
                        Duration::from_secs(3),
                    );
                }
                std::thread::sleep(Duration::from_millis(1000 / RATE + 150));
            }
            // Not ours to delete: the topology owns the namespace.
            std::mem::forget(client);
            (attempts, ok)
        })
    };
    let sent = raw_flood(&topo, sources, port);
    flooding.store(false, Ordering::Relaxed);
    let (during_attempts, during_ok) = legit.join().unwrap();
    assert!(sent >= 250_000, "only {sent} flood SYNs could be sent");
    assert_eq!(
        during_ok, during_attempts,
        "a legitimate source was refused during the flood"
    );
    // After it, the legitimate sources still connect.
    let after = connects_within(
        &topo.client,
        legit4,
        v4,
        1,
        Duration::ZERO,
        Duration::from_secs(3),
    ) + connects_within(
        &topo.client,
        legit6,
        v6,
        1,
        Duration::ZERO,
        Duration::from_secs(3),
    );
    assert_eq!(after, 2, "a legitimate source was refused after the flood");
    let seconds = started.elapsed().as_secs() + 1;

    // The known sources' buckets are byte for byte what they were: never evicted, never reset.
    let v4_buckets = buckets(&daemon, "XDP_BUCKETS_V4");
    let v6_buckets = buckets(&daemon, "XDP_BUCKETS_V6");
    assert_eq!(v4_buckets.get(&v4_key(known4)), Some(&known4_before));
    assert_eq!(v6_buckets.get(&v6_key(known6)), Some(&known6_before));
    assert!(v4_buckets.contains_key(&v4_key(legit4)));
    assert!(v6_buckets.contains_key(&v6_key(legit6)));
    // The flood got buckets only at its prefixes' admission rates: 256 /24s and one /48.
    let admitted_bound = NEW_BURST + NEW_RATE * seconds;
    let flood4 = v4_buckets.keys().filter(|k| k[..2] == [198, 19]).count() as u64;
    let flood6 = v6_buckets
        .keys()
        .filter(|k| k[..6] == [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01])
        .count() as u64;
    assert!(
        flood4 <= 256 * admitted_bound,
        "{flood4} IPv4 flood sources got a bucket"
    );
    assert!(
        flood6 <= admitted_bound,
        "{flood6} IPv6 flood /64s got a bucket"
    );

    let counters = daemon.stop()["counters"]["xdp"].clone();
    let passed = counters["passed"].as_u64().unwrap();
    let dropped_new = counters["dropped_new_source"].as_u64().unwrap();
    let client_passed = legit_ok + over4 + over6 + during_ok + after;
    eprintln!(
        "rotation: {sent} SYNs sent, {flood4} IPv4 and {flood6} IPv6 flood buckets, \
         legit {during_ok}/{during_attempts} during; counters {counters}"
    );
    // Each admitted IPv4 source sent one SYN; an admitted /64 holds at most four flood sources.
    let flood_passed = passed - client_passed;
    assert!(
        flood_passed <= flood4 + 4 * flood6,
        "{flood_passed} flood SYNs passed for {flood4} + {flood6} admitted: {counters}"
    );
    // Most of the flood reached the program, and what was not admitted was refused at admission.
    // No fixed ratio of dropped to passed: the admitted count grows with the flood's duration
    // (bounded above), and a slow machine (the VM under TCG) floods for longer.
    let refused = sent.saturating_sub(flood_passed);
    assert!(
        dropped_new >= sent / 2 && dropped_new * 10 >= refused * 9,
        "{dropped_new} of {sent} flood SYNs dropped, {flood_passed} passed: {counters}"
    );
    assert_eq!(counters["dropped_deny"], 0, "{counters}");
}

#[test]
fn a_spoofed_deny_listed_flood_gives_bounded_events_and_counts_the_rest() {
    require_root();
    const EVENTS_PER_SEC: u64 = 20;
    let topo = Topology::new("d", &["198.18.0.9/24"]);
    let port = 18083;
    let _listener = Listener::start(&topo.guard, port);
    let mut daemon = Daemon::start_in(
        &rotation_config(
            &topo.guard_if,
            port,
            &format!(
                "events_per_sec = {EVENTS_PER_SEC}\ndeny = [\"198.18.128.0/17\", \"{SENTINEL}/32\"]\n"
            ),
        ),
        &[],
        Some(&topo.guard),
    );
    let started = Instant::now();
    let sources: Vec<IpAddr> = (0..20_000u32)
        .map(|i| {
            IpAddr::V4(std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 18, 128, 0)) + i,
            ))
        })
        .collect();
    let sent = raw_flood(&topo, sources, port);
    assert!(sent >= 19_000, "only {sent} flood SYNs could be sent");

    // The sentinel (deny-listed too) retries until one of its events gets past the cap: every
    // event of the flood came before it.
    let v4 = SocketAddr::new(GUARD_V4.parse().unwrap(), port);
    let trying = Arc::new(AtomicBool::new(true));
    let sentinel = {
        let (flag, client) = (trying.clone(), topo.client.name.clone());
        std::thread::spawn(move || {
            let client = NetNs { name: client };
            while flag.load(Ordering::Relaxed) {
                assert_eq!(connects(&client, SENTINEL, v4, 1, Duration::ZERO), 0);
            }
            std::mem::forget(client);
        })
    };
    let events = daemon.records_until(|e| e["kind"] == "syn_dropped" && e["source"] == SENTINEL);
    trying.store(false, Ordering::Relaxed);
    sentinel.join().unwrap();
    let seconds = started.elapsed().as_secs() + 1;

    // Deny-listed sources never get a bucket.
    let v4_buckets = buckets(&daemon, "XDP_BUCKETS_V4");
    assert!(
        !v4_buckets
            .keys()
            .any(|k| k[..2] == [198, 18] && (k[2] >= 128 || k[..] == v4_key(SENTINEL)[..])),
        "a deny-listed source has a bucket"
    );
    let counters = daemon.stop()["counters"]["xdp"].clone();
    let flood_events = events
        .iter()
        .filter(|e| {
            e["kind"] == "syn_dropped" && e["reason"] == "deny_list" && e["source"] != SENTINEL
        })
        .count() as u64;
    // Two CPUs may race on the cap's window: at most one extra event each per second.
    let bound = (EVENTS_PER_SEC + 2) * seconds;
    assert!(
        (1..=bound).contains(&flood_events),
        "{flood_events} deny-list events in {seconds}s (cap {EVENTS_PER_SEC}/s)"
    );
    eprintln!("deny flood: {sent} SYNs sent, {flood_events} events seen; counters {counters}");
    let dropped = counters["dropped_deny"].as_u64().unwrap();
    let suppressed = counters["events_suppressed"].as_u64().unwrap();
    let lost = counters["events_lost"].as_u64().unwrap();
    assert!(
        dropped >= sent / 2,
        "{dropped} of {sent} deny-listed SYNs dropped: {counters}"
    );
    // Every deny-listed SYN was either reported or counted as held back.
    assert!(
        suppressed + lost + bound >= dropped && suppressed >= dropped - bound,
        "{counters}"
    );
    assert_eq!(counters["passed"], 0, "{counters}");
}

/// `proxyguard status --json`'s `xdp` block.
fn xdp_status(daemon: &Daemon) -> Value {
    let out = std::process::Command::new(proxyguard_bin())
        .args(["status", "--json", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout)
        .map(|s| s["xdp"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn with_no_interfaces_listed_the_limit_follows_the_front_listener() {
    require_root();
    let topo = Topology::new("a", &[]);
    let port = 18084;
    // A loopback listener: no interface carries traffic to it, and status says so.
    let daemon = Daemon::start_in(
        &format!("[bind]\nenabled = false\n\n[xdp]\nports = [{port}]\n"),
        &[],
        Some(&topo.guard),
    );
    assert!(
        !daemon.ready["programs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "syn_rate_limit"),
        "{}",
        daemon.ready["programs"]
    );
    let status = xdp_status(&daemon);
    assert_eq!(status["names"], serde_json::json!([]), "{status}");
    assert!(
        status["why"].as_str().unwrap().contains("loopback"),
        "{status}"
    );
    drop(daemon);

    // A wildcard listener: every non-loopback interface that is up, and ones that come up later.
    let daemon = Daemon::start_in(
        &format!(
            "[bind]\nenabled = false\n\n[xdp]\nports = [{port}]\n\n[proxy]\nlisten = \"0.0.0.0:{port}\"\nallow_plaintext = true\nadmin_listen = \"127.0.0.1:0\"\n"
        ),
        &[],
        Some(&topo.guard),
    );
    let targets: Vec<&str> = daemon.ready["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "syn_rate_limit")
        .filter_map(|p| p["target"].as_str())
        .collect();
    assert_eq!(targets, [topo.guard_if.as_str()]);
    let status = xdp_status(&daemon);
    assert_eq!(status["source"], "auto", "{status}");
    assert!(
        status["why"].as_str().unwrap().contains("wildcard"),
        "{status}"
    );
    let (late_a, late_b) = (
        topo.guard_if.replacen("pgg", "pgx", 1),
        topo.guard_if.replacen("pgg", "pgy", 1),
    );
    topo.guard.ip(&[
        "link", "add", &late_a, "type", "veth", "peer", "name", &late_b,
    ]);
    topo.guard.ip(&["link", "set", &late_a, "up"]);
    topo.guard.ip(&["link", "set", &late_b, "up"]);
    let picked_up = eventually(Duration::from_secs(30), || {
        xdp_status(&daemon)["names"].as_array().is_some_and(|n| {
            n.iter().any(|i| i == late_a.as_str()) && n.iter().any(|i| i == late_b.as_str())
        })
    });
    assert!(
        picked_up,
        "the new interfaces were never attached: {}",
        xdp_status(&daemon)
    );
}
