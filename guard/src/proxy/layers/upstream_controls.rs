//! LiteLLM's control headers (threats 2, 3, 14): the `x-litellm-*`, `litellm-*`, `x-mcp-*` and
//! `typesafe-danger-zone-*` families and the other headers it acts on (`openai-organization`,
//! `anthropic-beta`, `traceparent`, `baggage`, sessions and agents; `upstream_surface` lists
//! them by effect) are removed from requests, `_` spellings included, unless
//! `proxy.headers.upstream_allow` (every key) or the key's own `upstream_allow` names them. Removed rather than refused: SDKs and agent
//! frameworks send some of them unasked, and without them the request means the same to the model.

use http::{HeaderMap, HeaderName};

use crate::proxy::upstream_surface;

/// Whether `name` is a control header, read as the upstream would read it (`_` as `-`).
pub fn is_control(name: &HeaderName) -> bool {
    let name = name.as_str();
    if name.contains('_') {
        upstream_surface::is_control_header(&name.replace('_', "-"))
    } else {
        upstream_surface::is_control_header(name)
    }
}

/// Removes every control header that neither the global `allow` nor the key's own `key_allow`
/// names (an allowed name passes only as spelled there, never in a `_` spelling).
pub fn strip(headers: &mut HeaderMap, allow: &[HeaderName], key_allow: &[HeaderName]) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_control(name) && !allow.contains(name) && !key_allow.contains(name))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let allow = [HeaderName::from_static("x-litellm-tags")];
        let key_allow = [HeaderName::from_static("x-litellm-priority")];
        let cases = [
            ("x-litellm-timeout", false),
            ("x-litellm-num-retries", false),
            ("x-litellm-spend-logs-metadata", false),
            ("x-litellm-something-new", false),
            ("litellm-disable-message-redaction", false),
            ("x-mcp-servers", false),
            ("typesafe-danger-zone-authorization", false),
            ("openai-organization", false),
            ("anthropic-beta", false),
            ("traceparent", false),
            ("x-session-id", false),
            ("x_litellm_timeout", false),
            ("x-litellm-priority", true),
            ("X-LiteLLM-Num-Retries", false),
            // Named in the allow-list: through, but only as spelled there.
            ("x-litellm-tags", true),
            ("x_litellm_tags", false),
            ("content-type", true),
            ("x-request-id", true),
            ("x-stainless-lang", true),
            ("user-agent", true),
        ];
        for (name, kept) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
            strip(&mut headers, &allow, &key_allow);
            assert_eq!(!headers.is_empty(), kept, "{name}");
        }
    }
}
