//! Threat 14: a canary secret planted in proxyguard's environment, in the upstream key file and in
//! request headers and bodies must appear in no log line, audit record, metric or error body,
//! even at the most verbose log level.

use proxyguard_tests::l7::{client, http, new_key, Guard, LiteLlm};
use serde_json::json;

#[test]
fn canary_secrets_appear_in_no_output() {
    let canary = format!("CANARY{}", &new_key().1[..24]);
    let master = format!("sk-{canary}-master");
    let litellm = LiteLlm::start(&master, None, &[]);
    let extra = "[proxy.content]\ndeny_patterns = [\"forbidden-words\"]\n[proxy.limits]\nmax_header_value_bytes = 512\n";
    let mut guard = Guard::start_with_env(
        litellm.port,
        &master,
        &["alice"],
        extra,
        &[
            ("RUST_LOG", "trace"),
            ("PG_TEST_CANARY", &canary),
            ("OPENAI_API_KEY", &canary),
        ],
    );
    let key = guard.key("alice").to_owned();
    let auth = format!("Bearer {key}");
    let chat = |content: &str| {
        json!({"model": "mock-gpt", "messages": [{"role": "user", "content": content}]}).to_string()
    };

    let requests = [
        // Forwarded (the upstream gets the master key from the file, and answers 200).
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": auth, "content-type": "application/json", "x-canary": canary}, "body": chat(&canary)}),
            200,
        ),
        // Refused, each for a different reason.
        // A query parameter /v1/models does not take: the refusal names `tag`, never its value.
        (
            json!({"method": "GET", "path": format!("/v1/models?tag={canary}"), "headers": {"x-api-key": key, "cookie": canary}}),
            400,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": format!("Bearer {canary}")}, "body": chat("hi")}),
            401,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"api-key": canary, "content-type": "application/json"}, "body": chat("hi")}),
            401,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": auth, "x-rollout-id": canary}, "body": chat("hi")}),
            400,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": auth, "x-long": format!("{canary}{}", "x".repeat(600))}, "body": chat("hi")}),
            431,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": auth, "content-type": "application/json"}, "body": chat(&format!("forbidden-words {canary}"))}),
            400,
        ),
        (
            json!({"path": "/v1/chat/completions", "headers": {"authorization": auth, "content-type": "application/json"}, "body": format!("{{\"{canary}\": ")}),
            400,
        ),
        (
            json!({"method": "GET", "path": format!("/v1/{canary}"), "headers": {"authorization": auth}}),
            404,
        ),
        (
            json!({"method": "GET", "path": "/v1/models", "headers": {"authorization": auth, "host": format!("{canary}/x")}}),
            400,
        ),
    ];
    let mut outputs = Vec::new();
    for (spec, status) in requests {
        let got = http(&guard.base, spec.clone());
        assert_eq!(got["status"], status, "{spec}: {got}");
        if status != 200 {
            outputs.push(format!("error body: {}", got["body"]));
            outputs.push(format!("error headers: {}", got["headers"]));
        }
    }
    // The SDK path too, with the canary as a wrong key.
    let refused = client("chat", &guard.base, &canary, None);
    assert_eq!(refused["status"], 401, "{refused}");
    outputs.push(format!("sdk error: {refused}"));

    let metrics = http(&guard.admin, json!({"method": "GET", "path": "/metrics"}));
    assert!(
        metrics["body"]
            .as_str()
            .unwrap()
            .contains("proxyguard_key_requests_total{key=\"alice\"}"),
        "{metrics}"
    );
    assert!(
        metrics["body"]
            .as_str()
            .unwrap()
            .contains("proxyguard_key_last_used_timestamp_seconds{key=\"alice\"}"),
        "{metrics}"
    );
    outputs.push(format!("metrics: {}", metrics["body"]));

    let records = guard.records_until_sentinel();
    assert!(
        records.iter().filter(|r| r["kind"] == "request").count() >= 11,
        "{records:?}"
    );
    outputs.extend(records.iter().map(|r| format!("audit: {r}")));
    let log = guard.daemon.log_lines();
    assert!(!log.is_empty(), "the trace log is captured");
    outputs.extend(log.into_iter().map(|line| format!("log: {line}")));

    let leaks: Vec<&String> = outputs
        .iter()
        .filter(|line| line.contains(&canary))
        .collect();
    assert!(leaks.is_empty(), "the canary leaked:\n{leaks:#?}");
    // Key names are what outputs carry instead.
    assert!(records.iter().any(|r| r["key"] == "alice"));
}
