//! Rollout-scoped tokens through the real binary (issue 21, docs/rollout-tokens.md): a token
//! minted by `keys mint` (or by the doc's Python function) is served on its rollout's paths, and
//! the recording upstream sees the upstream key, never the token; on another rollout's path, on
//! another attempt, or on a path that names no rollout it gets 403 `rollout_mismatch` with
//! nothing upstream (proven with a sentinel request after); expired, 401 `token_expired`; a
//! runaway rollout gets 429 `rate_rollout` while another rollout's token is still served; plain
//! keys work as before. The audit line names the rollout; metrics only the one `rollout:*` label.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::Duration,
};

use proxyguard_tests::{
    l7::{venv, Guard},
    proxyguard_bin,
    recorder::Recorder,
};

const UPSTREAM_KEY: &str = "sk-upstream-master-rollouts";
const SIGNING_LINE: &str = "t1 5f0e3d2c1b0a99887766554433221100ffeeddccbbaa99887766554433221100\n";

/// One request with `credential` in `Authorization: Bearer`; (status, response text).
fn send(addr: &str, credential: &str, case: &str, path: &str) -> (u16, String) {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {credential}\r\n\
         x-case: {case}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect to the guard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn mint(config: &Path, args: &[&str]) -> String {
    let out = Command::new(proxyguard_bin())
        .args(["keys", "mint"])
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run keys mint");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "keys mint {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "the token alone on one line");
    stdout.trim().to_owned()
}

/// A token from the Python function in docs/rollout-tokens.md (run as the doc gives it).
fn python_mint(key_file: &Path, rollout: &str, ttl_seconds: i64) -> String {
    let doc = include_str!("../../docs/rollout-tokens.md");
    let code = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the doc's python block");
    let script = format!(
        "{code}\nimport sys\nprint(mint_rollout_token(sys.argv[1], sys.argv[2], ttl_seconds=int(sys.argv[3])))\n"
    );
    let out = Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(script)
        .arg(key_file)
        .arg(rollout)
        .arg(ttl_seconds.to_string())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn path(rollout: &str, attempt: &str) -> String {
    format!("/rollout/{rollout}/attempt/{attempt}/v1/chat/completions")
}

#[test]
fn tokens_are_held_to_their_rollout_and_its_own_limits() {
    let recorder = Recorder::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("rollout-tokens.key");
    fs::write(&key_file, SIGNING_LINE).expect("key file");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let extra = format!(
        "[proxy.rate]\nper_ip_rpm = 0\n\
         [proxy.rollout_tokens]\nkey_file = \"{}\"\nrpm = 5\nburst = 5\nconcurrency = 8\n",
        key_file.display()
    );
    let mut guard = Guard::start(recorder.port, UPSTREAM_KEY, &["plain"], &extra);
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let config = guard.daemon.config_path.clone();
    let token_a = mint(&config, &["--rollout", "ro-a"]);
    let token_a1 = mint(
        &config,
        &["--rollout", "ro-a", "--attempt", "at-1", "--ttl", "1h"],
    );
    let runaway = mint(&config, &["--rollout", "ro-run"]);
    let from_python = python_mint(&key_file, "ro-py", 600);
    let expired = python_mint(&key_file, "ro-a", -10);
    let plain = guard.key("plain").to_owned();

    // (case, credential, path, status, code in the answer, reaches the upstream)
    let cases: [(&str, &str, String, u16, &str, bool); 9] = [
        ("own-rollout", &token_a, path("ro-a", "at-1"), 200, "", true),
        (
            "own-rollout-any-attempt",
            &token_a,
            path("ro-a", "at-9"),
            200,
            "",
            true,
        ),
        (
            "own-attempt",
            &token_a1,
            path("ro-a", "at-1"),
            200,
            "",
            true,
        ),
        (
            "python-minted",
            &from_python,
            path("ro-py", "x"),
            200,
            "",
            true,
        ),
        ("plain-key", &plain, path("ro-b", "at-1"), 200, "", true),
        (
            "other-rollout",
            &token_a,
            path("ro-b", "at-1"),
            403,
            "rollout_mismatch",
            false,
        ),
        (
            "other-attempt",
            &token_a1,
            path("ro-a", "at-2"),
            403,
            "rollout_mismatch",
            false,
        ),
        (
            "no-rollout-in-path",
            &token_a,
            "/v1/chat/completions".into(),
            403,
            "rollout_mismatch",
            false,
        ),
        (
            "expired",
            &expired,
            path("ro-a", "at-1"),
            401,
            "token_expired",
            false,
        ),
    ];
    let mut problems = Vec::new();
    for (case, credential, target, status, code, _) in &cases {
        let (got, text) = send(&addr, credential, case, target);
        if got != *status || !text.contains(code) {
            problems.push(format!("{case}: {got}, wanted {status} {code}: {text}"));
        }
    }
    // The runaway rollout spends its burst (5; one more every 12 s) and is throttled; another
    // rollout (ro-a, 4 requests in all) is still served.
    let runaway_statuses: Vec<u16> = (0..7)
        .map(|i| {
            send(
                &addr,
                &runaway,
                &format!("runaway-{i}"),
                &path("ro-run", "a"),
            )
            .0
        })
        .collect();
    if runaway_statuses != [200, 200, 200, 200, 200, 429, 429] {
        problems.push(format!("runaway: {runaway_statuses:?}"));
    }
    let (got, text) = send(&addr, &runaway, "runaway-code", &path("ro-run", "a"));
    if got != 429 || !text.contains("rate_rollout") {
        problems.push(format!("runaway code: {got} {text}"));
    }
    let (got, _) = send(
        &addr,
        &token_a,
        "other-while-runaway",
        &path("ro-a", "at-1"),
    );
    if got != 200 {
        problems.push(format!("another rollout while one runs away: {got}"));
    }

    let records = guard.records_until_sentinel();
    let seen = recorder.seen();
    for (case, _, _, _, _, reaches) in &cases {
        let arrived = seen.iter().any(|r| r.header("x-case") == Some(case));
        if arrived != *reaches {
            problems.push(format!(
                "{case}: at the upstream {arrived}, wanted {reaches}"
            ));
        }
    }
    let runaway_upstream = seen
        .iter()
        .filter(|r| r.header("x-case").is_some_and(|c| c.starts_with("runaway")))
        .count();
    if runaway_upstream != 5 {
        problems.push(format!(
            "{runaway_upstream} runaway requests upstream, wanted 5"
        ));
    }
    let expected_auth = format!("Bearer {UPSTREAM_KEY}");
    for request in &seen {
        if request.header("authorization") != Some(expected_auth.as_str()) {
            problems.push(format!(
                "{:?}: not the upstream key",
                request.header("x-case")
            ));
        }
        if request.headers.iter().any(|(_, v)| v.contains("pgr1.")) {
            problems.push(format!(
                "{:?}: a token reached the upstream",
                request.header("x-case")
            ));
        }
    }
    let keys: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "request" && r["status"] == 200)
        .filter_map(|r| r["key"].as_str())
        .collect();
    for name in ["rollout:ro-a", "rollout:ro-py", "rollout:ro-run", "plain"] {
        if !keys.contains(&name) {
            problems.push(format!("no served audit record for key {name}: {keys:?}"));
        }
    }
    let spikes: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "rate_spike")
        .collect();
    if !spikes
        .iter()
        .any(|r| r["key"] == "rollout:ro-run" && r["reason"] == "rate_rollout")
    {
        problems.push(format!(
            "no rate_spike names the runaway rollout: {spikes:?}"
        ));
    }
    let metrics = metrics(&guard.admin);
    if !metrics.contains(r#"key="rollout:*""#) || metrics.contains(r#"key="rollout:ro-a""#) {
        problems.push("metrics must label every token `rollout:*`".into());
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn metrics(admin: &str) -> String {
    let addr = admin.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to the admin listener");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read metrics");
    text
}

/// Rotation as docs/rollout-tokens.md describes it: a new key put first signs new tokens while the
/// old one still verifies; a key file the daemon cannot use is refused on reload as a whole (both
/// keys stay in force); removing the old line retires its tokens (401). No key and no token
/// appears in the daemon's log or audit records.
#[test]
fn rotation_keeps_the_previous_key_for_its_grace_and_a_bad_key_file_changes_nothing() {
    use nix::sys::signal::Signal;

    const NEW_LINE: &str = "t2 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";
    let recorder = Recorder::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("rollout-tokens.key");
    let write_keys = |text: &str, mode: u32| {
        fs::write(&key_file, text).expect("key file");
        fs::set_permissions(&key_file, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    write_keys(SIGNING_LINE, 0o600);
    let extra = format!(
        "[proxy.rollout_tokens]\nkey_file = \"{}\"\n",
        key_file.display()
    );
    let mut guard = Guard::start(recorder.port, UPSTREAM_KEY, &[], &extra);
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let config = guard.daemon.config_path.clone();
    let reload = |guard: &mut Guard| {
        guard.daemon.signal(Signal::SIGHUP);
        guard
            .daemon
            .wait_for(|e| e["kind"] == "reloaded" || e["kind"] == "reload_failed")
            .expect("a reload outcome")["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let status = |token: &str, case: &str| send(&addr, token, case, &path("ro-1", "a")).0;

    let old = mint(&config, &["--rollout", "ro-1"]);
    write_keys(&format!("{NEW_LINE}{SIGNING_LINE}"), 0o600);
    assert_eq!(reload(&mut guard), "reloaded");
    let new = mint(&config, &["--rollout", "ro-1"]);
    assert_ne!(old, new);
    assert_eq!(
        (status(&old, "grace-old"), status(&new, "grace-new")),
        (200, 200)
    );

    write_keys(NEW_LINE, 0o644);
    assert_eq!(
        reload(&mut guard),
        "reload_failed",
        "a readable key file is refused"
    );
    assert_eq!(
        (status(&old, "refused-old"), status(&new, "refused-new")),
        (200, 200),
        "a refused reload keeps both keys"
    );

    write_keys(NEW_LINE, 0o600);
    assert_eq!(reload(&mut guard), "reloaded");
    assert_eq!(
        (status(&old, "retired-old"), status(&new, "retired-new")),
        (401, 200)
    );

    let records: Vec<String> = guard
        .records_until_sentinel()
        .iter()
        .map(|record| record.to_string())
        .collect();
    let output = format!(
        "{}\n{}",
        guard.daemon.log_lines().join("\n"),
        records.join("\n")
    );
    for line in [SIGNING_LINE, NEW_LINE] {
        let key = line.split_whitespace().nth(1).expect("a key");
        assert!(
            !output.contains(key),
            "a signing key in the daemon's output"
        );
    }
    assert!(!output.contains("pgr1."), "a token in the daemon's output");
}

/// Each rollout has its own requests-in-flight budget: with `concurrency = 1`, a request of
/// rollout A that holds its permit (its head sent with `Expect: 100-continue`; the guard's
/// `100 Continue` says it has passed the limits and waits for the body) makes A's next request
/// 429 `concurrency_rollout`, while rollout B is served; once A's request ends, A is served again.
#[test]
fn a_rollout_in_flight_holds_its_own_concurrency_only() {
    use std::io::{BufRead, BufReader};

    let recorder = Recorder::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("rollout-tokens.key");
    fs::write(&key_file, SIGNING_LINE).expect("key file");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let extra = format!(
        "[proxy.rollout_tokens]\nkey_file = \"{}\"\nconcurrency = 1\n",
        key_file.display()
    );
    let mut guard = Guard::start(recorder.port, UPSTREAM_KEY, &[], &extra);
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let config = guard.daemon.config_path.clone();
    let token_a = mint(&config, &["--rollout", "ro-a"]);
    let token_b = mint(&config, &["--rollout", "ro-b"]);

    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let mut held = TcpStream::connect(&addr).expect("connect");
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        held,
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token_a}\r\nx-case: held\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        path("ro-a", "a"),
        body.len()
    )
    .expect("write the head");
    let mut reader = BufReader::new(held.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read 100 Continue");
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    reader
        .read_line(&mut line)
        .expect("the blank line after it");

    let (status, text) = send(&addr, &token_a, "a-while-held", &path("ro-a", "a"));
    assert!(
        status == 429 && text.contains("concurrency_rollout"),
        "{status} {text}"
    );
    assert_eq!(
        send(&addr, &token_b, "b-while-held", &path("ro-b", "a")).0,
        200
    );

    held.write_all(body.as_bytes()).expect("write the body");
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .expect("the held request's answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop((reader, held));
    // The held request's permit goes back when its response ends, which its audit record marks:
    // wait for that record (the sentinel comes after it) before A's next request.
    let records = guard.records_until_sentinel();
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "request" && r["key"] == "rollout:ro-a" && r["status"] == 200),
        "the held request's record: {records:?}"
    );
    assert_eq!(send(&addr, &token_a, "a-after", &path("ro-a", "a")).0, 200);
}
