//! The upstream surface against the real LiteLLM from the venv (issue 12): a forged LiteLLM
//! credential header, which LiteLLM prefers over `Authorization`, does not change who LiteLLM
//! authenticates behind the guard; and LiteLLM's internal response headers never reach the
//! openai SDK client. Needs the venv from `cargo xtask setup`; no root, no eBPF.

use proxyguard_tests::l7::{client, http, Guard, LiteLlm};
use serde_json::{json, Value};

const MASTER: &str = "sk-litellm-master-surface";

fn chat_spec(headers: Value) -> Value {
    json!({
        "path": "/v1/chat/completions",
        "headers": headers,
        "body": r#"{"model":"mock-gpt","messages":[{"role":"user","content":"hi"}]}"#,
    })
}

/// Names of `headers` (a JSON object) that reveal LiteLLM's internals.
fn internal(headers: &Value) -> Vec<String> {
    headers
        .as_object()
        .expect("headers object")
        .keys()
        .filter(|name| {
            let name = name.to_ascii_lowercase();
            name.starts_with("x-litellm-")
                || name.starts_with("llm_provider-")
                || name.ends_with("-organization")
                || name == "access-control-allow-origin"
        })
        .cloned()
        .collect()
}

#[test]
fn forged_litellm_credentials_and_internal_headers() {
    let litellm = LiteLlm::start(MASTER, None, &[]);
    let guard = Guard::start(litellm.port, MASTER, &["alice"], "");
    let key = guard.key("alice").to_owned();
    let direct = format!("http://127.0.0.1:{}", litellm.port);

    // LiteLLM itself: `x-litellm-api-key` wins over `Authorization`. With the master key in
    // Authorization and a forged key beside it, LiteLLM looks the forged one up (it has no key
    // database, so it says `no_db_connection`) instead of serving the master key's call.
    let forged = [
        ("x-litellm-api-key", "Bearer sk-forged"),
        ("x-goog-api-key", "sk-forged"),
        ("ocp-apim-subscription-key", "sk-forged"),
    ];
    let (name, value) = forged[0];
    let bypass = http(
        &direct,
        chat_spec(json!({
            "content-type": "application/json",
            "authorization": format!("Bearer {MASTER}"),
            name: value,
        })),
    );
    assert_ne!(bypass["status"], 200, "{bypass}");
    assert!(
        bypass["body"]
            .as_str()
            .unwrap()
            .contains("no_db_connection"),
        "LiteLLM no longer prefers x-litellm-api-key; this test shows nothing: {bypass}"
    );

    // Through the guard, every forged credential header (and `_` spellings) is gone: LiteLLM
    // authenticates the injected master key and serves the call.
    let mut headers = json!({
        "content-type": "application/json",
        "authorization": format!("Bearer {key}"),
        "x_litellm_api_key": "sk-forged",
    });
    for (name, value) in forged {
        headers[name] = json!(value);
    }
    let served = http(&guard.base, chat_spec(headers));
    assert_eq!(served["status"], 200, "{served}");
    assert!(
        served["body"]
            .as_str()
            .unwrap()
            .contains("Hello from the mock model."),
        "{served}"
    );

    // The client's own key in LiteLLM's key header: stripped too, still the master key upstream.
    let own = http(
        &guard.base,
        chat_spec(json!({
            "content-type": "application/json",
            "x-litellm-api-key": format!("Bearer {key}"),
            "x-api-key": key,
        })),
    );
    assert_eq!(own["status"], 200, "{own}");

    // Response headers: LiteLLM writes its internals (key spend, model id and api base, cost,
    // version); the SDK behind the guard sees none of them, but still what it reads.
    let raw = http(
        &direct,
        chat_spec(
            json!({"content-type": "application/json", "authorization": format!("Bearer {MASTER}")}),
        ),
    );
    assert_eq!(raw["status"], 200, "{raw}");
    let exposed = internal(&raw["headers"]);
    assert!(
        exposed.iter().any(|n| n == "x-litellm-key-spend")
            && exposed.iter().any(|n| n == "x-litellm-model-api-base"),
        "LiteLLM sent no internal headers; this test shows nothing: {exposed:?}"
    );
    let sdk = client("chat_headers", &guard.base, &key, None);
    assert_eq!(sdk["ok"], true, "{sdk}");
    assert_eq!(sdk["content"], "Hello from the mock model.");
    let leaked = internal(&sdk["headers"]);
    assert!(
        leaked.is_empty(),
        "LiteLLM's internal headers reached the SDK: {leaked:?}"
    );
    assert!(
        sdk["headers"]["content-type"]
            .as_str()
            .is_some_and(|v| v.starts_with("application/json")),
        "{sdk}"
    );
    eprintln!(
        "LiteLLM sent {} internal headers directly; the SDK behind the guard got {:?}",
        exposed.len(),
        sdk["headers"]
            .as_object()
            .map(|h| h.keys().collect::<Vec<_>>())
    );
}
