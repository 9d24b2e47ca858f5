//! The XDP SYN rate limit over a real network path: a client namespace and a guard namespace
//! joined by a veth pair, real TCP connects, and the kernel's own counters checked against what
//! the client saw. Counts are bounded in number and time.

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
    in_vm,
    netns::{NetNs, Topology, GUARD_V4, GUARD_V6},
    require_root, Daemon,
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
                .connect_timeout(&SockAddr::from(target), attempt_timeout())
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
