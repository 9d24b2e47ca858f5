//! Header count and size limits (threat 5): the upstream parses header values without bounds.
//!
//! hyper already caps the raw head (its buffer) and the count; this layer applies the configured,
//! tighter limits and names the offending header, answering 431.

use http::{HeaderMap, StatusCode};

use crate::proxy::reject::Reject;

#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_headers: usize,
    pub max_value_bytes: usize,
    pub max_total_bytes: usize,
}

pub fn check(headers: &HeaderMap, limits: &HeaderLimits) -> Result<(), Reject> {
    let too_large = |message: String| {
        Reject::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_limit",
            message,
        )
    };
    if headers.len() > limits.max_headers {
        return Err(too_large(format!(
            "too many headers: {} (the limit is {})",
            headers.len(),
            limits.max_headers
        )));
    }
    let mut total = 0;
    for (name, value) in headers {
        if value.len() > limits.max_value_bytes {
            return Err(too_large(format!(
                "header `{name}` is longer than {} bytes",
                limits.max_value_bytes
            )));
        }
        // As on the wire: "name: value\r\n".
        total += name.as_str().len() + value.len() + 4;
    }
    if total > limits.max_total_bytes {
        return Err(too_large(format!(
            "headers total more than {} bytes",
            limits.max_total_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table row's headers: (name, value) pairs.
    type Headers<'a> = &'a [(&'a str, &'a str)];
    use http::HeaderValue;

    const LIMITS: HeaderLimits = HeaderLimits {
        max_headers: 4,
        max_value_bytes: 16,
        max_total_bytes: 64,
    };

    #[test]
    fn table() {
        let long = "v".repeat(17);
        let cases: &[(Headers<'_>, Option<&str>)] = &[
            (&[("a", "1"), ("b", "2")], None),
            (&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")], None),
            (
                &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")],
                Some("too many"),
            ),
            (&[("x-big", &long)], Some("`x-big`")),
            (
                &[
                    ("aaaaaaaaaaaaaaa", "1234567890123456"),
                    ("bbbbbbbbbbbbbbb", "1234567890123456"),
                ],
                Some("total"),
            ),
        ];
        for (headers, expected) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers.iter() {
                map.append(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            match (check(&map, &LIMITS), expected) {
                (Ok(()), None) => {}
                (Err(reject), Some(needle)) => {
                    assert_eq!(reject.status, 431);
                    assert!(reject.message.contains(needle), "{}", reject.message);
                    assert!(!reject.message.contains(&long), "no values in messages");
                }
                (got, want) => panic!("{headers:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
