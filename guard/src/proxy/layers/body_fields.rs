//! What a JSON body may ask of the upstream beyond the model call (issue 12, threat 17): fields
//! that redirect LiteLLM's outbound call, swap its credentials, redirect its logging or rewrite
//! its billing are refused (top level and inside `metadata` and the other dicts LiteLLM reads
//! them from), model names that name a destination are refused, and the fields that multiply a
//! request's cost are capped. The field lists live in `upstream_surface::body`.
//!
//! A refusal names the field's path and the cap, never the value.

use http::StatusCode;
use serde_json::Value;

use crate::{
    config::proxy::Caps,
    proxy::{reject::Reject, shapes, shapes::Shape, upstream_surface::body},
};

/// Refuses control fields and destination model names.
pub fn check(value: &Value) -> Result<(), Reject> {
    let Some(top) = value.as_object() else {
        return Ok(());
    };
    let refuse = |path: String| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "body_field",
            format!("body field {path} is not accepted: it controls the upstream's outbound call"),
        )
    };
    for (name, field) in top {
        if body::is_refused(name) {
            return Err(refuse(name.clone()));
        }
        if body::NESTED_CONTAINERS.contains(&name.as_str()) {
            for nested in field.as_object().into_iter().flat_map(|m| m.keys()) {
                if body::is_refused_nested(nested) {
                    return Err(refuse(format!("{name}.{nested}")));
                }
            }
        }
    }
    for (i, tool) in top
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let url = tool
            .get("server_url")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if url
            .trim()
            .to_ascii_lowercase()
            .starts_with(body::MCP_GATEWAY_URL_PREFIX)
        {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "body_field",
                format!("body field tools[{i}].server_url is not accepted: it opens the upstream's own MCP servers"),
            ));
        }
    }
    if let Some(model) = top.get("model").and_then(Value::as_str) {
        if model.split(',').any(names_a_destination) {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "body_field",
                "body field model names a destination (a URL or host); use a model name the upstream serves",
            ));
        }
    }
    Ok(())
}

/// A model name that is a URL, or a provider prefix followed by one (`openai/http://...`,
/// `hosted_vllm///host`), names where to connect rather than what to call.
fn names_a_destination(model: &str) -> bool {
    let model = model.trim().to_ascii_lowercase();
    model.contains("://") || model.starts_with("//") || model.contains("///")
}

