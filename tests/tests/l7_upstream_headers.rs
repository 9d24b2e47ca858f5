//! What the upstream receives of a request that carries LiteLLM's credential, control and
//! client-address headers (issue 12): each request is authenticated with a good key and served,
//! and the recording upstream shows the hostile headers absent, the injected upstream key as the
//! only credential, and the client's key nowhere. The refused kinds (the client's key in a
//! query, body or other header) are in the attack corpus, category `upstream`.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    time::Duration,
};

use proxyguard_tests::{
    l7::{new_key, Guard},
    recorder::Recorder,
    upstream::read_response,
};

const UPSTREAM_KEY: &str = "sk-upstream-master-headers";

/// (case, header lines sent beside the good key with `{KEY}` for it, names the upstream must not
/// see). Every case also checks that `authorization` is the injected key.
const CASES: &[(&str, &[&str], &[&str])] = &[
    (
        "litellm-key-header",
        &["x-litellm-api-key: Bearer sk-forged-master"],
        &["x-litellm-api-key"],
    ),
    (
        "litellm-key-header-underscore",
        &["x_litellm_api_key: sk-forged-master"],
        &["x_litellm_api_key"],
    ),
    (
        "custom-key-header",
        &["x-my-litellm-key: sk-forged-master"],
        &["x-my-litellm-key"],
    ),
    (
        "provider-key-headers",
        &[
            "x-goog-api-key: sk-forged",
            "ocp-apim-subscription-key: sk-forged",
            "api-key: sk-forged",
            "x-mcp-auth: sk-forged",
        ],
        &[
            "x-goog-api-key",
            "ocp-apim-subscription-key",
            "api-key",
            "x-mcp-auth",
        ],
    ),
    (
        "client-key-in-second-credential-header",
        &["x-api-key: {KEY}", "x-litellm-api-key: {KEY}"],
        &["x-api-key", "x-litellm-api-key"],
    ),
    (
        "routing-controls",
        &[
            "x-litellm-timeout: 0.001",
            "x-litellm-num-retries: 50",
            "x-litellm-stream-timeout: 1",
            "x-litellm-priority: 0",
        ],
        &[
            "x-litellm-timeout",
            "x-litellm-num-retries",
            "x-litellm-stream-timeout",
            "x-litellm-priority",
        ],
    ),
    (
        "attribution-controls",
        &[
            "x-litellm-spend-logs-metadata: {\"team\":\"other\"}",
            "x-litellm-session-id: s",
            "x-litellm-agent-id: a",
            "openai-organization: org-other",
            "x-session-id: s",
        ],
        &[
            "x-litellm-spend-logs-metadata",
            "x-litellm-session-id",
            "x-litellm-agent-id",
            "openai-organization",
            "x-session-id",
        ],
    ),
    (
        "logging-and-outbound-controls",
        &[
            "litellm-disable-message-redaction: true",
            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "typesafe-danger-zone-authorization: Bearer x",
            "anthropic-beta: x",
            "x-mcp-servers: evil",
            "x_litellm_timeout: 1",
        ],
        &[
            "litellm-disable-message-redaction",
            "traceparent",
            "typesafe-danger-zone-authorization",
            "anthropic-beta",
            "x-mcp-servers",
            "x_litellm_timeout",
        ],
    ),
    (
        "client-address-spellings",
        &[
            "x-forwarded-for: 6.6.6.6",
            "x-real-ip: 6.6.6.6",
            "true-client-ip: 6.6.6.6",
            "cf-connecting-ip: 6.6.6.6",
            "x-client-ip: 6.6.6.6",
            "x-cluster-client-ip: 6.6.6.6",
            "x-forwarded-port: 1",
            "x-original-forwarded-for: 6.6.6.6",
            "x_client_ip: 6.6.6.6",
        ],
        &[
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-client-ip",
            "x-cluster-client-ip",
            "x-forwarded-port",
            "x-original-forwarded-for",
            "x_client_ip",
        ],
    ),
];

