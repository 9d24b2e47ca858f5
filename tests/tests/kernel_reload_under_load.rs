//! Live reload under load: a bounded client loop sends requests through the proxy (one kept-alive
//! connection and fresh ones) while the config is reloaded 20 times. No request fails, no
//! connection drops, the new limits take effect, and the kernel counters do not reset.
//! The upstream is a small in-process HTTP server, so this also runs in the VM.

use std::{
    io::BufReader,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use nix::errno::Errno;
use proxyguard_tests::{
    l7::new_key,
    net, proxyguard_bin, require_root,
    upstream::{request, upstream},
    Daemon,
};

fn config(upstream: u16, bind_port: u16, hash: &str, rpm: u32, burst: u32) -> String {
    format!(
        "[[bind.rules]]\nport = {bind_port}\nallow = [\"127.0.0.1/32\"]\n\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n\n\
         [proxy.rate]\nper_key_rpm = {rpm}\nper_key_burst = {burst}\nper_ip_rpm = 0\n\n\
         [[proxy.keys]]\nname = \"load\"\nsha256 = \"{hash}\"\n"
    )
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    require_root();
    let upstream = upstream();
    let bind_port = net::free_port();
    let (key, hash) = new_key();
    let mut daemon = Daemon::start(&config(upstream, bind_port, &hash, 600_000, 100_000));
    let listen: SocketAddr = daemon.ready["proxy"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let wildcard = SocketAddr::from((Ipv4Addr::UNSPECIFIED, bind_port));
    assert_eq!(net::try_bind(wildcard), Err(Errno::EPERM));

    // The load: one kept-alive connection for the whole run, and a fresh connection per round.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let done = Arc::new(AtomicU32::new(0));
    let progress = done.clone();
    let client_key = key.clone();
    let load = std::thread::spawn(move || {
        let mut kept = BufReader::new(TcpStream::connect(listen).unwrap());
        let (mut ok, mut failed) = (0u32, Vec::new());
        // Bounded in count as well as by the flag.
        for _ in 0..5_000 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            match request(&mut kept, &client_key) {
                Ok(200) => ok += 1,
                other => failed.push(format!("kept-alive: {other:?}")),
            }
            let mut fresh = BufReader::new(TcpStream::connect(listen).unwrap());
            match request(&mut fresh, &client_key) {
                Ok(200) => ok += 1,
                other => failed.push(format!("fresh: {other:?}")),
            }
            progress.fetch_add(2, Ordering::Relaxed);
        }
        (ok, failed)
    });

    let same = config(upstream, bind_port, &hash, 600_000, 100_000);
    for round in 0..20u32 {
        // Each reload waits for fresh traffic, so reloads and requests really interleave.
        let deadline = Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::Relaxed) < (round + 1) * 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Rewrite with the harness's private paths kept, then ask the daemon to reload.
        let reloaded = daemon.reload_with(&same);
        assert_eq!(reloaded["kind"], "reloaded", "round {round}: {reloaded}");
        let out = std::process::Command::new(proxyguard_bin())
            .args(["reload", "--config"])
            .arg(&daemon.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Its audit record too, so the next wait sees the next reload, not this one.
        assert!(daemon.wait_for(|e| e["kind"] == "reloaded").is_some());
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(failed.is_empty(), "{} of {} requests failed across 40 reloads (20 SIGHUP, 20 over the control socket): {failed:?}", failed.len(), ok as usize + failed.len());
    assert!(ok >= 200, "the load loop barely ran: {ok} requests");

    // The new limits take effect: one request per minute, so the second one is refused.
    let reloaded = daemon.reload_with(&config(upstream, bind_port, &hash, 1, 1));
    assert_eq!(reloaded["kind"], "reloaded");
    let mut conn = BufReader::new(TcpStream::connect(listen).unwrap());
    assert_eq!(request(&mut conn, &key).unwrap(), 200);
    assert_eq!(request(&mut conn, &key).unwrap(), 429);

    // Kernel counters kept counting through all of it.
    assert_eq!(net::try_bind(wildcard), Err(Errno::EPERM));
    let stopping = daemon.stop();
    assert_eq!(stopping["counters"]["bind"]["denied"], 2, "{stopping}");
}
