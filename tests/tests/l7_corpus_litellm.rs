//! The attack corpus's upstream-facing classes (`upstream`, `query`, `control`, `shape`,
//! `content` in `tests/corpus/attacks.txt`) replayed against the real LiteLLM from the venv
//! (issue 12), twice: directly, with the client key replaced by LiteLLM's master key, to see what
//! LiteLLM itself does with each case; and through proxyguard in front of the same LiteLLM, with
//! the corpus's guard config, where every case must get its expected refusal and LiteLLM must
//! log no call. A per-class table goes to stdout so the figures can be quoted.
//!
//! "A model call" is what LiteLLM's own logging records: a callback module (written beside its
//! config) appends one line per success or failure event, with the case named by an
//! `X-Corpus-Case` header added to the direct run's requests (LiteLLM ignores it). Absence is
//! proved by a sentinel request after each run: once its event (and access-log line) is there,
//! every earlier one is too. Needs the venv from `cargo xtask setup`; no root, no eBPF.

use std::{
    collections::BTreeMap,
    fs,
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use proxyguard_tests::{
    corpus::{self, Entry, Segment, Vars},
    l7::{free_port, new_key, venv, Group, Guard},
    wire,
};
use serde_json::Value;

const MASTER: &str = "sk-litellm-master-corpus";
const CLASSES: &[&str] = &["upstream", "query", "control", "shape", "content"];
/// Cases in flight at once, in each run.
const THREADS: usize = 8;
/// Some cases make LiteLLM wait (a mock delay, a provider it cannot reach).
const DIRECT_PATIENCE: Duration = Duration::from_secs(120);

/// Appends one JSON line per LiteLLM success or failure event, naming the case by the
/// `x-corpus-case` request header wherever LiteLLM keeps the request's headers.
const CALLBACK: &str = r#"
import json, os
from litellm.integrations.custom_logger import CustomLogger

def _case(obj, depth=0):
    if depth > 6:
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() == "x-corpus-case" and isinstance(value, str):
                return value
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        return None
    for value in items:
        found = _case(value, depth + 1)
        if found:
            return found
    return None

class Calls(CustomLogger):
    def _write(self, event, kwargs):
        case = _case(kwargs.get("litellm_params")) or _case(kwargs.get("standard_logging_object"))
        line = {"event": event, "case": case, "call_type": str(kwargs.get("call_type"))}
        with open(os.environ["CORPUS_CALLS_LOG"], "a") as f:
            f.write(json.dumps(line) + "\n")

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._write("success", kwargs)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._write("failure", kwargs)

logger = Calls()
"#;

/// LiteLLM with the corpus's model names (`m`, `c`, `e`) as `mock_response` deployments, its
/// master key, and the call-logging callback.
struct LiteLlm {
    _group: Group,
    port: u16,
    log: PathBuf,
    calls: PathBuf,
    _dir: tempfile::TempDir,
}

impl LiteLlm {
    fn start() -> LiteLlm {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut config = String::from("model_list:\n");
        for model in ["m", "c", "e"] {
            config.push_str(&format!(
                "  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n      \
                 api_key: sk-provider-unused\n      mock_response: \"Hello from the mock model.\"\n"
            ));
        }
        config.push_str(&format!(
            "litellm_settings:\n  callbacks: corpus_calls.logger\n\
             general_settings:\n  master_key: {MASTER}\n"
        ));
        let config_path = dir.path().join("litellm.yaml");
        fs::write(&config_path, config).expect("write LiteLLM config");
        fs::write(dir.path().join("corpus_calls.py"), CALLBACK).expect("write the callback");
        let log = dir.path().join("litellm.log");
        let calls = dir.path().join("calls.jsonl");
        let file = fs::File::create(&log).expect("log");
        let group = Group::spawn(
            Command::new(venv().join("bin/litellm"))
                .arg("--config")
                .arg(&config_path)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--telemetry", "False"])
                .current_dir(dir.path())
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("CORPUS_CALLS_LOG", &calls)
                .stdout(file.try_clone().expect("log"))
                .stderr(file),
        );
        let litellm = LiteLlm {
            _group: group,
            port,
            log,
            calls,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "LiteLLM did not listen on {port}; its log:\n{}",
                litellm.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        litellm
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// uvicorn's access-log lines, one per request answered.
    fn access_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(" HTTP/1.1\" "))
            .map(str::to_owned)
            .collect()
    }

    /// The callback's events so far.
    fn calls(&self) -> Vec<Value> {
        fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a callback line"))
            .collect()
    }

    /// Waits for `until` to hold of the events; panics with the log if it never does.
    fn calls_until(&self, what: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let calls = self.calls();
            if until(&calls) {
                return calls;
            }
            assert!(
                Instant::now() < deadline,
                "LiteLLM never logged {what}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What LiteLLM did with one case when sent to it directly.
#[derive(Debug, Default, Clone)]
struct Direct {
    /// None: no complete answer (closed, or still waiting at the patience).
    status: Option<u16>,
    successes: usize,
    failures: usize,
    /// A short excerpt of a non-2xx body, for the report.
    said: String,
}

#[test]
fn upstream_classes_against_litellm_directly_and_through_the_guard() {
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/attacks.txt"))
        .expect("read the corpus");
    let entries = corpus::parse(&text).expect("the corpus parses");
    let (cases, excluded) = select(&entries);
    println!(
        "{} cases of {CLASSES:?} replayed; excluded: {}",
        cases.len(),
        if excluded.is_empty() {
            "none"
        } else {
            "as below"
        }
    );
    for (entry, why) in &excluded {
        println!("excluded: {} ({}): {why}", entry.name, entry.category);
    }
    assert!(!cases.is_empty(), "no corpus cases in {CLASSES:?}");

    let litellm = LiteLlm::start();
    let version = Command::new(venv().join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();

    // 1. Directly to LiteLLM, the client's key being LiteLLM's master key.
    let direct_vars = vars(&litellm.addr(), MASTER);
    let mut direct = run_direct(&cases, &litellm.addr(), &direct_vars);
    let sentinel = raw_request(
        &litellm.addr(),
        &chat_request(
            &litellm.addr(),
            "/v1/chat/completions",
            MASTER,
            Some("sentinel-direct"),
        ),
        DIRECT_PATIENCE,
    );
    assert_eq!(sentinel.0, Some(200), "the direct sentinel: {}", sentinel.1);
    let calls = litellm.calls_until("the direct sentinel's call", |calls| {
        calls
            .iter()
            .any(|c| c["case"] == "sentinel-direct" && c["event"] == "success")
    });
    // 2. Through proxyguard in front of the same LiteLLM.
    let access_before = litellm.access_lines().len();
    let calls_before = calls.len();
    drop(calls);
    let (_, expired_hash) = new_key();
    let guard = Guard::start(
        litellm.port,
        MASTER,
        &["good"],
        &corpus::guard_config(&expired_hash),
    );
    let good = guard.key("good").to_owned();
    let guard_addr = guard.base.trim_start_matches("http://").to_owned();
    let guard_vars = vars(&guard_addr, &good);
    let guard_results = run_guard(&cases, &guard_addr, &guard_vars);
    // Sentinel: a good call through the guard on the unversioned route, after every case.
    let sentinel = raw_request(
        &guard_addr,
        &chat_request(&guard_addr, "/chat/completions", &good, None),
        DIRECT_PATIENCE,
    );
    assert_eq!(
        sentinel.0,
        Some(200),
        "the guard's sentinel: {}",
        sentinel.1
    );
    let calls = litellm.calls_until("the guard sentinel's call", |calls| {
        calls[calls_before.min(calls.len())..]
            .iter()
            .any(|c| c["case"].is_null() && c["event"] == "success")
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while litellm.access_lines().len() <= access_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let arrived: Vec<String> = litellm.access_lines()[access_before..].to_vec();

    // Every event by its case. Events naming no case are LiteLLM's proxy-layer errors (failure
    // events, logged before any call and without the request's headers) or, after the direct
    // run, the guard run's; a direct case's event may trail in after its sentinel.
    let mut unattributed = Vec::new();
    let mut proxy_errors = 0;
    let mut guard_calls = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        let case = call["case"].as_str().unwrap_or("");
        match direct.get_mut(case) {
            Some(d) if call["event"] == "success" => d.successes += 1,
            Some(d) => d.failures += 1,
            None if case == "sentinel-direct" => {}
            None if i >= calls_before => guard_calls.push(call),
            None if call["event"] != "success" => proxy_errors += 1,
            None => unattributed.push(call.to_string()),
        }
    }

    // The table, and each case's line.
    println!("\nLiteLLM {version}, the corpus's upstream-facing classes:");
    for case in &cases {
        let d = &direct[case.name.as_str()];
        let status = d.status.map_or("no answer".to_owned(), |s| s.to_string());
        println!(
            "  {:<8} {:<45} direct: {status:<9} calls {} (failure events {}){}; guard: {}",
            case.category,
            case.name,
            d.successes,
            d.failures,
            if d.said.is_empty() {
                String::new()
            } else {
                format!(" {:?}", d.said)
            },
            guard_results[case.name.as_str()].1,
        );
    }
    println!(
        "\n| class | cases | direct: served 2xx | refused 4xx | failed 5xx | no answer | model calls logged | guard: refused as expected | guard: calls logged |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut totals = [0usize; 7];
    // The guard's run names no case to LiteLLM: its calls are counted for the whole run.
    let guard_successes = guard_calls
        .iter()
        .filter(|c| c["event"] == "success")
        .count();
    let guard_logged = guard_successes.saturating_sub(1) + arrived.len().saturating_sub(1);
    let per_class_logged = if guard_logged == 0 { "0" } else { "see all" };
    let mut unserved_classes = Vec::new();
    for class in CLASSES {
        let of: Vec<&Entry> = cases
            .iter()
            .copied()
            .filter(|c| c.category == *class)
            .collect();
        let d = |pred: &dyn Fn(&Direct) -> bool| {
            of.iter().filter(|c| pred(&direct[c.name.as_str()])).count()
        };
        let row = [
            of.len(),
            d(&|d| d.status.is_some_and(|s| (200..300).contains(&s))),
            d(&|d| d.status.is_some_and(|s| (400..500).contains(&s))),
            d(&|d| d.status.is_some_and(|s| s >= 500)),
            d(&|d| d.status.is_none_or(|s| s < 200 || (300..400).contains(&s))),
            d(&|d| d.successes > 0),
            of.iter()
                .filter(|c| guard_results[c.name.as_str()].0)
                .count(),
        ];
        if row[1] == 0 {
            unserved_classes.push(*class);
        }
        for (total, n) in totals.iter_mut().zip(row) {
            *total += n;
        }
        println!(
            "| {class} | {} | {} | {} | {} | {} | {} | {} | {per_class_logged} |",
            row[0], row[1], row[2], row[3], row[4], row[5], row[6]
        );
    }
    println!(
        "| all | {} | {} | {} | {} | {} | {} | {} | {guard_logged} |\n",
        totals[0], totals[1], totals[2], totals[3], totals[4], totals[5], totals[6]
    );
    println!(
        "model calls logged: cases for which LiteLLM logged a successful call (the per-case \
         lines above also count its failure events; {proxy_errors} more failure events of the \
         direct run were its proxy layer's errors, naming no case). Through the guard: the \
         requests LiteLLM answered and the calls it logged, the sentinel's left out: {} \
         requests, {} calls ({} failure events after the direct run's sentinel).",
        arrived.len().saturating_sub(1),
        guard_successes.saturating_sub(1),
        guard_calls.len() - guard_successes
    );

    let mut problems = Vec::new();
    let mismatches: Vec<String> = cases
        .iter()
        .filter(|c| !guard_results[c.name.as_str()].0)
        .map(|c| {
            format!(
                "  {} (line {}): expected `{}`, got `{}`",
                c.name,
                c.line,
                c.expect_text,
                guard_results[c.name.as_str()].1
            )
        })
        .collect();
    if !mismatches.is_empty() {
        problems.push(format!(
            "through the guard, {} cases got another outcome:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        ));
    }
    if arrived.len() != 1 || !arrived[0].contains(" /chat/completions HTTP/1.1\"") {
        problems.push(format!(
            "through the guard, LiteLLM answered more than the sentinel:\n{}",
            arrived.join("\n")
        ));
    }
    // Failure events may still trail in from the direct run; LiteLLM having answered no request
    // but the sentinel (above) is what shows none of the guard's cases reached it.
    if guard_successes != 1 {
        problems.push(format!(
            "through the guard, LiteLLM logged calls besides the sentinel's: {guard_calls:?}"
        ));
    }
    if !unserved_classes.is_empty() {
        problems.push(format!(
            "sent directly, LiteLLM served no case of {unserved_classes:?}: those classes are \
             refused upstream already"
        ));
    }
    if !unattributed.is_empty() {
        problems.push(format!(
            "LiteLLM logged calls of the direct run that name no case: {unattributed:?}"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The cases of the five classes that can be replayed as one request on one connection; the rest
/// of those classes, with why (none is skipped silently).
fn select(entries: &[Entry]) -> (Vec<&Entry>, Vec<(&Entry, String)>) {
    let probe = vars("127.0.0.1:1", "k");
    let mut cases = Vec::new();
    let mut excluded = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| CLASSES.contains(&e.category.as_str()))
    {
        match corpus::render(&entry.raw, &probe) {
            Ok(segments) if matches!(segments.as_slice(), [Segment::Bytes(_)]) => {
                if entry.expect.iter().all(|steps| steps.len() == 1) {
                    cases.push(entry);
                } else {
                    excluded.push((entry, "expects other than one answer".to_owned()));
                }
            }
            Ok(_) => excluded.push((
                entry,
                "pauses or drips: its timing targets the guard".into(),
            )),
            Err(err) => excluded.push((entry, format!("does not render: {err:#}"))),
        }
    }
    (cases, excluded)
}

fn vars(addr: &str, key: &str) -> Vars {
    Vars::from([
        ("HOST", addr.to_owned()),
        ("GOOD_KEY", key.to_owned()),
        ("UPSTREAM_KEY", MASTER.to_owned()),
    ])
}

fn bytes_of(entry: &Entry, vars: &Vars) -> Vec<u8> {
    match corpus::render(&entry.raw, vars)
        .expect("rendered in select")
        .as_slice()
    {
        [Segment::Bytes(bytes)] => bytes.clone(),
        other => panic!("{}: {other:?}", entry.name),
    }
}

/// The request with `X-Corpus-Case: NAME` after its request line.
fn tagged(mut bytes: Vec<u8>, name: &str) -> Vec<u8> {
    let at = bytes
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a request line")
        + 2;
    let header = format!("X-Corpus-Case: {name}\r\n");
    bytes.splice(at..at, header.bytes());
    bytes
}

fn chat_request(host: &str, path: &str, key: &str, case: Option<&str>) -> Vec<u8> {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let case = case.map_or(String::new(), |c| format!("X-Corpus-Case: {c}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{case}Authorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `bytes` and reads until one whole response has come (LiteLLM keeps connections open),
/// the server closes, or `patience` passes. Returns its status and a short excerpt of its body.
fn raw_request(addr: &str, bytes: &[u8], patience: Duration) -> (Option<u16>, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (None, "connect failed".into());
    };
    if stream.write_all(bytes).is_err() {
        // The server may have answered before taking the whole request: read what it sent.
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + patience;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let (responses, _) = wire::split_responses(&received);
        if let Some(response) = responses.iter().find(|r| r.status >= 200) {
            let said = if (200..300).contains(&response.status) {
                String::new()
            } else {
                let body = String::from_utf8_lossy(&response.body);
                body.chars().take(100).collect()
            };
            return (Some(response.status), said);
        }
        match stream.read(&mut buf) {
            Ok(0) => return (None, "closed".into()),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return (None, "no answer within the patience".into());
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return (None, format!("read failed: {err}")),
        }
    }
}

/// Runs `each` over the cases, THREADS at a time, keyed by case name.
fn in_parallel<T: Send>(
    cases: &[&Entry],
    each: impl Fn(&Entry) -> T + Sync,
) -> BTreeMap<String, T> {
    let next = AtomicUsize::new(0);
    let out = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                while let Some(entry) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let result = each(entry);
                    out.lock()
                        .expect("results lock")
                        .insert(entry.name.clone(), result);
                }
            });
        }
    });
    out.into_inner().expect("results lock")
}

fn run_direct(cases: &[&Entry], addr: &str, vars: &Vars) -> BTreeMap<String, Direct> {
    in_parallel(cases, |entry| {
        let bytes = tagged(bytes_of(entry, vars), &entry.name);
        let (status, said) = raw_request(addr, &bytes, DIRECT_PATIENCE);
        Direct {
            status,
            said,
            ..Direct::default()
        }
    })
}

/// Per case: whether the guard gave the expected outcome, and what it gave.
fn run_guard(cases: &[&Entry], addr: &str, vars: &Vars) -> BTreeMap<String, (bool, String)> {
    in_parallel(cases, |entry| {
        let segments = [Segment::Bytes(bytes_of(entry, vars))];
        match wire::exchange(addr, &segments, Duration::from_secs(10)) {
            Ok(exchange) => (
                entry.expect.iter().any(|steps| exchange.matches(steps)),
                exchange.describe(),
            ),
            Err(err) => (false, format!("connect failed: {err}")),
        }
    })
}
