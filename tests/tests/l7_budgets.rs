//! Token and spend budgets end to end (issue 14): the official `openai` SDK → proxyguard
//! (`run --no-kernel`) → a real LiteLLM whose `mock_response` model reports usage (10 prompt and
//! 20 completion tokens for a plain answer, 8 and 6 for a stream). Counts and states only, never
//! durations: waits are for a condition, within the harness's patience.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use proxyguard_tests::{
    daemon::Daemon,
    l7::{client, new_key, LiteLlm},
};
use serde_json::{json, Value};

const MASTER: &str = "sk-litellm-master-budgets";

/// A daemon in front of `litellm` with keys `(name, extra TOML lines)` and `extra` in `[proxy]`.
struct Setup {
    dir: tempfile::TempDir,
    upstream: u16,
    keys: Vec<(String, String, String, String)>,
    extra: String,
}

impl Setup {
    fn new(upstream: u16, keys: &[(&str, &str)], extra: &str) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("upstream.key");
        fs::write(&key_file, format!("{MASTER}\n")).expect("key file");
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
        let keys = keys
            .iter()
            .map(|(name, lines)| {
                let (key, hash) = new_key();
                (name.to_string(), key, hash, lines.to_string())
            })
            .collect();
        Setup {
            dir,
            upstream,
            keys,
            extra: extra.to_owned(),
        }
    }

    fn config(&self, more: &str) -> String {
        let mut config = format!(
            "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{}\"\nupstream_key_file = \"{}\"\n\n[proxy.pricing.models.\"mock-gpt\"]\ninput = 1000.0\noutput = 1000.0\n{}\n{more}\n",
            self.upstream,
            self.dir.path().join("upstream.key").display(),
            self.extra,
        );
        for (name, _, hash, lines) in &self.keys {
            config.push_str(&format!(
                "\n[[proxy.keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n{lines}\n"
            ));
        }
        config
    }

    fn start(&self, more: &str) -> Daemon {
        Daemon::start_with_env(&self.config(more), &["--no-kernel"], &[])
    }

    fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|k| k.0 == name).expect("key").1
    }
}

fn base(daemon: &Daemon) -> String {
    format!(
        "http://{}",
        daemon.ready["proxy"]["listen"].as_str().expect("listen")
    )
}

/// One SDK chat completion as `key`.
fn chat(daemon: &Daemon, key: &str, spec: Value) -> Value {
    client("usage", &base(daemon), key, Some(&spec.to_string()))
}

fn usage_of(daemon: &Daemon, key: &str) -> Value {
    let report = daemon.cli_json(&["usage", "--key", key]);
    report["keys"][0].clone()
}

fn error_code(answer: &Value) -> String {
    let body: Value =
        serde_json::from_str(answer["body"].as_str().unwrap_or("{}")).unwrap_or_default();
    body["error"]["code"].as_str().unwrap_or("").to_owned()
}

/// The audit line of the next metered request of `key`.
fn audit_of(daemon: &mut Daemon, key: &str) -> Value {
    daemon
        .wait_for(|e| e["kind"] == "request" && e["key"] == key && e["tokens_in"].is_u64())
        .expect("a metered request's audit line")
}

