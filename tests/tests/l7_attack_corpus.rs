//! The attack corpus (`tests/corpus/attacks.txt`) against proxyguard in front of a recording
//! upstream: every hostile request gets exactly its expected outcome, none of them reaches the
//! upstream, good requests sent all along are served, and memory settles back afterwards.

use std::{
    collections::BTreeMap,
    io::{BufReader, Write},
    net::TcpStream,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use proxyguard_tests::{
    corpus::{self, Entry, Vars},
    l7::{new_key, Guard},
    proxyguard_bin,
    recorder::Recorder,
    upstream::read_response,
    wire,
};

const UPSTREAM_KEY: &str = "sk-upstream-master-corpus";
/// Connections in flight at once: most entries wait about a second for the guard to close.
const THREADS: usize = 16;
/// Categories the corpus must cover, with the least number of entries each.
const CATEGORIES: &[(&str, usize)] = &[
    ("smuggling", 20),
    ("protocol", 10),
    ("path", 20),
    ("query", 15),
    ("headers", 15),
    ("host", 10),
    ("body", 20),
    ("auth", 20),
    ("upstream", 8),
    ("slowloris", 8),
    ("http10", 6),
    ("pipelining", 8),
    ("control", 45),
    ("shape", 30),
    ("content", 35),
];

#[test]
fn hostile_requests_get_their_outcome_and_never_reach_the_upstream() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/attacks.txt"))
        .expect("read the corpus");
    let entries = corpus::parse(&text).expect("the corpus parses");
    check_coverage(&entries);

    let recorder = Recorder::start();
    let (expired, expired_hash) = new_key();
    let mut guard = Guard::start(
        recorder.port,
        UPSTREAM_KEY,
        &["good", "revoked"],
        &corpus::guard_config(&expired_hash),
    );
    let good = guard.key("good").to_owned();
    let revoked = guard.key("revoked").to_owned();
    revoke(&mut guard, "revoked");
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let vars = vars(&addr, &good, &revoked, &expired);
    let nonce = &new_key().1[..16];

    // Warm-up: the same load as the check afterwards, until the allocator has its working set.
    for round in 0..3 {
        good_batch(&addr, &good, &format!("{nonce}-warm{round}"));
    }
    let rss_before = rss_kib(guard.daemon.pid());

    // The corpus, with good requests trickling in beside it the whole time.
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let trickle = {
        let (addr, good, tag, done) = (addr.clone(), good.clone(), nonce.to_owned(), done.clone());
        std::thread::spawn(move || trickle(&addr, &good, &format!("{tag}-during"), &done))
    };
    let mismatches = run_corpus(&entries, &addr, &vars);
    done.store(true, Ordering::Relaxed);
    let (trickled, trickle_failures) = trickle.join().expect("trickle thread");
    let corpus_took = started.elapsed();

    // Afterwards: good requests are still served, and memory is back where it was.
    good_batch(&addr, &good, &format!("{nonce}-after"));
    let rss_after = rss_kib(guard.daemon.pid());

    let seen = recorder.seen();
    let hostile: Vec<String> = seen
        .iter()
        .filter(|r| {
            !r.header("x-corpus-good")
                .is_some_and(|v| v.starts_with(nonce))
        })
        .map(|r| format!("{} {} {:?}", r.method, r.path, r.headers))
        .collect();
    let good_seen = seen.len() - hostile.len();
    // Good requests carry their key a second time as `x_api_key`, which must be stripped too.
    let leaked_keys = seen
        .iter()
        .filter(|r| r.header("x_api_key").is_some())
        .count();
    let good_sent = 4 * batch_size() + trickled;
    eprintln!(
        "corpus: {} entries in {:.1}s; {trickled} good requests beside it; upstream saw {good_seen} \
         good and {} hostile; RSS {rss_before} KiB after warm-up, {rss_after} KiB after",
        entries.len(),
        corpus_took.as_secs_f64(),
        hostile.len()
    );

    let mut problems = Vec::new();
    if !mismatches.is_empty() {
        problems.push(format!(
            "{} of {} entries got another outcome:\n{}",
            mismatches.len(),
            entries.len(),
            mismatches.join("\n")
        ));
    }
    if !hostile.is_empty() {
        problems.push(format!(
            "the upstream saw {} hostile requests:\n{}",
            hostile.len(),
            hostile.join("\n")
        ));
    }
    if !trickle_failures.is_empty() {
        problems.push(format!(
            "good requests during the corpus failed: {trickle_failures:?}"
        ));
    }
    if good_seen != good_sent {
        problems.push(format!(
            "{good_sent} good requests were served but the upstream saw {good_seen}"
        ));
    }
    if leaked_keys > 0 {
        problems.push(format!(
            "{leaked_keys} requests reached the upstream with the client's key in x_api_key"
        ));
    }
    if rss_after * 10 > rss_before * 11 {
        problems.push(format!(
            "RSS grew past 10%: {rss_before} KiB after warm-up, {rss_after} KiB after the corpus"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

fn check_coverage(entries: &[Entry]) {
    assert!(entries.len() >= 150, "{} entries", entries.len());
    let mut names = std::collections::BTreeSet::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in entries {
        assert!(names.insert(&entry.name), "{} twice", entry.name);
        *counts.entry(entry.category.as_str()).or_default() += 1;
    }
    for (category, least) in CATEGORIES {
        let n = counts.get(category).copied().unwrap_or(0);
        assert!(n >= *least, "{category}: {n} entries, want {least}");
    }
    let known: Vec<&str> = CATEGORIES.iter().map(|(c, _)| *c).collect();
    for category in counts.keys() {
        assert!(known.contains(category), "unknown category {category}");
    }
}

/// `keys revoke` as an operator runs it: the config is edited and the running daemon reloaded.
fn revoke(guard: &mut Guard, name: &str) {
    let out = Command::new(proxyguard_bin())
        .args(["keys", "revoke", name, "--config"])
        .arg(&guard.daemon.config_path)
        .output()
        .expect("run keys revoke");
    assert!(
        out.status.success(),
        "keys revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard
        .daemon
        .wait_for(|e| e["kind"] == "reloaded")
        .expect("the daemon reloads after keys revoke");
}

fn vars(addr: &str, good: &str, revoked: &str, expired: &str) -> Vars {
    Vars::from([
        ("HOST", addr.to_owned()),
        ("GOOD_KEY", good.to_owned()),
        ("REVOKED_KEY", revoked.to_owned()),
        ("EXPIRED_KEY", expired.to_owned()),
        ("UPSTREAM_KEY", UPSTREAM_KEY.to_owned()),
        ("GOOD_KEY_UPPER", good.to_ascii_uppercase()),
        ("GOOD_KEY_CUT", good[..good.len() - 1].to_owned()),
        (
            "GOOD_KEY_HASH",
            proxyguard_tests::l7::hash_hex(good.as_bytes()),
        ),
    ])
}

/// Every entry on a fresh connection, THREADS at a time; returns one line per mismatch.
fn run_corpus(entries: &[Entry], addr: &str, vars: &Vars) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let mismatches = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let Some(entry) = entries.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                if let Some(line) = run_entry(entry, addr, vars) {
                    mismatches.lock().expect("mismatch lock").push(line);
                }
            });
        }
    });
    let mut lines = mismatches.into_inner().expect("mismatch lock");
    lines.sort();
    lines
}

