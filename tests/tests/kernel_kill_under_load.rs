//! `kill -9` of the daemon under load: a client loop sends requests through the L7 proxy (to the
//! plain-Rust upstream, so this also runs in the VM) while the daemon also holds a kernel bind
//! rule. The daemon is SIGKILLed mid-load; the rule keeps refusing while nothing runs; a restart
//! on the same pins and config adopts the programs instead of attaching twice, the loop's
//! requests succeed again, and the kernel counters continue across the crash.

use std::{
    io::BufReader,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nix::errno::Errno;
use proxyguard_tests::{
    daemon::remove_pins,
    l7::new_key,
    net, require_root,
    upstream::{request, upstream},
    Daemon,
};

/// The loop's phases: a request is tagged with the phase it started in.
const BEFORE_KILL: u32 = 0;
const DOWN: u32 = 1;
const RESTARTED: u32 = 2;

/// Requests per phase that show the loop was really running then.
const ENOUGH: usize = 50;

fn config(upstream: u16, bind_port: u16, listen: u16, hash: &str) -> String {
    format!(
        "[[bind.rules]]\nport = {bind_port}\nallow = [\"127.0.0.1/32\"]\n\n\
         [proxy]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n\n\
         [proxy.rate]\nper_key_rpm = 0\nper_ip_rpm = 0\n\n\
         [[proxy.keys]]\nname = \"load\"\nsha256 = \"{hash}\"\n"
    )
}

/// Removes the pins if the test fails between the crash and the restarted daemon's own cleanup.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        remove_pins(&self.0);
    }
}

/// The outcomes so far, by the phase each request started in.
type Outcomes = Arc<Mutex<Vec<(u32, Result<u16, String>)>>>;

fn count(outcomes: &Outcomes, phase: u32, ok: bool) -> usize {
    outcomes
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, r)| *p == phase && r.as_ref().is_ok_and(|s| *s == 200) == ok)
        .count()
}

/// Waits (bounded) until `phase` has `n` outcomes that are successes (`ok`) or failures.
fn wait_for_count(outcomes: &Outcomes, phase: u32, ok: bool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(outcomes, phase, ok) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        count(outcomes, phase, ok) >= n,
        "phase {phase}: fewer than {n} {} requests",
        if ok { "successful" } else { "failed" }
    );
}

#[test]
fn kill_nine_under_load_keeps_the_rule_and_the_restart_adopts_it() {
    require_root();
    let upstream = upstream();
    let bind_port = net::free_port();
    let listen_port = net::free_port();
    let (key, hash) = new_key();
    let config = config(upstream, bind_port, listen_port, &hash);
    let wildcard = SocketAddr::from((Ipv4Addr::UNSPECIFIED, bind_port));
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, listen_port));

    let first = Daemon::start(&config);
    let _pins = Pins(first.pin_dir.clone());
    let pin_dir = first.pin_dir.clone();
    let programs = first.ready["programs"].as_array().unwrap().clone();
    assert!(
        !programs.is_empty() && programs.iter().all(|p| p["adopted"] == false),
        "{programs:?}"
    );
    assert_eq!(net::try_bind(wildcard), Err(Errno::EPERM));

    // The load: a fresh connection per request, tagged with the phase it started in.
    let phase = Arc::new(AtomicU32::new(BEFORE_KILL));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Outcomes = Arc::default();
    let load = {
        let (phase, stop, outcomes) = (phase.clone(), stop.clone(), outcomes.clone());
        std::thread::spawn(move || {
            // Bounded in count as well as by the flag.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started_in = phase.load(Ordering::SeqCst);
                let outcome = TcpStream::connect(listen)
                    .and_then(|conn| {
                        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
                        request(&mut BufReader::new(conn), &key)
                    })
                    .map_err(|err| err.to_string());
                let failed = outcome.is_err();
                outcomes.lock().unwrap().push((started_in, outcome));
                if failed {
                    // Nothing listens while the daemon is down: do not spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    wait_for_count(&outcomes, BEFORE_KILL, true, ENOUGH);

    // The crash, mid-load.
    phase.store(DOWN, Ordering::SeqCst);
    first.kill_hard();
    wait_for_count(&outcomes, DOWN, false, 3);
    assert_eq!(
        net::try_bind(wildcard),
        Err(Errno::EPERM),
        "enforcement lapsed with the daemon"
    );

    // The restart (as systemd would): same config, same pins.
    let mut second = Daemon::start_full(&config, &[], None, pin_dir);
    phase.store(RESTARTED, Ordering::SeqCst);
    let programs = second.ready["programs"].as_array().unwrap().clone();
    assert!(
        !programs.is_empty() && programs.iter().all(|p| p["adopted"] == true),
        "the restart attached instead of adopting: {programs:?}"
    );
    wait_for_count(&outcomes, RESTARTED, true, ENOUGH);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let outcomes = outcomes.lock().unwrap();
    let not_ok = |phase: u32| -> Vec<_> {
        outcomes
            .iter()
            .filter(|(p, r)| *p == phase && !matches!(r, Ok(200)))
            .collect()
    };
    // Before the kill only the request the kill cut may fail; after the restart none.
    assert!(not_ok(BEFORE_KILL).len() <= 1, "{:?}", not_ok(BEFORE_KILL));
    assert!(
        not_ok(RESTARTED).is_empty(),
        "requests failed after the restart: {:?}",
        not_ok(RESTARTED)
    );
    drop(outcomes);

    // Counters continue: three refused binds in all (before, during and after the crash), and a
    // double attach would have counted the last one twice.
    assert_eq!(net::try_bind(wildcard), Err(Errno::EPERM));
    assert!(
        second.wait_for(|e| e["kind"] == "bind_denied").is_some(),
        "the adopted program's events reach the new daemon"
    );
    let stopping = second.stop();
    assert_eq!(stopping["counters"]["bind"]["denied"], 3, "{stopping}");
}