#[test]
fn usage_is_counted_as_litellm_reports_it_and_budgets_and_lists_refuse() {
    let litellm = LiteLlm::start(MASTER, None, &[]);
    let setup = Setup::new(
        litellm.port,
        &[
            ("counted", ""),
            ("tight", "tokens_per_day = 100"),
            ("spender", "usd_per_day = 0.1"),
            ("picky", "models = [\"other-*\"]"),
            ("remote", "from = [\"10.0.0.0/8\"]"),
            ("shapes", ""),
        ],
        "",
    );
    let mut daemon = setup.start("");

    // Non-streaming: the SDK and the audit line agree with what LiteLLM reported.
    let plain = chat(&daemon, setup.key("counted"), json!({}));
    assert_eq!(plain["ok"], true, "{plain}");
    assert_eq!(
        (
            &plain["usage"]["prompt_tokens"],
            &plain["usage"]["completion_tokens"]
        ),
        (&json!(10), &json!(20))
    );
    let line = audit_of(&mut daemon, "counted");
    assert_eq!(
        (
            &line["tokens_in"],
            &line["tokens_out"],
            &line["tokens_estimated"],
            &line["model"]
        ),
        (&json!(10), &json!(20), &json!(false), &json!("mock-gpt")),
        "{line}"
    );
    assert!(
        (line["cost_usd"].as_f64().unwrap() - 0.03).abs() < 1e-9,
        "{line}"
    );

    // Streaming without include_usage: the guard asked for it (the usage is exact, not an
    // estimate) and the client never saw the extra chunk.
    let stream = chat(&daemon, setup.key("counted"), json!({"stream": true}));
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["text"], "Hello from the mock model.");
    assert_eq!(
        (&stream["usage_chunks"], &stream["usage"]),
        (&json!(0), &Value::Null)
    );
    let line = audit_of(&mut daemon, "counted");
    assert_eq!(
        (
            &line["tokens_in"],
            &line["tokens_out"],
            &line["tokens_estimated"]
        ),
        (&json!(8), &json!(6), &json!(false)),
        "{line}"
    );

    // A client that asked gets its usage chunk, once.
    let asked = chat(
        &daemon,
        setup.key("counted"),
        json!({"stream": true, "include_usage": true}),
    );
    assert_eq!(asked["usage_chunks"], 1, "{asked}");
    assert_eq!(
        (
            &asked["usage"]["prompt_tokens"],
            &asked["usage"]["completion_tokens"]
        ),
        (&json!(8), &json!(6))
    );
    audit_of(&mut daemon, "counted");

    let report = usage_of(&daemon, "counted");
    assert_eq!(report["today"]["tokens"], 30 + 14 + 14, "{report}");
    assert_eq!(report["today"]["requests"], 3, "{report}");
    let model = &report["month"]["models"]["mock-gpt"];
    assert_eq!(
        (&model["tokens_in"], &model["tokens_out"]),
        (&json!(26), &json!(32)),
        "{report}"
    );

    // Anthropic's messages and the Responses API, as LiteLLM's mock answers them.
    for (path, body, tokens) in [
        (
            "/v1/messages",
            json!({"model": "mock-gpt", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
            (2095, 503),
        ),
        (
            "/v1/responses",
            json!({"model": "mock-gpt", "input": "hi"}),
            (36, 87),
        ),
    ] {
        let answer = proxyguard_tests::l7::http(
            &base(&daemon),
            json!({"path": path, "headers": {"content-type": "application/json", "x-api-key": setup.key("shapes")}, "body": body.to_string()}),
        );
        assert_eq!(answer["status"], 200, "{path}: {answer}");
        let line = audit_of(&mut daemon, "shapes");
        assert_eq!(
            (
                &line["tokens_in"],
                &line["tokens_out"],
                &line["tokens_estimated"]
            ),
            (&json!(tokens.0), &json!(tokens.1), &json!(false)),
            "{path}: {line}"
        );
    }

    // 100 tokens a day, 30 a request, 41 reserved (a 1-token prompt and max_tokens 40): the
    // third does not fit.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = chat(&daemon, setup.key("tight"), json!({"max_tokens": 40}));
        statuses.push((
            answer["status"].as_u64().unwrap_or(200),
            error_code(&answer),
        ));
        if answer["ok"] != true {
            assert!(answer["retry_after"].as_str().is_some(), "{answer}");
        }
    }
    assert_eq!(
        statuses,
        [
            (200, String::new()),
            (200, String::new()),
            (429, "token_budget".into())
        ]
    );
    let left = usage_of(&daemon, "tight");
    assert_eq!(left["left"]["tokens_per_day"], 40, "{left}");

    // $0.1 a day at $1000 per million: $0.03 a request, $0.011 reserved: the fourth is refused.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let answer = chat(&daemon, setup.key("spender"), json!({"max_tokens": 10}));
        statuses.push((
            answer["status"].as_u64().unwrap_or(200),
            error_code(&answer),
        ));
    }
    assert_eq!(statuses[3], (429, "spend_budget".into()), "{statuses:?}");
    assert!(statuses[..3].iter().all(|s| s.0 == 200), "{statuses:?}");

    let picky = chat(&daemon, setup.key("picky"), json!({}));
    assert_eq!(
        (picky["status"].as_u64(), error_code(&picky)),
        (Some(403), "model_not_allowed".into())
    );
    let remote = chat(&daemon, setup.key("remote"), json!({}));
    assert_eq!(
        (remote["status"].as_u64(), error_code(&remote)),
        (Some(403), "source_not_allowed".into())
    );

    // Prometheus: tokens by key, model and direction, and spend.
    let admin = daemon.ready["proxy"]["admin"].as_str().unwrap().to_owned();
    let metrics = proxyguard_tests::l7::http(
        &format!("http://{admin}"),
        json!({"method": "GET", "path": "/metrics"}),
    );
    let text = metrics["body"].as_str().unwrap();
    for line in [
        r#"proxyguard_tokens_total{key="counted",model="mock-gpt",direction="in"} 26"#,
        r#"proxyguard_tokens_total{key="counted",model="mock-gpt",direction="out"} 32"#,
        r#"proxyguard_tokens_total{key="tight",model="mock-gpt",direction="in"} 20"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(
        text.contains(r#"proxyguard_spend_usd_total{key="spender",model="mock-gpt"} 0.09"#),
        "{text}"
    );
}

