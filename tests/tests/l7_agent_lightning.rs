//! agent-lightning behind proxyguard, with the real packages from PyPI (pins in `tests/py/agl/`,
//! venvs from `cargo xtask setup`) and the README's own commands (its `readme-test` blocks, with
//! only paths and ports changed): the operator's setup, the base URL agents get, and the tokens
//! the trainer mints.
//! - 0.3.0: the trainer's `LLMProxy` (LiteLLM's app) with an in-memory store; the agent's client path is
//!   the openai SDK on `ProxyLLM(endpoint=GUARD/v1).get_base_url(rid, aid)`.
//! - 1.0.2: `agl-server`, with a LiteLLM `mock_response` model as its model server; the agent's
//!   client path is what agl's controller hands an agent (`AGL_OPENAI_BASE_URL`, `AGL_EVENT_URL`,
//!   `AGL_KEY`), pointed at the guard; the trainer talks to agl's API through the guard with a key
//!   named in `[proxy.admin_routes]` (the only way left once the kernel's connect rule keeps every
//!   other process off the upstream's port).
//!
//! Attribution is read back from agl's own store: 0.3's spans per rollout and attempt
//! (`LightningStoreClient.query_spans`), 1.0's events and attempts (`GET /api/rollouts/...`).
//! Runs as root (the README's `install` writes a root-only key file); no eBPF.

use std::collections::BTreeMap;

use proxyguard_tests::{
    agl::{
        front, readme_block, records_until_sentinel, v03, v10, venv03, venv10, Agl03, Agl10,
        ModelServer, Operator,
    },
    l7::{free_port, http},
    Daemon,
};
use serde_json::{json, Value};

const LITELLM_MASTER: &str = "sk-agl03-litellm-master-e2e";
const AGL_KEY: &str = "agl-server-key-e2e";

/// The body of an OpenAI-style error answer.
fn error_code(answer: &Value) -> Value {
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("not an error body: {answer}"));
    body["error"]["code"].clone()
}

/// 0.3.0: the README's operator commands and the trainer's LLMProxy behind the guard.
struct V03 {
    agl: Agl03,
    guard: Daemon,
    base: String,
    agents_key: String,
    operator: Operator,
}

fn v03_from_the_readme() -> V03 {
    let proxy_port = free_port();
    let mut operator = Operator::new(
        &venv03(),
        &[("127.0.0.1:4000", format!("127.0.0.1:{proxy_port}"))],
        &[("LITELLM_MASTER_KEY", LITELLM_MASTER)],
    );
    let guard_block = readme_block("agl-0.3-guard");
    assert_eq!(guard_block.len(), 3, "{guard_block:?}");
    operator.run(&guard_block[0], &[]);
    operator.run(&guard_block[1], &[]);
    operator.isolate_config();
    let agents_key = operator.run(&guard_block[2], &[]);
    assert!(agents_key.starts_with("pgk_"), "keys add printed no key");

    let agl = Agl03::start(LITELLM_MASTER, proxy_port);
    let guard = operator.start_guard();
    operator.follow(&guard);
    let base = front(&guard);
    V03 {
        agl,
        guard,
        base,
        agents_key,
        operator,
    }
}

