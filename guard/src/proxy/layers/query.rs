//! Query strings (threat 3, issue 12): each inference route takes only the parameter names its
//! entry in the route table (`proxy::routes`) lists, most none, each at most once. LiteLLM copies
//! every query parameter into the request data its auth and routing read, so an unlisted one is
//! control the guard did not understand, and gets 400 `query` naming it (the name, never its
//! value).
//!
//! Every query, an admin route's too, first gets the path's byte checks, as sent and before any
//! decoding: printable ASCII only, no backslash, well-formed `%XX` escapes and none of a control
//! byte or a backslash, no empty `&&` parameter, and at most `proxy.limits.max_query_bytes`.

use http::StatusCode;

use super::path::{Route, RouteKind};
use crate::proxy::reject::Reject;

/// Names longer than this are not echoed back, only refused.
const MAX_NAMED: usize = 64;

pub fn check(route: &Route, query: Option<&str>, max_bytes: usize) -> Result<(), Reject> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(());
    };
    check_syntax(query, max_bytes)?;
    let allowed = match route.kind {
        RouteKind::Api => &route.spec.query,
        RouteKind::Admin => return Ok(()),
    };
    let mut seen: Vec<&str> = Vec::new();
    for name in query
        .split('&')
        .map(|param| param.split('=').next().unwrap_or_default())
    {
        if !allowed.iter().any(|param| **param == *name) {
            let listed = if allowed.is_empty() {
                "it takes no query parameters".to_owned()
            } else {
                format!("it takes only {}", allowed.join(", "))
            };
            return Err(refuse(format!(
                "query parameter {} is not accepted on {}: {listed}",
                quoted(name),
                route.template
            )));
        }
        if seen.contains(&name) {
            return Err(refuse(format!(
                "query parameter {} is repeated",
                quoted(name)
            )));
        }
        seen.push(name);
    }
    Ok(())
}

fn check_syntax(query: &str, max_bytes: usize) -> Result<(), Reject> {
    if query.len() > max_bytes {
        return Err(refuse(format!("the query is over {max_bytes} bytes")));
    }
    let bytes = query.as_bytes();
    if bytes.iter().any(|&b| !b.is_ascii_graphic() || b == b'\\') {
        return Err(refuse(
            "the query holds spaces, control characters, backslashes or non-ASCII bytes",
        ));
    }
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'%') {
        let escape = at + offset;
        let decoded = bytes
            .get(escape + 1..escape + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            None => return Err(refuse("the query holds a '%' that is not a %XX escape")),
            Some(b) if b.is_ascii_control() || b == b'\\' => {
                return Err(refuse(
                    "the query holds an encoded control character or backslash",
                ))
            }
            Some(_) => at = escape + 3,
        }
    }
    for param in query.split('&') {
        let name = param.split('=').next().unwrap_or_default();
        if name.is_empty() {
            return Err(refuse(
                "the query holds an empty parameter or one without a name",
            ));
        }
    }
    Ok(())
}

fn refuse(message: impl Into<String>) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, "query", message)
}

/// The name in quotes, or a stand-in when it is too long to repeat.
fn quoted(name: &str) -> String {
    if name.len() <= MAX_NAMED {
        format!("\"{name}\"")
    } else {
        format!("(a name of {} bytes)", name.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::layers::path::classify;

    #[test]
    fn table() {
        let long_value = format!("beta={}", "t".repeat(600));
        let long_name = format!("{}=1", "n".repeat(100));
        // (path, query, refused naming this, or Ok)
        let cases: Vec<(&str, Option<&str>, Result<(), &str>)> = vec![
            ("/v1/models", None, Ok(())),
            ("/v1/models", Some(""), Ok(())),
            ("/v1/messages", Some("beta=true"), Ok(())),
            ("/v1/messages", Some("beta"), Ok(())),
            ("/v1/messages", Some("beta=a%20b"), Ok(())),
            ("/key/info", Some("key=sk-1&x=%2F"), Ok(())),
            // Unknown names, named.
            ("/v1/models", Some("team_id=t1"), Err("\"team_id\"")),
            (
                "/v1/chat/completions",
                Some("model=gpt-4o"),
                Err("\"model\""),
            ),
            (
                "/v1/messages",
                Some("beta=true&custom_llm_provider=x"),
                Err("\"custom_llm_provider\""),
            ),
            ("/v1/messages", Some("Beta=true"), Err("\"Beta\"")),
            ("/v1/messages", Some("b%65ta=true"), Err("\"b%65ta\"")),
            ("/v1/models", Some(&long_name), Err("(a name of 100 bytes)")),
            // Repeated.
            (
                "/v1/messages",
                Some("beta=true&beta=false"),
                Err("repeated"),
            ),
            // Empty parameters.
            ("/v1/messages", Some("beta=true&"), Err("empty parameter")),
            ("/v1/messages", Some("&beta=true"), Err("empty parameter")),
            ("/v1/messages", Some("=true"), Err("empty parameter")),
            ("/key/info", Some("a=1&&b=2"), Err("empty parameter")),
            // Encoded and raw bytes, on admin routes too.
            ("/v1/messages", Some("beta=%00"), Err("encoded control")),
            (
                "/v1/messages",
                Some("beta=%0d%0aX:1"),
                Err("encoded control"),
            ),
            ("/key/info", Some("key=%7F"), Err("encoded control")),
            ("/key/info", Some("key=a%5cb"), Err("encoded control")),
            ("/v1/messages", Some("beta=%zz"), Err("not a %XX")),
            ("/v1/messages", Some("beta=%4"), Err("not a %XX")),
            ("/v1/messages", Some("beta=a b"), Err("spaces")),
            ("/v1/messages", Some("beta=a\\b"), Err("backslashes")),
            ("/v1/messages", Some("beta=\u{e9}"), Err("non-ASCII")),
            // Over-long, whatever the route.
            ("/v1/messages", Some(&long_value), Err("over 512 bytes")),
            ("/key/info", Some(&long_value), Err("over 512 bytes")),
        ];
        for (path, query, expected) in cases {
            let route = classify(path, 2048).unwrap();
            match (check(&route, query, 512), expected) {
                (Ok(()), Ok(())) => {}
                (Err(reject), Err(needle)) => {
                    assert_eq!(reject.status, 400, "{path}?{query:?}");
                    assert_eq!(reject.reason, "query", "{path}?{query:?}");
                    assert!(
                        reject.message.contains(needle),
                        "{path}?{query:?}: {}",
                        reject.message
                    );
                }
                (got, want) => panic!("{path}?{query:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_value_is_never_repeated_back() {
        let route = classify("/v1/models", 2048).unwrap();
        let reject = check(&route, Some("secret_name=pgk_value_1234"), 512).unwrap_err();
        assert!(
            reject.message.contains("\"secret_name\""),
            "{}",
            reject.message
        );
        assert!(
            !reject.message.contains("pgk_value_1234"),
            "{}",
            reject.message
        );
    }
}