/// Waits until the state file says `key` used `tokens` today.
fn wait_for_state(dir: &Path, key: &str, tokens: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: Value = fs::read(dir.join("usage.json"))
            .ok()
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default();
        if state["keys"][key]["day_tokens"] == tokens {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "usage.json never showed {tokens} for {key}: {state}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn counters_survive_kill_9_and_sigterm_and_a_spike_suspends_until_resumed() {
    let litellm = LiteLlm::start(MASTER, None, &[]);
    let state = tempfile::tempdir().expect("state dir");
    // A corrupt file from before: reported, kept aside, and the daemon starts from zero.
    fs::write(
        state.path().join("usage.json"),
        b"{\"keys\": {\"a\": {\"day_tok",
    )
    .unwrap();
    let setup = Setup::new(
        litellm.port,
        &[("a", ""), ("b", "")],
        &format!(
            "[proxy.usage]\nstate_dir = \"{}\"\npersist_secs = 1\n",
            state.path().display()
        ),
    );
    let daemon = setup.start("");
    // Reported before the daemon is ready (its `usage_state_corrupt` record comes before the
    // `ready` line the harness waits for), in the log too.
    assert!(
        daemon
            .log_lines()
            .iter()
            .any(|line| line.contains("usage.json.corrupt-") && line.contains("start from zero")),
        "{:?}",
        daemon.log_lines()
    );
    let kept = fs::read_dir(state.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("usage.json.corrupt-")
        })
        .count();
    assert_eq!(kept, 1);

    for _ in 0..3 {
        assert_eq!(chat(&daemon, setup.key("a"), json!({}))["ok"], true);
    }
    // Written within persist_secs, without any shutdown; then a crash.
    wait_for_state(state.path(), "a", 90);
    daemon.kill_hard();
    let daemon = setup.start("");
    let after_kill = usage_of(&daemon, "a");
    assert_eq!(
        (
            &after_kill["today"]["tokens"],
            &after_kill["today"]["requests"]
        ),
        (&json!(90), &json!(3))
    );

    // SIGTERM writes the last state: nothing is lost.
    assert_eq!(chat(&daemon, setup.key("a"), json!({}))["ok"], true);
    daemon.stop();
    let spiky = "[proxy.usage.spike]\nfloor = 25\nfactor = 100.0\naction = \"suspend\"\n";
    let mut daemon = setup.start(spiky);
    assert_eq!(usage_of(&daemon, "a")["today"]["tokens"], 120);

    // b's first answer (30 tokens, nothing before) is a spike: it gets through, and b is
    // suspended after it.
    assert_eq!(chat(&daemon, setup.key("b"), json!({}))["ok"], true);
    let spike = daemon
        .wait_for(|e| e["kind"] == "usage_spike")
        .expect("a usage_spike record");
    assert_eq!(
        (&spike["key"], &spike["action"], &spike["tokens_5m"]),
        (&json!("b"), &json!("suspend"), &json!(30))
    );
    let refused = chat(&daemon, setup.key("b"), json!({}));
    assert_eq!(
        (refused["status"].as_u64(), error_code(&refused)),
        (Some(403), "key_suspended".into())
    );
    let listed = daemon.cli_json(&["keys", "list"]);
    let row = |listed: &Value, name: &str| {
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .cloned()
            .unwrap()
    };
    assert!(row(&listed, "b")["suspended"].is_string(), "{listed}");
    assert!(row(&listed, "a")["suspended"].is_null(), "{listed}");

    // The suspension survives a restart.
    daemon.stop();
    let daemon = setup.start(spiky);
    let refused = chat(&daemon, setup.key("b"), json!({}));
    assert_eq!(error_code(&refused), "key_suspended");
    assert!(row(&daemon.cli_json(&["keys", "list"]), "b")["suspended"].is_string());

    let resumed = daemon.cli_json(&["keys", "resume", "b"]);
    assert_eq!(resumed["resumed"], true, "{resumed}");
    assert_eq!(chat(&daemon, setup.key("b"), json!({}))["ok"], true);
    assert!(row(&daemon.cli_json(&["keys", "list"]), "b")["suspended"].is_null());
}

