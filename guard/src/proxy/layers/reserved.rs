//! Reserved headers (threat 2): the upstream attributes requests by `x-rollout-id`,
//! `x-attempt-id` and `x-sequence-id` and keeps client-sent copies, so a client could forge
//! attribution. They, and any configured extras, are refused with 400 naming the header, also when
//! spelled with `_` for `-` (`x_rollout_id`), which servers that fold the two would read as the
//! reserved name.

use http::{HeaderMap, HeaderName, StatusCode};

use crate::proxy::reject::Reject;

pub fn check(headers: &HeaderMap, reserved: &[HeaderName]) -> Result<(), Reject> {
    let underscored: Vec<&HeaderName> = headers
        .keys()
        .filter(|key| key.as_str().contains('_'))
        .collect();
    let sent = |name: &HeaderName| {
        headers.contains_key(name)
            || underscored
                .iter()
                .any(|key| super::folds_to(key, name.as_str()))
    };
    match reserved.iter().find(|name| sent(name)) {
        Some(name) => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "reserved_header",
            format!("header `{name}` is reserved and may not be sent by clients"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let reserved: Vec<HeaderName> = ["x-rollout-id", "x-attempt-id", "x-sequence-id", "x-team"]
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        let cases = [
            ("content-type", None),
            ("x-request-id", None),
            ("x-rollout-id", Some("x-rollout-id")),
            ("X-Attempt-Id", Some("x-attempt-id")),
            ("x-sequence-id", Some("x-sequence-id")),
            ("x-team", Some("x-team")),
            ("x_rollout_id", Some("x-rollout-id")),
            ("X-Sequence_Id", Some("x-sequence-id")),
            ("x_team", Some("x-team")),
            ("x_request_id", None),
        ];
        for (name, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
            let got = check(&headers, &reserved)
                .err()
                .map(|r| (r.status, r.message));
            match expected {
                None => assert_eq!(got, None, "{name}"),
                Some(header) => {
                    let (status, message) = got.expect(name);
                    assert_eq!(status, 400);
                    assert!(message.contains(header), "{message}");
                }
            }
        }
    }
}
