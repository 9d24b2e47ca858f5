//! Routes as data (issue 21), through the real daemon to the recording upstream: the
//! agent-lightning profile serves 1.0's agent routes with the rollout in the audit record and
//! keeps its trainer API closed; a `[[proxy.routes]]` entry from the config is served with its
//! own query allow-list; and the agent-lightning profile's default limits carry 80 requests at
//! once on one key (8 rollouts × 10 calls in flight) without a 429.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    sync::{Arc, Barrier},
    time::Duration,
};

use proxyguard_tests::{l7::Guard, recorder::Recorder, upstream::read_response};
use serde_json::{json, Value};

const UPSTREAM_KEY: &str = "sk-upstream-routes";
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One request with `key`; returns the status (0 when no answer came).
fn send(addr: &str, key: &str, method: &str, target: &str, body: &str) -> u16 {
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    read_response(&mut BufReader::new(stream)).unwrap_or(0)
}

fn request_records(records: &[Value]) -> Vec<&Value> {
    records.iter().filter(|r| r["kind"] == "request").collect()
}

#[test]
fn agent_lightning_one_zero_routes_reach_the_upstream_attributed() {
    let recorder = Recorder::start();
    let mut guard = Guard::start(
        recorder.port,
        UPSTREAM_KEY,
        &["trainer"],
        "upstream_kind = \"agent-lightning\"\n",
    );
    let key = guard.key("trainer").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();

    let chat = "/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions";
    let completions = "/proxy/rollout/r2/attempt/0/mode/val/openai/v1/completions";
    let events = "/api/rollouts/r1/attempt/a1/events";
    let event = r#"{"event_type":"reward","data":{"value":1.0}}"#;
    assert_eq!(send(&addr, &key, "POST", chat, CHAT), 200, "{chat}");
    assert_eq!(
        send(
            &addr,
            &key,
            "POST",
            completions,
            r#"{"model":"m","prompt":"hi"}"#
        ),
        200,
        "{completions}"
    );
    assert_eq!(send(&addr, &key, "POST", events, event), 200, "{events}");
    // 0.3's LiteLLM paths stay served on the same profile.
    let old = "/rollout/r3/attempt/a3/v1/chat/completions";
    assert_eq!(send(&addr, &key, "POST", old, CHAT), 200, "{old}");
    // Refused before the upstream: the trainer API (no admin key named), a mode 1.0 does not
    // have, an upstream path 1.0 does not serve, a method the route does not take.
    let refused = [
        ("GET", "/api/rollouts", "", 404),
        ("POST", "/proxy/pause", "{}", 404),
        ("DELETE", "/api/models", "", 404),
        (
            "POST",
            "/proxy/rollout/r1/attempt/a1/mode/test/openai/v1/chat/completions",
            CHAT,
            400,
        ),
        (
            "POST",
            "/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/embeddings",
            r#"{"model":"m","input":"x"}"#,
            404,
        ),
        ("GET", events, "", 405),
    ];
    for (method, path, body, status) in refused {
        assert_eq!(
            send(&addr, &key, method, path, body),
            status,
            "{method} {path}"
        );
    }

    let seen = recorder.seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [chat, completions, events, old],
        "what reached the upstream"
    );
    for got in &seen {
        assert_eq!(
            got.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str()),
            "{}: the upstream sees only the injected key",
            got.path
        );
    }
    assert_eq!(seen[2].body, event.as_bytes());

    let records = guard.records_until_sentinel();
    let served: Vec<&Value> = request_records(&records)
        .into_iter()
        .filter(|r| r["status"] == 200)
        .collect();
    let got: Vec<(Value, Value, Value)> = served
        .iter()
        .map(|r| {
            (
                r["route"].clone(),
                r["rollout"].clone(),
                r["attempt"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                json!(
                    "/proxy/rollout/{id}/attempt/{id}/mode/{train|val}/openai/v1/chat/completions"
                ),
                json!("r1"),
                json!("a1")
            ),
            (
                json!("/proxy/rollout/{id}/attempt/{id}/mode/{train|val}/openai/v1/completions"),
                json!("r2"),
                json!("0")
            ),
            (
                json!("/api/rollouts/{id}/attempt/{id}/events"),
                json!("r1"),
                json!("a1")
            ),
            (
                json!("/rollout/{id}/attempt/{id}/v1/chat/completions"),
                json!("r3"),
                json!("a3")
            ),
        ]
    );
}

#[test]
fn the_trainer_api_opens_to_a_named_admin_key_only() {
    let recorder = Recorder::start();
    let mut guard = Guard::start(
        recorder.port,
        UPSTREAM_KEY,
        &["trainer", "agent"],
        "upstream_kind = \"agent-lightning\"\n[proxy.admin_routes]\nkeys = [\"trainer\"]\n",
    );
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let (trainer, agent) = (
        guard.key("trainer").to_owned(),
        guard.key("agent").to_owned(),
    );
    assert_eq!(send(&addr, &agent, "GET", "/api/rollouts/r1", ""), 404);
    assert_eq!(send(&addr, &trainer, "GET", "/api/rollouts/r1", ""), 200);
    assert_eq!(send(&addr, &trainer, "GET", "/proxy/state", ""), 200);
    // Known admin routes still take only their methods.
    assert_eq!(send(&addr, &trainer, "PUT", "/proxy/state", ""), 405);
    let paths: Vec<String> = recorder.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/api/rollouts/r1", "/proxy/state"]);
    let records = guard.records_until_sentinel();
    let admin: Vec<&Value> = request_records(&records)
        .into_iter()
        .filter(|r| r["status"] == 200)
        .collect();
    assert_eq!(admin.len(), 2);
    assert!(
        admin.iter().all(|r| r.get("rollout").is_none()),
        "trainer routes are not attributed: {admin:?}"
    );
}