#[test]
fn v03_llmproxy_behind_the_guard_chat_stream_attribution_and_refusals() {
    let mut v = v03_from_the_readme();
    let (rid, aid) = v.agl.start_rollout();
    let (victim, _) = v.agl.start_rollout();

    let chat = v03(&["chat", &v.base, &v.agents_key, &rid, &aid]);
    assert_eq!(chat["ok"], true, "{chat}\n{}", v.agl.log());
    assert_eq!(chat["content"], "Hello from the mock model.");
    let stream = v03(&["stream", &v.base, &v.agents_key, &rid, &aid]);
    assert_eq!(stream["ok"], true, "{stream}");
    assert!(stream["chunks"].as_u64().unwrap() >= 1, "{stream}");
    assert_eq!(stream["text"], "Hello from the mock model.");

    // Both calls' spans land under the rollout and attempt of their path, none under another.
    let spans = v.agl.spans_at_least(&rid, 2);
    assert!(
        spans["count"].as_u64().unwrap() >= 2,
        "{spans}\n{}",
        v.agl.log()
    );
    let attempts: BTreeMap<String, Value> =
        serde_json::from_value(spans["attempts"].clone()).unwrap();
    assert_eq!(attempts.keys().collect::<Vec<_>>(), [&aid], "{spans}");
    assert_eq!(v.agl.spans(&victim)["count"], 0);

    let auth = format!("Bearer {}", v.agents_key);
    let path = format!("/rollout/{rid}/attempt/{aid}/v1/chat/completions");
    let chat_body = r#"{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}]}"#;
    let cases = [
        (
            "a forged rollout header",
            json!({"path": path, "headers": {"authorization": auth, "content-type": "application/json", "x-rollout-id": victim}, "body": chat_body}),
            400,
            "reserved_header",
        ),
        (
            "LiteLLM's admin route",
            json!({"path": "/key/generate", "headers": {"authorization": auth, "content-type": "application/json"}, "body": "{}"}),
            404,
            "unknown_route",
        ),
        (
            "LiteLLM's admin route with its master key",
            json!({"path": "/key/generate", "headers": {"authorization": format!("Bearer {LITELLM_MASTER}"), "content-type": "application/json"}, "body": "{}"}),
            404,
            "unknown_route",
        ),
        (
            "no key",
            json!({"path": path, "headers": {"content-type": "application/json"}, "body": chat_body}),
            401,
            "missing_key",
        ),
    ];
    for (what, spec, status, code) in cases {
        let got = http(&v.base, spec);
        assert_eq!(got["status"], status, "{what}: {got}");
        assert_eq!(error_code(&got), code, "{what}: {got}");
    }
    let wrong = v03(&["chat", &v.base, "pgk_wrong", &rid, &aid]);
    assert_eq!(wrong["status"], 401, "{wrong}");

    // The guard names the rollout route in its audit line; the LLMProxy saw only allowed calls.
    let records = records_until_sentinel(&mut v.guard, &v.base);
    let allowed: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "request" && r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    assert!(allowed.iter().all(|r| r["key"] == "agents"), "{allowed:?}");
}

/// 1.0.2: the README's operator commands, agl-server with a LiteLLM model server, behind the guard.
struct V10 {
    guard: Daemon,
    base: String,
    trainer_key: String,
    agent_key: String,
    operator: Operator,
    model: ModelServer,
    agl: Agl10,
}

fn v10_from_the_readme() -> V10 {
    let agl_port = free_port();
    let mut operator = Operator::new(
        &venv10(),
        &[
            ("127.0.0.1:8081", format!("127.0.0.1:{agl_port}")),
            ("port=8081", format!("port={agl_port}")),
            ("Qwen/Qwen2.5-7B-Instruct", "mock-gpt".to_owned()),
        ],
        &[("AGL_KEY", AGL_KEY)],
    );
    let guard_block = readme_block("agl-1.0-guard");
    assert_eq!(guard_block.len(), 3, "{guard_block:?}");
    operator.run(&guard_block[0], &[]);
    operator.run(&guard_block[1], &[]);
    operator.isolate_config();
    let trainer_key = operator.run(&guard_block[2], &[]);
    assert!(trainer_key.starts_with("pgk_"), "keys add printed no key");
    operator.admit("trainer");
    // A plain key for agents, for the tests that do not need rollout tokens.
    let agent_key = operator.run("proxyguard keys add agent", &[]);

    let model = ModelServer::start();
    let server = readme_block("agl-1.0-server");
    assert_eq!(server.len(), 1, "{server:?}");
    // No AGL_KEY in agl-server's environment but what the README's line reads from the key file.
    let agl = Agl10::start(&operator.localise(&server[0]), &[]);
    let guard = operator.start_guard();
    operator.follow(&guard);
    let base = front(&guard);

    // The trainer registers the model server through the guard, with its admin key.
    let trainer = [("AGL_KEY", trainer_key.as_str())];
    let registered = v10(
        &["register", &base, "mock-gpt", &model.endpoint()],
        &trainer,
    );
    assert_eq!(registered["status"], 201, "{registered}\n{}", agl.log());
    V10 {
        guard,
        base,
        trainer_key,
        agent_key,
        operator,
        model,
        agl,
    }
}