/// An upstream that answers one request with a stream that never reports usage, and hands back
/// the body it was sent.
fn usage_less_upstream() -> (u16, std::sync::mpsc::Receiver<Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        let _ = tx.send(serde_json::from_slice(&body).unwrap_or_default());
        let mut stream = stream;
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
              data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\n\n\
              : keep-alive\n\n\
              data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world\"}}]}\n\n",
        );
    });
    (port, rx)
}

#[test]
fn a_stream_without_usage_is_estimated_and_marked() {
    let (port, sent) = usage_less_upstream();
    let setup = Setup::new(port, &[("est", "")], "");
    let mut daemon = setup.start("");
    let answer = proxyguard_tests::l7::http(
        &base(&daemon),
        json!({"path": "/v1/chat/completions",
               "headers": {"content-type": "application/json", "authorization": format!("Bearer {}", setup.key("est"))},
               "body": json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()}),
    );
    assert_eq!(answer["status"], 200, "{answer}");
    assert!(
        answer["body"].as_str().unwrap().contains("world"),
        "{answer}"
    );
    // The guard asked for usage on the way up; none came back.
    let upstream_saw = sent
        .recv_timeout(Duration::from_secs(30))
        .expect("the upstream's request");
    assert_eq!(
        upstream_saw["stream_options"]["include_usage"], true,
        "{upstream_saw}"
    );
    let line = audit_of(&mut daemon, "est");
    // "hi" is one token; "Hello world" is 11 characters, three tokens at four a token.
    assert_eq!(
        (
            &line["tokens_in"],
            &line["tokens_out"],
            &line["tokens_estimated"]
        ),
        (&json!(1), &json!(3), &json!(true)),
        "{line}"
    );
    let report = usage_of(&daemon, "est");
    assert_eq!(
        report["month"]["models"]["other"]["estimated_requests"], 1,
        "{report}"
    );
}
