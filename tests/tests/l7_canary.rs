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

/// The provider gateway (issue 13): the provider key planted in its key file, and a caller's
/// credential headers, appear in no log line, audit record, error body or `status`, at trace
/// level, whether the provider answers 200, refuses the key (401) or is refused for its
/// certificate (502).
#[test]
fn provider_keys_appear_in_no_gateway_output() {
    use std::{os::unix::fs::PermissionsExt, process::Command};

    use proxyguard_tests::{https_provider::HttpsProvider, l7::free_port, proxyguard_bin};

    let canary = format!("CANARY{}", &new_key().1[..24]);
    let dir = tempfile::tempdir().unwrap();
    let write_key = |name: &str, key: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let good = write_key("good.key", &format!("sk-{canary}-provider"));
    let wrong = write_key("wrong.key", &format!("sk-{canary}-wrong"));
    let provider = HttpsProvider::start(&format!("sk-{canary}-provider"), None);
    let stranger = HttpsProvider::start("unused", None);
    let gateway = free_port();
    let route = |name: &str, url: String, key: &std::path::Path| {
        format!(
            "\n[[providers.routes]]\nname = \"{name}\"\nbase_url = \"{url}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n",
            key.display(),
            provider.ca.display()
        )
    };
    let extra = format!(
        "\n[providers]\nlisten = \"127.0.0.1:{gateway}\"\n{}{}{}",
        route("good", provider.base_url(), &good),
        route("wrong", provider.base_url(), &wrong),
        route("stranger", stranger.base_url(), &good),
    );
    let mut guard = Guard::start_with_env(
        free_port(),
        "sk-upstream-unused",
        &["alice"],
        &extra,
        &[("RUST_LOG", "trace"), ("PG_TEST_CANARY", &canary)],
    );
    let base = format!("http://127.0.0.1:{gateway}");
    let chat = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let caller = format!("Bearer sk-{canary}-caller");
    let mut outputs = Vec::new();
    for (path, status) in [
        ("/good/v1/chat/completions", 200),
        ("/wrong/v1/chat/completions", 401),
        ("/stranger/v1/chat/completions", 502),
        ("/nobody/v1/chat/completions", 404),
    ] {
        let got = http(
            &base,
            json!({"path": format!("{path}?tag={canary}"), "headers": {"content-type": "application/json", "authorization": caller, "x-api-key": canary, "api-key": canary, "cookie": canary}, "body": chat}),
        );
        assert_eq!(got["status"], status, "{path}: {got}");
        outputs.push(format!("{path}: {got}"));
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].key_ok && !seen[1].key_ok, "{seen:?}");
    for request in &seen {
        assert!(
            !request.values.iter().any(|v| v.contains(&canary))
                && !request
                    .header_names
                    .iter()
                    .any(|n| n == "x-api-key" || n == "api-key" || n == "cookie"),
            "a caller's credential reached the provider: {request:?}"
        );
    }

    let status = Command::new(proxyguard_bin())
        .args(["status", "--json", "--config"])
        .arg(&guard.daemon.config_path)
        .output()
        .unwrap();
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    let status_json: serde_json::Value = serde_json::from_str(&status_text).unwrap_or_else(|_| {
        panic!(
            "status: {status_text} {}",
            String::from_utf8_lossy(&status.stderr)
        )
    });
    assert_eq!(
        status_json["providers"]["providers"],
        json!(["good", "wrong", "stranger"]),
        "{status_json}"
    );
    assert!(
        status_json["providers"]["access"]
            .as_str()
            .unwrap()
            .contains("any local process could use it"),
        "{status_json}"
    );
    outputs.push(format!("status: {status_text}"));

    let records = guard.records_until_sentinel();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["kind"] == "provider_request")
            .count(),
        4,
        "{records:?}"
    );
    outputs.extend(records.iter().map(|r| format!("audit: {r}")));
    outputs.extend(
        guard
            .daemon
            .log_lines()
            .into_iter()
            .map(|l| format!("log: {l}")),
    );
    let leaks: Vec<&String> = outputs.iter().filter(|l| l.contains(&canary)).collect();
    assert!(leaks.is_empty(), "the canary leaked:\n{leaks:#?}");
}