impl V10 {
    fn trainer(&self, args: &[&str]) -> Value {
        v10(args, &[("AGL_KEY", self.trainer_key.as_str())])
    }

    /// The trainer creates a rollout through the guard: its id (its attempt is "0").
    fn rollout(&self) -> String {
        let created = self.trainer(&["rollout", &self.base]);
        assert_eq!(created["status"], 200, "{created}\n{}", self.agl.log());
        created["rollout_id"].as_str().unwrap().to_owned()
    }

    fn events(&self, rid: &str) -> Value {
        let events = self.trainer(&["events", &self.base, rid]);
        assert_eq!(events["status"], 200, "{events}");
        events
    }

    /// What agl's controller hands the agent of rollout `rid`, attempt "0", with the guard's
    /// address for agl's, and `key` as `AGL_KEY`.
    fn agent(&self, action: &str, rid: &str, key: &str) -> Value {
        let base_url = format!(
            "{}/proxy/rollout/{rid}/attempt/0/mode/train/openai/v1",
            self.base
        );
        let event_url = format!("{}/api/rollouts/{rid}/attempt/0/events", self.base);
        v10(
            &[action],
            &[
                ("AGL_OPENAI_BASE_URL", base_url.as_str()),
                ("AGL_EVENT_URL", event_url.as_str()),
                ("AGL_KEY", key),
            ],
        )
    }
}

#[test]
fn v10_agl_server_behind_the_guard_chat_events_attribution_and_refusals() {
    let mut v = v10_from_the_readme();
    let rid = v.rollout();
    let victim = v.rollout();

    let chat = v.agent("chat", &rid, &v.agent_key);
    assert_eq!(
        chat["ok"],
        true,
        "{chat}\n{}\n{}",
        v.agl.log(),
        v.model.log()
    );
    assert_eq!(chat["content"], "Hello from the mock model.");
    // 1.0.2 does not stream: agl-server itself answers 400, and the guard passes that on.
    let stream = v.agent("stream", &rid, &v.agent_key);
    assert_eq!(stream["status"], 400, "{stream}");
    assert!(
        stream["body"]
            .as_str()
            .unwrap()
            .contains("Streaming responses are not supported"),
        "{stream}"
    );
    let event = v.agent("event", &rid, &v.agent_key);
    assert_eq!(event["status"], 200, "{event}");

    // The call and the event are the rollout's, on attempt "0"; the other rollout has nothing.
    let events = v.events(&rid);
    assert_eq!(
        events["types"],
        json!({"model_request": 1, "reward": 1}),
        "{events}"
    );
    assert_eq!(events["attempts"], json!(["0"]), "{events}");
    assert_eq!(v.events(&victim)["count"], 0);

    let agent_auth = format!("Bearer {}", v.agent_key);
    let chat_path = format!("/proxy/rollout/{rid}/attempt/0/mode/train/openai/v1/chat/completions");
    let chat_body = r#"{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}]}"#;
    let json_headers =
        |auth: &str| json!({"authorization": auth, "content-type": "application/json"});
    let cases = [
        (
            "an agent creating rollouts",
            json!({"path": "/api/rollouts", "headers": json_headers(&agent_auth), "body": "[{\"input\": {}}]"}),
            404,
            "unknown_route",
        ),
        (
            "an agent reading another rollout's events",
            json!({"method": "GET", "path": format!("/api/rollouts/{victim}/events"), "headers": {"authorization": agent_auth}}),
            404,
            "unknown_route",
        ),
        (
            "an agent pausing the proxy",
            json!({"path": "/proxy/pause", "headers": json_headers(&agent_auth), "body": "{}"}),
            404,
            "unknown_route",
        ),
        (
            "an agent registering a model server",
            json!({"path": "/api/models", "headers": json_headers(&agent_auth), "body": "[]"}),
            404,
            "unknown_route",
        ),
        (
            "a forged rollout header",
            json!({"path": chat_path, "headers": {"authorization": agent_auth, "content-type": "application/json", "x-rollout-id": victim}, "body": chat_body}),
            400,
            "reserved_header",
        ),
        (
            "no key",
            json!({"path": chat_path, "headers": {"content-type": "application/json"}, "body": chat_body}),
            401,
            "missing_key",
        ),
        (
            "agl-server's own key",
            json!({"path": chat_path, "headers": json_headers(&format!("Bearer {AGL_KEY}")), "body": chat_body}),
            401,
            "bad_key",
        ),
    ];
    for (what, spec, status, code) in cases {
        let got = http(&v.base, spec);
        assert_eq!(got["status"], status, "{what}: {got}");
        assert_eq!(error_code(&got), code, "{what}: {got}");
    }
    // None of them reached agl-server: the rollout still holds its two events.
    assert_eq!(v.events(&rid)["count"], 2);
    let records = records_until_sentinel(&mut v.guard, &v.base);
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "request" && r["decision"] == "allow")
            .all(|r| r["key"] == "agent" || r["key"] == "trainer"),
        "{records:?}"
    );
}

