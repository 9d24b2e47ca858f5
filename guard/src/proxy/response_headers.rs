//! Response headers pass through an allow-list (threats 14, 17): what SDKs read (content type,
//! request ids, rate-limit headers, `retry-after`) goes back to the client; the rest, among it
//! LiteLLM's `x-litellm-*` (key spend, budget and limits, model id and api base, cost, version),
//! its raw `llm_provider-*` copies of the provider's headers and provider-organization headers,
//! stays at the guard. A wildcard `access-control-allow-origin` is dropped even when allowed: it
//! would let any web page read answers made with a key a browser holds.
//! `proxy.headers.response_allow` replaces the list; `upstream_surface::RESPONSE_ALLOW_DEFAULT`
//! is its default.

use http::{header, HeaderMap, HeaderName};

/// Exact names and `prefix*` patterns, lower-case.
#[derive(Debug, Clone, Default)]
pub struct ResponseAllow {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
}

impl ResponseAllow {
    /// From entries already checked by the config compiler ([`ResponseAllow::entry_is_valid`]);
    /// an entry that is not valid is left out.
    pub fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> ResponseAllow {
        let mut allow = ResponseAllow::default();
        for entry in entries {
            let entry = entry.to_ascii_lowercase();
            if let Some(prefix) = entry.strip_suffix('*') {
                allow.prefixes.push(prefix.to_owned());
            } else if let Ok(name) = HeaderName::from_bytes(entry.as_bytes()) {
                allow.exact.push(name);
            }
        }
        allow
    }

    /// A header name, or a non-empty header-name prefix followed by `*`.
    pub fn entry_is_valid(entry: &str) -> bool {
        let name = entry.strip_suffix('*').unwrap_or(entry);
        !name.is_empty() && HeaderName::from_bytes(name.as_bytes()).is_ok()
    }

    fn allows(&self, name: &HeaderName) -> bool {
        self.exact.contains(name)
            || self
                .prefixes
                .iter()
                .any(|prefix| name.as_str().starts_with(prefix.as_str()))
    }

    /// Removes every header the list does not allow, and a wildcard CORS origin.
    pub fn filter(&self, headers: &mut HeaderMap) {
        let dropped: Vec<HeaderName> = headers
            .keys()
            .filter(|name| !self.allows(name))
            .cloned()
            .collect();
        for name in dropped {
            headers.remove(name);
        }
        let wildcard = headers
            .get_all(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .iter()
            .any(|value| value.as_bytes().trim_ascii() == b"*");
        if wildcard {
            headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream_surface::RESPONSE_ALLOW_DEFAULT;

    #[test]
    fn the_default_list_keeps_what_sdks_read() {
        let allow = ResponseAllow::new(RESPONSE_ALLOW_DEFAULT.iter().copied());
        let cases = [
            ("content-type", true),
            ("content-length", true),
            ("x-request-id", true),
            ("request-id", true),
            ("retry-after", true),
            ("x-ratelimit-remaining-requests", true),
            ("x-ratelimit-limit-tokens", true),
            ("anthropic-ratelimit-requests-remaining", true),
            ("x-litellm-key-spend", false),
            ("x-litellm-key-max-budget", false),
            ("x-litellm-model-api-base", false),
            ("x-litellm-model-id", false),
            ("x-litellm-response-cost", false),
            ("x-litellm-version", false),
            ("x-litellm-call-id", false),
            ("llm_provider-openai-organization", false),
            ("llm_provider-x-request-id", false),
            ("openai-organization", false),
            ("anthropic-organization-id", false),
            ("access-control-allow-origin", false),
            ("access-control-allow-credentials", false),
            ("server", false),
            ("set-cookie", false),
        ];
        for (name, kept) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(HeaderName::from_static(name), "1".parse().unwrap());
            allow.filter(&mut headers);
            assert_eq!(!headers.is_empty(), kept, "{name}");
        }
    }

    #[test]
    fn a_wildcard_origin_goes_even_when_allowed() {
        let allow = ResponseAllow::new(["access-control-allow-origin", "x-litellm-*"]);
        for (value, kept) in [("*", false), (" * ", false), ("https://app.example", true)] {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value.parse().unwrap());
            headers.insert(
                HeaderName::from_static("x-litellm-version"),
                "1".parse().unwrap(),
            );
            allow.filter(&mut headers);
            assert_eq!(
                headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                kept,
                "{value}"
            );
            assert!(
                headers.contains_key("x-litellm-version"),
                "a configured prefix is kept"
            );
        }
    }

    #[test]
    fn entries() {
        for (entry, valid) in [
            ("x-request-id", true),
            ("x-ratelimit-*", true),
            ("*", false),
            ("bad header", false),
            ("", false),
        ] {
            assert_eq!(ResponseAllow::entry_is_valid(entry), valid, "{entry:?}");
        }
    }
}
