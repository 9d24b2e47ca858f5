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
    agl::{front, readme_block, records_until_sentinel, v03, venv03, Agl03, Operator},
    l7::{free_port, http},
    Daemon,
};
use serde_json::{json, Value};

const LITELLM_MASTER: &str = "sk-agl03-litellm-master-e2e";

/// The body of an OpenAI-style error answer.
fn error_code(answer: &Value) -> Value {
    let body: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("null"))
        .unwrap_or_else(|_| panic!("not an error body: {answer}"));
    body["error"]["code"].clone()
}

/// 0.3.0: the README's operator commands, agl's store and the trainer's LLMProxy behind the guard.
struct V03 {
    agl: Agl03,
    guard: Daemon,
    base: String,
    agents_key: String,
    _operator: Operator,
}

fn v03_from_the_readme() -> V03 {
    let proxy_port = free_port();
    let operator = Operator::new(
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
    let base = front(&guard);
    V03 {
        agl,
        guard,
        base,
        agents_key,
        _operator: operator,
    }
}

#[test]
fn v03_llmproxy_behind_the_guard_chat_stream_attribution_and_refusals() {
    let mut v = v03_from_the_readme();
    let (rid, aid) = v.agl.start_rollout();
    let (victim, _) = v.agl.start_rollout();

    let chat = v03(&["chat", &v.base, &v.agents_key, &rid, &aid], &[]);
    assert_eq!(chat["ok"], true, "{chat}\n{}", v.agl.log());
    assert_eq!(chat["content"], "Hello from the mock model.");
    let stream = v03(&["stream", &v.base, &v.agents_key, &rid, &aid], &[]);
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
    let wrong = v03(&["chat", &v.base, "pgk_wrong", &rid, &aid], &[]);
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