#[test]
fn v10_a_scoped_token_on_another_rollouts_path_is_refused_and_writes_nothing() {
    let v = v10_from_the_readme();
    let rid = v.rollout();
    let victim = v.rollout();
    let mint = readme_block("agl-mint");
    assert_eq!(mint.len(), 1, "{mint:?}");
    let token = v.operator.run(&mint[0], &[("ROLLOUT_ID", rid.as_str())]);
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "keys mint printed one token"
    );

    assert_eq!(v.agent("chat", &rid, &token)["ok"], true);
    assert_eq!(v.agent("event", &rid, &token)["status"], 200);
    for action in ["chat", "event"] {
        let forged = v.agent(action, &victim, &token);
        assert_eq!(forged["status"], 403, "{action}: {forged}");
        assert!(
            forged["body"]
                .as_str()
                .unwrap()
                .contains("rollout_mismatch"),
            "{action}: {forged}"
        );
    }
    // agl-server records an event before it answers, so once the refusals are answered the
    // victim's store is final: nothing under it, and the token's own rollout has its two.
    assert_eq!(v.events(&victim)["count"], 0, "{}", v.events(&victim));
    assert_eq!(
        v.events(&rid)["types"],
        json!({"model_request": 1, "reward": 1})
    );
}

#[test]
fn v03_a_scoped_token_on_another_rollouts_path_is_refused_and_writes_nothing() {
    let v = v03_from_the_readme();
    let (rid, aid) = v.agl.start_rollout();
    let (victim, victim_aid) = v.agl.start_rollout();
    let mint = readme_block("agl-mint");
    let token = v.operator.run(
        &mint[0].replace("--attempt 0", &format!("--attempt {aid}")),
        &[("ROLLOUT_ID", rid.as_str())],
    );
    let forged = v03(&["chat", &v.base, &token, &victim, &victim_aid]);
    assert_eq!(forged["status"], 403, "{forged}");
    assert!(
        forged["body"]
            .as_str()
            .unwrap()
            .contains("rollout_mismatch"),
        "{forged}"
    );
    // The token's own call after it: once its spans are in the store, any span of the refused
    // call would be too (the LLMProxy never saw it; this shows it).
    let own = v03(&["chat", &v.base, &token, &rid, &aid]);
    assert_eq!(own["ok"], true, "{own}");
    assert!(v.agl.spans_at_least(&rid, 1)["count"].as_u64().unwrap() >= 1);
    assert_eq!(v.agl.spans(&victim)["count"], 0);
}

/// The figure the agent-lightning profile's defaults are sized for: 8 rollouts, each with 10
/// calls in flight at once, through the real agl-server, on one agents' key.
#[test]
fn parallel_rollouts_on_the_agent_lightning_defaults_get_no_429() {
    let v = v10_from_the_readme();
    let rollouts: Vec<String> = (0..8).map(|_| v.rollout()).collect();
    let mut args = vec!["load", v.base.as_str(), "10"];
    args.extend(rollouts.iter().map(String::as_str));
    let load = v10(&args, &[("AGL_KEY", v.agent_key.as_str())]);
    assert_eq!(load["calls"], 80, "{load}");
    assert_eq!(load["statuses"].get("429"), None, "{load}");
    assert_eq!(load["statuses"]["200"], 80, "{load}\n{}", v.agl.log());
    // Every call landed on its own rollout.
    for rid in &rollouts {
        assert_eq!(v.events(rid)["types"]["model_request"], 10, "{rid}");
    }
}
