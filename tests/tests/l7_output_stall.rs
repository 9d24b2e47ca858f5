//! The request path never waits for stdout (issue 16): with the daemon's stdout a pipe nobody
//! reads, every request is still served, and the audit lines that did not fit are dropped and
//! counted in `proxyguard_events_dropped_total`, exactly as many as never reached stdout.

use std::{io::BufReader, net::TcpStream};

use proxyguard_tests::{
    l7::{metric, Guard},
    upstream,
};

/// Enough lines to fill the pipe (64 KiB, a few hundred lines) and the queue (64) many times.
const REQUESTS: usize = 2000;
const CONNECTIONS: usize = 4;
const ROUTE: &str = "/v1/chat/completions";

#[test]
fn a_stdout_nobody_reads_drops_and_counts_lines_and_serves_every_request() {
    let upstream = upstream::upstream();
    let mut guard = Guard::start(
        upstream,
        "sk-upstream-stall",
        &["alice"],
        // No rate limits: every request is one the upstream answers.
        "\n[proxy.rate]\nper_key_rpm = 0\nper_ip_rpm = 0\n\n[log]\nformat = \"json\"\nqueue = 64\n",
    );
    guard.daemon.pause_stdout();
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let key = guard.key("alice").to_owned();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (addr, key) = (addr.clone(), key.clone());
            std::thread::spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(&addr).expect("connect"));
                (0..REQUESTS / CONNECTIONS)
                    .map(|_| upstream::request(&mut conn, &key).expect("an answer"))
                    .filter(|status| *status == 200)
                    .count()
            })
        })
        .collect();
    let served: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(
        served, REQUESTS,
        "every request answered 200 while stdout was stalled"
    );

    let text = guard.metrics();
    let counted = metric(
        &text,
        &format!(
            "proxyguard_requests_total{{route=\"{ROUTE}\",status=\"200\",decision=\"allow\"}}"
        ),
    );
    assert_eq!(
        counted, REQUESTS as u64,
        "the metrics count every request:\n{text}"
    );
    let dropped = metric(
        &text,
        "proxyguard_events_dropped_total{sink=\"stdout\",kind=\"request\"}",
    );
    assert!(
        dropped > 0,
        "a full queue drops lines and counts them:\n{text}"
    );
    assert!(
        dropped < REQUESTS as u64,
        "the pipe and the queue held some:\n{text}"
    );

    // Read again: exactly the lines not counted as dropped arrive, then nothing more.
    guard.daemon.resume_stdout();
    let expected = REQUESTS - dropped as usize;
    let mut seen = 0;
    while seen < expected {
        guard
            .daemon
            .wait_for(|e| e["kind"] == "request" && e["route"] == ROUTE)
            .unwrap_or_else(|| panic!("{seen} of {expected} undropped request lines arrived"));
        seen += 1;
    }
    let more = guard
        .records_until_sentinel()
        .into_iter()
        .filter(|e| e["kind"] == "request" && e["route"] == ROUTE)
        .count();
    assert_eq!(
        more, 0,
        "{dropped} counted as dropped, yet more lines than the rest arrived"
    );
}
