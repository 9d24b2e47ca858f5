//! POST bodies must be `application/json`, valid UTF-8, one JSON object, and nested no deeper
//! than the limit (threat 4): the upstream's parser is the thing being protected.

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use serde_json::Value;

use crate::proxy::reject::Reject;

pub fn check(headers: &HeaderMap, body: &Bytes, max_depth: usize) -> Result<Value, Reject> {
    let bad = |reason, message: String| Reject::new(StatusCode::BAD_REQUEST, reason, message);
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim())
        .is_some_and(|essence| essence.eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(Reject::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "the request body must be sent as Content-Type: application/json",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(bad(
            "bad_json",
            "the request body is not valid UTF-8".into(),
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|err| {
        // serde_json's message names a line and column, never the content.
        bad(
            "bad_json",
            format!("the request body is not valid JSON ({err})"),
        )
    })?;
    if !value.is_object() {
        return Err(bad(
            "bad_json",
            "the request body must be a JSON object".into(),
        ));
    }
    if depth(&value) > max_depth {
        return Err(bad(
            "json_too_deep",
            format!("the request body nests deeper than {max_depth} levels"),
        ));
    }
    Ok(value)
}

/// Nesting depth without recursion: a scalar is 0, `{}` is 1.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((value, level)) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|v| (v, level + 1))),
            _ => {}
        }
        deepest = deepest.max(match value {
            Value::Array(_) | Value::Object(_) => level + 1,
            _ => level,
        });
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let nested = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let deep_ok = nested(3);
        let deep_bad = nested(4);
        let cases: Vec<(&str, &[u8], Result<(), u16>)> = vec![
            (
                "application/json",
                br#"{"model":"m","messages":[]}"#,
                Ok(()),
            ),
            ("application/json; charset=utf-8", b"{}", Ok(())),
            ("Application/JSON", b"{}", Ok(())),
            ("text/plain", b"{}", Err(415)),
            ("", b"{}", Err(415)),
            ("application/json", b"[1,2]", Err(400)),
            ("application/json", b"\"s\"", Err(400)),
            ("application/json", b"{\"a\":", Err(400)),
            ("application/json", b"{\"a\":\"\xff\"}", Err(400)),
            ("application/json", deep_ok.as_bytes(), Ok(())),
            ("application/json", deep_bad.as_bytes(), Err(400)),
        ];
        for (content_type, body, expected) in cases {
            let mut headers = HeaderMap::new();
            if !content_type.is_empty() {
                headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            }
            let got = check(&headers, &Bytes::copy_from_slice(body), 4)
                .map(|_| ())
                .map_err(|r| r.status.as_u16());
            assert_eq!(
                got,
                expected,
                "{content_type} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!({})), 1);
        assert_eq!(depth(&serde_json::json!({"a": [{"b": 1}]})), 3);
    }
}