#[test]
fn credential_control_and_address_headers_never_reach_the_upstream() {
    let recorder = Recorder::start();
    // `prioritised` may send one more control header than everyone else.
    let (prioritised, prioritised_hash) = new_key();
    let extra = format!(
        "upstream_custom_key_header = \"X-My-LiteLLM-Key\"\n\
         [proxy.rate]\nper_key_rpm = 0\nper_ip_rpm = 0\n\
         [proxy.headers]\nupstream_allow = [\"x-litellm-tags\"]\n\
         [[proxy.keys]]\nname = \"prioritised\"\nsha256 = \"{prioritised_hash}\"\n\
         upstream_allow = [\"x-litellm-priority\"]\n"
    );
    let guard = Guard::start(recorder.port, UPSTREAM_KEY, &["good"], &extra);
    let key = guard.key("good").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();

    let mut problems = Vec::new();
    for (case, lines, absent) in CASES {
        let extra: String = lines
            .iter()
            .map(|line| format!("{}\r\n", line.replace("{KEY}", &key)))
            .collect();
        let status = send(&addr, &key, case, &extra);
        if status != 200 {
            problems.push(format!("{case}: status {status}, not served"));
            continue;
        }
        let seen = recorder.seen();
        let Some(got) = seen.iter().find(|r| r.header("x-case") == Some(case)) else {
            problems.push(format!("{case}: the upstream never saw it"));
            continue;
        };
        for name in *absent {
            if got.header(name).is_some() {
                problems.push(format!("{case}: `{name}` reached the upstream"));
            }
        }
        let expected = format!("Bearer {UPSTREAM_KEY}");
        if got.header("authorization") != Some(expected.as_str()) {
            problems.push(format!("{case}: authorization is not the injected key"));
        }
        let credentials = got
            .headers
            .iter()
            .filter(|(name, _)| name == "authorization")
            .count();
        if credentials != 1 {
            problems.push(format!("{case}: {credentials} authorization headers"));
        }
        if got.header("x-forwarded-for") != Some("127.0.0.1") {
            problems.push(format!(
                "{case}: x-forwarded-for is {:?}, not the peer",
                got.header("x-forwarded-for")
            ));
        }
        if got.headers.iter().any(|(_, value)| value.contains(&key)) {
            problems.push(format!("{case}: the client's key reached the upstream"));
        }
    }

    // A control header the config lets through arrives as sent.
    let status = send(&addr, &key, "allowed", "x-litellm-tags: team-a\r\n");
    let seen = recorder.seen();
    let allowed = seen.iter().find(|r| r.header("x-case") == Some("allowed"));
    if status != 200 || allowed.and_then(|r| r.header("x-litellm-tags")) != Some("team-a") {
        problems.push(format!(
            "allowed: status {status}, x-litellm-tags {:?}",
            allowed.map(|r| r.header("x-litellm-tags"))
        ));
    }
    // A control header one key may send arrives from it, and from no other key.
    for (case, client, expected) in [
        ("per-key-allowed", prioritised.as_str(), Some("1")),
        ("per-key-other", key.as_str(), None),
    ] {
        let status = send(&addr, client, case, "x-litellm-priority: 1\r\n");
        let seen = recorder.seen();
        let got = seen
            .iter()
            .find(|r| r.header("x-case") == Some(case))
            .and_then(|r| r.header("x-litellm-priority"));
        if status != 200 || got != expected {
            problems.push(format!(
                "{case}: status {status}, x-litellm-priority {got:?}"
            ));
        }
    }
    let seen = recorder.seen();
    eprintln!(
        "{} served cases, {} requests at the upstream",
        CASES.len() + 3,
        seen.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn send(addr: &str, key: &str, case: &str, extra: &str) -> u16 {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         x-case: {case}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect to the guard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    read_response(&mut BufReader::new(stream)).unwrap_or(0)
}

/// A query parameter the route takes (Anthropic's `beta` on /v1/messages) arrives as sent; one it
/// does not take is refused with 400 `query` and never reaches the upstream. The refused kinds
/// are in the attack corpus, category `query`.
#[test]
fn only_a_routes_own_query_parameters_reach_the_upstream() {
    let recorder = Recorder::start();
    let guard = Guard::start(recorder.port, UPSTREAM_KEY, &["good"], "");
    let key = guard.key("good").to_owned();
    let addr = guard.base.trim_start_matches("http://").to_owned();
    let call = |case: &str, target: &str| {
        let body = r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
        let request = format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             x-case: {case}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(&addr).expect("connect to the guard");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        read_response(&mut BufReader::new(stream)).unwrap_or(0)
    };

    assert_eq!(call("beta", "/v1/messages?beta=true"), 200);
    assert_eq!(
        call("model", "/v1/chat/completions?model=openai/gpt-4o"),
        400
    );
    // A served marker after the refused one: had the refused request been forwarded, the
    // upstream would have recorded it first.
    assert_eq!(call("marker", "/v1/messages"), 200);
    let seen = recorder.seen();
    let path_of = |case: &str| {
        seen.iter()
            .find(|r| r.header("x-case") == Some(case))
            .map(|r| r.path.clone())
    };
    assert_eq!(path_of("beta").as_deref(), Some("/v1/messages?beta=true"));
    assert_eq!(path_of("marker").as_deref(), Some("/v1/messages"));
    assert_eq!(path_of("model"), None, "{seen:?}");
}