#[test]
fn a_route_from_the_config_is_served() {
    let recorder = Recorder::start();
    let extra =
        "[[proxy.routes]]\nname = \"rerank\"\npath = \"/v1/rerank\"\nmethods = [\"POST\"]\n\
                 shape = \"embeddings\"\nquery = [\"top_n\"]\n\n\
                 [[proxy.routes]]\nname = \"team-chat\"\n\
                 path = \"/tenant/{tid:id}/rollout/{rid:id}/attempt/{aid:id}/v1/chat/completions\"\n\
                 methods = [\"POST\"]\nshape = \"chat\"\nrollout = \"rid\"\nattempt = \"aid\"\n\n\
                 [proxy.limits]\nbody_per_route = { rerank = 65536 }\n";
    let mut guard = Guard::start(recorder.port, UPSTREAM_KEY, &["app"], extra);
    let key = guard.key("app").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let rerank = r#"{"model":"m","input":"query"}"#;
    assert_eq!(send(&addr, &key, "POST", "/v1/rerank?top_n=3", rerank), 200);
    let team = "/tenant/t1/rollout/r7/attempt/a7/v1/chat/completions";
    assert_eq!(send(&addr, &key, "POST", team, CHAT), 200);
    // Its allow-list, its methods and its own body limit hold; the profile's routes stay.
    assert_eq!(send(&addr, &key, "POST", "/v1/rerank?model=x", rerank), 400);
    assert_eq!(send(&addr, &key, "GET", "/v1/rerank", ""), 405);
    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(send(&addr, &key, "POST", "/v1/rerank", &big), 413);
    assert_eq!(send(&addr, &key, "POST", "/v1/chat/completions", CHAT), 200);

    let paths: Vec<String> = recorder.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v1/rerank?top_n=3", team, "/v1/chat/completions"]);
    let records = guard.records_until_sentinel();
    let served: Vec<(Value, Value)> = request_records(&records)
        .into_iter()
        .filter(|r| r["status"] == 200)
        .map(|r| (r["route"].clone(), r["rollout"].clone()))
        .collect();
    assert_eq!(
        served,
        [
            (json!("/v1/rerank"), Value::Null),
            (
                json!("/tenant/{id}/rollout/{id}/attempt/{id}/v1/chat/completions"),
                json!("r7")
            ),
            (json!("/v1/chat/completions"), Value::Null),
        ]
    );
}

/// 8 rollouts × 10 calls in flight, all on one key from one address, on the agent-lightning
/// profile's defaults (no limit set in the file): every one is served, none gets 429.
#[test]
fn a_parallel_rollout_load_gets_no_429_on_the_agent_lightning_defaults() {
    const ROLLOUTS: usize = 8;
    const CALLS: usize = 10;
    let recorder = Recorder::start();
    let mut guard = Guard::start(
        recorder.port,
        UPSTREAM_KEY,
        &["trainer"],
        "upstream_kind = \"agent-lightning\"\n",
    );
    let key = guard.key("trainer").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let start = Arc::new(Barrier::new(ROLLOUTS * CALLS));
    let threads: Vec<_> = (0..ROLLOUTS * CALLS)
        .map(|i| {
            let (key, addr, start) = (key.clone(), addr.clone(), start.clone());
            std::thread::spawn(move || {
                let path = format!(
                    "/proxy/rollout/r{}/attempt/0/mode/train/openai/v1/chat/completions",
                    i / CALLS
                );
                start.wait();
                send(&addr, &key, "POST", &path, CHAT)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let too_many = statuses.iter().filter(|s| **s == 429).count();
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(too_many, 0, "429s under the training load: {statuses:?}");
    assert_eq!(served, ROLLOUTS * CALLS, "{statuses:?}");
    assert_eq!(recorder.seen().len(), ROLLOUTS * CALLS);
    let records = guard.records_until_sentinel();
    let limited = request_records(&records)
        .into_iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert_eq!(limited, 0);
}

/// The route table is rebuilt on reload: switching `upstream_kind` opens 1.0's routes at once,
/// and a reload whose route does not compile is refused with the old table kept.
#[test]
fn a_reload_swaps_the_route_table() {
    let recorder = Recorder::start();
    let mut guard = Guard::start(recorder.port, UPSTREAM_KEY, &["trainer"], "");
    let key = guard.key("trainer").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let chat = "/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions";
    assert_eq!(
        send(&addr, &key, "POST", chat, CHAT),
        404,
        "litellm has no 1.0 routes"
    );

    let agl = Guard::config(
        recorder.port,
        &guard.key_file,
        &guard.keys,
        "upstream_kind = \"agent-lightning\"\n",
    );
    assert_eq!(guard.daemon.reload_with(&agl)["kind"], "reloaded");
    assert_eq!(send(&addr, &key, "POST", chat, CHAT), 200);

    let broken = Guard::config(
        recorder.port,
        &guard.key_file,
        &guard.keys,
        "[[proxy.routes]]\nname = \"x\"\npath = \"/v1/{x:uuid}\"\nmethods = [\"POST\"]\nshape = \"chat\"\n",
    );
    let refused = guard.daemon.reload_with(&broken);
    assert_eq!(refused["kind"], "reload_failed", "{refused}");
    assert_eq!(
        send(&addr, &key, "POST", chat, CHAT),
        200,
        "the old table stays"
    );
    let paths: Vec<String> = recorder.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, [chat, chat]);
}