fn run_entry(entry: &Entry, addr: &str, vars: &Vars) -> Option<String> {
    let report = |got: String| {
        Some(format!(
            "  {} (line {}, {}): expected `{}`, got `{got}`",
            entry.name, entry.line, entry.category, entry.expect_text
        ))
    };
    let segments = match corpus::render(&entry.raw, vars) {
        Ok(segments) => segments,
        Err(err) => return report(format!("the entry does not render: {err:#}")),
    };
    match wire::exchange(addr, &segments, Duration::from_secs(10)) {
        Ok(exchange) if entry.expect.iter().any(|steps| exchange.matches(steps)) => None,
        Ok(exchange) => report(exchange.describe()),
        Err(err) => report(format!("connect failed: {err}")),
    }
}

fn batch_size() -> usize {
    THREADS * 25
}

/// THREADS keep-alive connections of good requests with bodies up to near the limit; panics on
/// any answer but 200.
fn good_batch(addr: &str, key: &str, tag: &str) {
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let mut conn = None;
                for i in 0..batch_size() / THREADS {
                    let pad = (i * 7919 + t * 104_729) % 60_000;
                    let status = good_request(&mut conn, addr, key, &format!("{tag}-{t}-{i}"), pad)
                        .unwrap_or_else(|err| panic!("good request {tag}-{t}-{i}: {err}"));
                    assert_eq!(status, 200, "good request {tag}-{t}-{i}");
                }
            });
        }
    });
}

/// Good requests one after another until `done`; returns how many and the failures.
fn trickle(addr: &str, key: &str, tag: &str, done: &AtomicBool) -> (usize, Vec<String>) {
    let mut conn = None;
    let mut failures = Vec::new();
    let mut sent = 0;
    while !done.load(Ordering::Relaxed) && sent < 5000 {
        match good_request(&mut conn, addr, key, &format!("{tag}-{sent}"), sent % 3000) {
            Ok(200) => {}
            Ok(status) => failures.push(format!("#{sent}: status {status}")),
            Err(err) => failures.push(format!("#{sent}: {err}")),
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    (sent, failures)
}

/// One good request on `conn` (connecting if needed, as the guard closes idle connections).
fn good_request(
    conn: &mut Option<BufReader<TcpStream>>,
    addr: &str,
    key: &str,
    tag: &str,
    pad: usize,
) -> std::io::Result<u16> {
    let body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(pad)
    );
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nx_api_key: {key}\r\nx-corpus-good: {tag}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let attempt = |conn: &mut Option<BufReader<TcpStream>>| -> std::io::Result<u16> {
        if conn.is_none() {
            let stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            *conn = Some(BufReader::new(stream));
        }
        let reader = conn.as_mut().expect("connected");
        reader.get_mut().write_all(head.as_bytes())?;
        reader.get_mut().write_all(body.as_bytes())?;
        read_response(reader)
    };
    match attempt(conn) {
        Ok(status) => Ok(status),
        // A kept connection the guard closed meanwhile: one retry on a new one.
        Err(_) => {
            *conn = None;
            attempt(conn)
        }
    }
}

/// Resident memory of `pid`, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}
