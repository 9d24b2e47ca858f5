//! The provider gateway end to end, with real parts: the official `openai` SDK → proxyguard's
//! front → a real LiteLLM (no provider key in its environment, no `mock_response`) whose model
//! list points at proxyguard's gateway with a placeholder key → proxyguard's gateway → a local
//! HTTPS provider (tests/src/https_provider.rs) with a certificate from a CA made here, which
//! checks the key the gateway adds. Needs the venv from `cargo xtask setup`; no root, no eBPF.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use proxyguard_tests::{
    https_provider::HttpsProvider,
    l7::{client, free_port, http, new_key, Guard, LiteLlm},
};
use serde_json::json;

const MASTER: &str = "sk-litellm-master-providers";
const PLACEHOLDER: &str = "placeholder-proxyguard-adds-the-key";

fn write_key(path: &Path, key: &str) {
    fs::write(path, format!("{key}\n")).expect("key file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn model(name: &str, model: &str, gateway: u16, provider: &str) -> String {
    format!(
        "  - model_name: {name}\n    litellm_params:\n      model: openai/{model}\n      api_base: http://127.0.0.1:{gateway}/{provider}/v1\n      api_key: {PLACEHOLDER}\n"
    )
}

#[test]
fn litellm_with_no_provider_key_works_through_the_gateway() {
    let dir = tempfile::tempdir().expect("temp dir");
    let canary = format!("sk-CANARY{}", &new_key().1[..24]);
    let key_file = dir.path().join("test.key");
    write_key(&key_file, &canary);
    let gate = dir.path().join("gate");
    let provider = HttpsProvider::start(&canary, Some(gate.clone()));
    // Signed by a CA the gateway does not trust (it is told only about the first one's).
    let untrusted = HttpsProvider::start(&canary, None);

    let gateway = free_port();
    let models = format!(
        "model_list:\n{}{}{}{}",
        model("mock-gpt", "gpt-test", gateway, "test"),
        model("slow", "gpt-test", gateway, "test"),
        model("embed-test", "text-embedding-test", gateway, "test"),
        model("untrusted-gpt", "gpt-test", gateway, "untrusted"),
    );
    let litellm = LiteLlm::start_with_models(MASTER, &models, &[]);
    let environ = fs::read(format!("/proc/{}/environ", litellm.pid())).expect("LiteLLM's environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&canary),
        "the provider key is in LiteLLM's environment"
    );
    for var in environ.split('\0') {
        let name = var.split('=').next().unwrap_or_default();
        assert!(
            !name.ends_with("_API_KEY"),
            "LiteLLM has a provider key variable: {name}"
        );
    }

    // One request worker, so one pool per provider: the pooling and resumption checks below
    // follow one pool's connections (with more workers each keeps its own pool per provider).
    let extra = format!(
        "worker_threads = 1\n\n[providers]\nlisten = \"127.0.0.1:{gateway}\"\n\n[[providers.routes]]\nname = \"test\"\nbase_url = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\n[[providers.routes]]\nname = \"untrusted\"\nbase_url = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\npaths = [\"/v1/chat/completions\"]\nmethods = [\"POST\"]\n",
        provider.base_url(),
        key_file.display(),
        provider.ca.display(),
        untrusted.base_url(),
        key_file.display(),
        provider.ca.display(),
    );
    let mut guard = Guard::start(litellm.port, MASTER, &["alice"], &extra);
    assert_eq!(
        guard.daemon.ready["providers"]["listen"],
        format!("127.0.0.1:{gateway}")
    );
    let key = guard.key("alice").to_owned();

    let chat = client("chat", &guard.base, &key, None);
    assert_eq!(chat["ok"], true, "{chat}\n{}", litellm.log());
    assert_eq!(chat["content"], "Hello from the HTTPS provider.");

    // The provider holds the rest of the stream until the client has the first chunk: it ends
    // normally only if LiteLLM, the gateway and the front each passed that chunk on at once.
    let stream = client("stream", &guard.base, &key, Some(gate.to_str().unwrap()));
    assert_eq!(stream["ok"], true, "{stream}");
    assert_eq!(stream["text"], "one two three four five");

    let embed = client("embed", &guard.base, &key, Some("embed-test"));
    assert_eq!(embed["ok"], true, "{embed}");
    assert_eq!(embed["embedding"], json!([0.25, 0.5, 0.75]));

    let seen = provider.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/embeddings"
        ]
    );
    for request in &seen {
        assert!(
            request.key_ok,
            "the gateway's key did not arrive: {request:?}"
        );
        assert!(
            !request.values.iter().any(|v| v.contains(PLACEHOLDER)),
            "LiteLLM's placeholder key went through: {request:?}"
        );
        assert!(
            !request
                .header_names
                .iter()
                .any(|n| n == "x-api-key" || n == "api-key"),
            "{request:?}"
        );
    }
    // One pooled connection carried all three.
    assert!(
        seen.iter().all(|s| s.connection == seen[0].connection),
        "{seen:?}"
    );

    // A provider that closes the connection: the next one resumes the TLS session (the
    // gateway shares one rustls config, and so its session cache, across a provider's pool).
    let gateway_base = format!("http://127.0.0.1:{gateway}");
    for _ in 0..2 {
        let models = http(
            &gateway_base,
            json!({"method": "GET", "path": "/test/v1/models"}),
        );
        assert_eq!(models["status"], 200, "{models}");
    }
    let seen = provider.seen();
    let (first, second) = (&seen[3], &seen[4]);
    assert_eq!(first.connection, seen[0].connection, "{seen:?}");
    assert_ne!(second.connection, first.connection, "{seen:?}");
    assert!(
        second.resumed,
        "the new connection did not resume: {seen:?}"
    );
    assert!(!seen[0].resumed);

    // Straight at the gateway: an untrusted certificate is a 502 naming the reason, and the
    // provider never got a request.
    let chat_body = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let refused = http(
        &gateway_base,
        json!({"path": "/untrusted/v1/chat/completions", "headers": {"content-type": "application/json", "authorization": format!("Bearer {PLACEHOLDER}")}, "body": chat_body}),
    );
    assert_eq!(refused["status"], 502, "{refused}");
    let body: serde_json::Value = serde_json::from_str(refused["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "provider_certificate", "{body}");
    assert_eq!(body["error"]["type"], "api_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
        "{message}"
    );
    // Through LiteLLM too: the caller gets an error, never an answer.
    let via_litellm = client("chat_model", &guard.base, &key, Some("untrusted-gpt"));
    assert_eq!(via_litellm["ok"], false, "{via_litellm}");
    assert!(untrusted.seen().is_empty(), "{:?}", untrusted.seen());
    assert_eq!(untrusted.handshakes(), 0);

    // What a provider does not allow, and a provider that is not there, are 404.
    for (method, path) in [
        ("GET", "/untrusted/v1/chat/completions"),
        ("POST", "/untrusted/v1/files"),
        ("POST", "/nope/v1/chat/completions"),
    ] {
        let got = http(
            &gateway_base,
            json!({"method": method, "path": path, "body": "{}"}),
        );
        assert_eq!(got["status"], 404, "{method} {path}: {got}");
    }
    let climbing = http(
        &gateway_base,
        json!({"path": "/untrusted/v1/chat/completions/%2e%2e/%2e%2e/files", "body": "{}"}),
    );
    assert_eq!(climbing["status"], 400, "{climbing}");

    let records = guard.records_until_sentinel();
    let gateway_records: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "provider_request")
        .collect();
    assert!(
        gateway_records
            .iter()
            .any(|r| r["provider"] == "test" && r["status"] == 200),
        "{gateway_records:?}"
    );
    assert!(
        gateway_records
            .iter()
            .any(|r| r["provider"] == "untrusted" && r["reason"] == "provider_certificate"),
        "{gateway_records:?}"
    );

    // A wrong provider key (re-read on reload) gives the provider's 401 back, clearly.
    write_key(&key_file, "sk-wrong-provider-key");
    guard.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = guard
        .daemon
        .wait_for(|e| e["kind"] == "reloaded" || e["kind"] == "reload_failed")
        .expect("a reload outcome");
    assert_eq!(reloaded["kind"], "reloaded", "{reloaded}");
    let wrong = client("chat", &guard.base, &key, None);
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert!(
        wrong["body"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key provided"),
        "{wrong}"
    );

    let mut records = records;
    records.extend(guard.records_until_sentinel());
    for line in guard.daemon.log_lines() {
        assert!(
            !line.contains(&canary),
            "the provider key in the log: {line}"
        );
    }
    for record in &records {
        assert!(
            !record.to_string().contains(&canary),
            "the provider key in a record: {record}"
        );
    }
}

/// `providers add` into a running daemon that has no provider yet: the reload starts the
/// gateway, and requests get the key. A key file made group-readable is refused at the next
/// reload, and the gateway keeps the key it had.
#[test]
fn providers_add_starts_the_gateway_live_and_a_bad_reload_keeps_the_old_key() {
    use std::process::Command;

    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("live.key");
    let key = format!("sk-live-{}", &new_key().1[..16]);
    write_key(&key_file, &key);
    let provider = HttpsProvider::start(&key, None);
    let gateway = free_port();
    let extra = format!("\n[providers]\nlisten = \"127.0.0.1:{gateway}\"\n");
    let mut guard = Guard::start(free_port(), MASTER, &["alice"], &extra);
    assert_eq!(guard.daemon.ready["providers"]["listen"], json!(null));
    let base = format!("http://127.0.0.1:{gateway}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", gateway)).is_err(),
        "the gateway listens with no provider"
    );

    let cli = |args: &[&str]| {
        Command::new(proxyguard_tests::proxyguard_bin())
            .args(args)
            .arg("--config")
            .arg(&guard.daemon.config_path)
            .output()
            .expect("run proxyguard")
    };
    let out = cli(&[
        "providers",
        "add",
        "live",
        "--base-url",
        &provider.base_url(),
        "--key-file",
        key_file.to_str().unwrap(),
        "--ca-file",
        provider.ca.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the running daemon reloaded it"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let models = http(&base, json!({"method": "GET", "path": "/live/v1/models"}));
    assert_eq!(models["status"], 200, "{models}");
    assert!(provider.seen()[0].key_ok);

    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o640)).expect("chmod");
    // `proxyguard reload` would refuse before asking (it validates the file too): SIGHUP asks
    // the daemon itself.
    let out = cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    guard.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = guard
        .daemon
        .wait_for(|e| e["kind"] == "reload_failed")
        .expect("the refused reload");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("providers.routes[0].key_file") && error.contains("chmod 600"),
        "{error}"
    );
    let models = http(&base, json!({"method": "GET", "path": "/live/v1/models"}));
    assert_eq!(models["status"], 200, "{models}");
    assert!(provider.seen().iter().all(|s| s.key_ok));
    let _ = guard.records_until_sentinel();
}