/// Refuses a cost field over its cap (`key_caps`: `proxy.body.caps` with the key's overrides),
/// and an embeddings or moderations batch longer than `caps.inputs`.
pub fn check_caps(value: &Value, shape: Shape, caps: &Caps) -> Result<(), Reject> {
    let Some(top) = value.as_object() else {
        return Ok(());
    };
    let over = |path: &str, cap: &str, limit: u64| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "cost_cap",
            format!("body field {path} is over the cap {cap} = {limit}"),
        )
    };
    let number = |field: &Value| match field {
        Value::Number(n) => n.as_f64(),
        // LiteLLM coerces numeric strings in places; count them too.
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let scalar_caps = [
        (body::N_FIELDS, "n", caps.n),
        (body::TOKEN_FIELDS, "max_tokens", caps.max_tokens),
        (body::RETRY_FIELDS, "retries", caps.retries),
    ];
    // The container's name, spelled into a field's path only when that field is refused.
    let containers = std::iter::once(("", top)).chain(
        body::NESTED_CONTAINERS
            .iter()
            .filter_map(|name| Some((*name, top.get(*name)?.as_object()?))),
    );
    let path = |container: &str, field: &str| match container {
        "" => field.to_owned(),
        container => format!("{container}.{field}"),
    };
    for (prefix, object) in containers {
        for (fields, cap, limit) in scalar_caps {
            for field in fields {
                let Some(value) = object.get(*field).and_then(number) else {
                    continue;
                };
                if limit > 0 && value > limit as f64 {
                    return Err(over(&path(prefix, field), cap, limit));
                }
            }
        }
        for field in body::FALLBACK_FIELDS {
            let count = match object.get(*field) {
                Some(Value::Array(list)) => list.len(),
                Some(Value::Object(map)) => map.len(),
                Some(Value::String(s)) => s.split(',').filter(|m| !m.trim().is_empty()).count(),
                _ => 0,
            };
            if caps.fallbacks > 0 && count as u64 > caps.fallbacks {
                return Err(over(&path(prefix, field), "fallbacks", caps.fallbacks));
            }
        }
    }
    if let Some(model) = top.get("model").and_then(Value::as_str) {
        let count = model.split(',').filter(|m| !m.trim().is_empty()).count();
        if caps.models > 0 && count as u64 > caps.models {
            return Err(over("model", "models", caps.models));
        }
    }
    if matches!(shape, Shape::Embeddings | Shape::Moderations) {
        let count = top.get("input").map_or(0, shapes::batch_len);
        if caps.inputs > 0 && count as u64 > caps.inputs {
            return Err(over("input", "inputs", caps.inputs));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(result: Result<(), Reject>) -> Option<(&'static str, String)> {
        result.err().map(|r| (r.reason, r.message))
    }

    #[test]
    fn control_fields_top_level_and_nested() {
        let cases = [
            (json!({"model": "m", "messages": []}), None),
            (
                json!({"model": "m", "user": "u", "safety_identifier": "s", "metadata": {"user_id": "u"}}),
                None,
            ),
            (json!({"model": "m", "metadata": {"session": "a"}}), None),
            (json!({"mock_response": "hi"}), Some("mock_response")),
            (json!({"mock_tool_calls": []}), Some("mock_tool_calls")),
            (
                json!({"mock_testing_anything_new": true}),
                Some("mock_testing_anything_new"),
            ),
            (json!({"timeout": 0.001}), Some("timeout")),
            (json!({"stream_timeout": 1}), Some("stream_timeout")),
            (json!({"priority": 0}), Some("priority")),
            (json!({"guardrails": ["off"]}), Some("guardrails")),
            (
                json!({"metadata": {"disable_global_guardrails": true}}),
                Some("metadata.disable_global_guardrails"),
            ),
            (json!({"tags": ["premium"]}), Some("tags")),
            (
                json!({"metadata": {"tags": ["premium"]}}),
                Some("metadata.tags"),
            ),
            (json!({"cache": {"no-cache": true}}), Some("cache")),
            (json!({"caching": false}), Some("caching")),
            (json!({"_router_weights": {}}), Some("_router_weights")),
            (json!({"fallback_depth": 9}), Some("fallback_depth")),
            (
                json!({"metadata": {"user_api_key_team_id": "t"}}),
                Some("metadata.user_api_key_team_id"),
            ),
            (json!({"api_base": "http://evil"}), Some("api_base")),
            (json!({"base_url": "http://evil"}), Some("base_url")),
            (json!({"api_key": "sk-x"}), Some("api_key")),
            (json!({"model_list": []}), Some("model_list")),
            (json!({"user_config": {}}), Some("user_config")),
            (json!({"langfuse_host": "h"}), Some("langfuse_host")),
            (
                json!({"langfuse_secret_key": "s"}),
                Some("langfuse_secret_key"),
            ),
            (json!({"extra_headers": {}}), Some("extra_headers")),
            (json!({"extra_body": {}}), Some("extra_body")),
            (
                json!({"vertex_credentials": "{}"}),
                Some("vertex_credentials"),
            ),
            (json!({"aws_sts_endpoint": "x"}), Some("aws_sts_endpoint")),
            (
                json!({"custom_llm_provider": "x"}),
                Some("custom_llm_provider"),
            ),
            (
                json!({"input_cost_per_token": 0}),
                Some("input_cost_per_token"),
            ),
            (
                json!({"metadata": {"api_base": "x"}}),
                Some("metadata.api_base"),
            ),
            (
                json!({"metadata": {"langfuse_host": "x"}}),
                Some("metadata.langfuse_host"),
            ),
            (
                json!({"litellm_metadata": {"api_key": "x"}}),
                Some("litellm_metadata.api_key"),
            ),
            (
                json!({"metadata": {"extra_headers": {}}}),
                Some("metadata.extra_headers"),
            ),
            (json!({"model": "http://10.0.0.1:8000/v1"}), Some("model")),
            (
                json!({"model": "openai/https://evil.example/v1"}),
                Some("model"),
            ),
            (
                json!({"model": "gpt-4o,hosted_vllm///evil:1"}),
                Some("model"),
            ),
            (json!({"model": "openai/gpt-4o"}), None),
            (
                json!({"tools": [{"type": "function", "name": "f"}, {"type": "mcp", "server_label": "s", "server_url": "litellm_proxy/mcp/github"}]}),
                Some("tools[1].server_url"),
            ),
            (
                json!({"tools": [{"type": "mcp", "server_label": "s", "server_url": "LiteLLM_Proxy"}]}),
                Some("tools[0].server_url"),
            ),
            (
                json!({"tools": [{"type": "mcp", "server_label": "s", "server_url": "https://mcp.example/sse"}]}),
                None,
            ),
        ];
        for (body, want) in cases {
            match (code(check(&body)), want) {
                (None, None) => {}
                (Some((reason, message)), Some(path)) => {
                    assert_eq!(reason, "body_field", "{body}");
                    assert!(
                        message.contains(&format!("body field {path} ")),
                        "{message}"
                    );
                    assert!(!message.contains("evil") && !message.contains("sk-x"));
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn cost_caps_and_key_overrides() {
        let caps = Caps::default();
        let generous = Caps {
            n: 64,
            ..Caps::default()
        };
        let cases = [
            (json!({"n": 4, "max_tokens": 100}), &caps, None),
            (json!({"n": 50}), &caps, Some(("n", "n = 4"))),
            (json!({"n": "50"}), &caps, Some(("n", "n = 4"))),
            (json!({"n": 50}), &generous, None),
            (json!({"best_of": 20}), &caps, Some(("best_of", "n = 4"))),
            (
                json!({"max_tokens": 100000}),
                &caps,
                Some(("max_tokens", "max_tokens = 32768")),
            ),
            (
                json!({"max_completion_tokens": 100000}),
                &caps,
                Some(("max_completion_tokens", "max_tokens = 32768")),
            ),
            (
                json!({"max_output_tokens": 1e9}),
                &caps,
                Some(("max_output_tokens", "max_tokens = 32768")),
            ),
            (
                json!({"num_retries": 3}),
                &caps,
                Some(("num_retries", "retries = 2")),
            ),
            (json!({"max_retries": 2}), &caps, None),
            (
                json!({"metadata": {"num_retries": 9}}),
                &caps,
                Some(("metadata.num_retries", "retries = 2")),
            ),
            (
                json!({"fallbacks": ["a", "b", "c"]}),
                &caps,
                Some(("fallbacks", "fallbacks = 2")),
            ),
            (json!({"fallbacks": ["a", "b"]}), &caps, None),
            (
                json!({"litellm_metadata": {"context_window_fallbacks": [1, 2, 3]}}),
                &caps,
                Some(("litellm_metadata.context_window_fallbacks", "fallbacks = 2")),
            ),
            (
                json!({"model": "a,b"}),
                &caps,
                Some(("model", "models = 1")),
            ),
            (json!({"model": "a"}), &caps, None),
        ];
        for (body, caps, want) in cases {
            match (code(check_caps(&body, Shape::ChatCompletions, caps)), want) {
                (None, None) => {}
                (Some((reason, message)), Some((path, cap))) => {
                    assert_eq!(reason, "cost_cap", "{body}");
                    assert!(
                        message.contains(&format!("body field {path} ")),
                        "{message}"
                    );
                    assert!(message.ends_with(cap), "{message}");
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        let off = Caps {
            n: 0,
            ..Caps::default()
        };
        assert!(check_caps(&json!({"n": 1000}), Shape::ChatCompletions, &off).is_ok());
    }

    #[test]
    fn batch_sizes_capped_on_embeddings_and_moderations_only() {
        let caps = Caps {
            inputs: 3,
            ..Caps::default()
        };
        let four = json!({"input": ["a", "b", "c", "d"]});
        for (shape, body, over) in [
            (Shape::Embeddings, &four, true),
            (Shape::Moderations, &four, true),
            (Shape::Responses, &four, false),
            (Shape::Embeddings, &json!({"input": ["a", "b", "c"]}), false),
            (Shape::Embeddings, &json!({"input": [1, 2, 3, 4, 5]}), false),
            (
                Shape::Embeddings,
                &json!({"input": [[1], [2], [3], [4]]}),
                true,
            ),
            (Shape::Embeddings, &json!({"input": "one"}), false),
        ] {
            let got = code(check_caps(body, shape, &caps));
            assert_eq!(got.is_some(), over, "{shape} {body}");
            if let Some((reason, message)) = got {
                assert_eq!(reason, "cost_cap");
                assert_eq!(message, "body field input is over the cap inputs = 3");
            }
        }
    }
}
