//! The request body limit (threat 4): the upstream reads any body into memory.
//!
//! A declared Content-Length over the limit is refused before a byte is read. Otherwise the body
//! is read, counted as it arrives, into one buffer of at most the limit, and only a complete body
//! is forwarded: the upstream never sees part of a request that was cut off.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::proxy::reject::Reject;

fn too_large(limit: u64) -> Reject {
    Reject::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

/// A GET or HEAD with a body is refused: the routes that take GET define none, and servers
/// disagree on whether such a body is part of the request, which is what desync attacks use.
pub fn check_bodyless(method: &Method, headers: &HeaderMap) -> Result<(), Reject> {
    if method != Method::GET && method != Method::HEAD {
        return Ok(());
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|value| value.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if declared {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "body_not_allowed",
            format!("a {method} request must not have a body"),
        ));
    }
    Ok(())
}

/// 413 from the declared length alone. The framing layer has already refused malformed values.
pub fn check_declared(headers: &HeaderMap, limit: u64) -> Result<(), Reject> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// The whole body, or 413 at the first byte past `limit`, or 408 when it takes too long.
pub async fn read<B>(body: B, limit: u64, timeout: Duration) -> Result<Bytes, Reject>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let capped = Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, capped.collect()).await {
        Err(_) => Err(Reject::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s",
                timeout.as_secs()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Ok(Err(_)) => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            "the request body ended early or was malformed",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    /// A method, one header (name, value) or none, and whether the request passes.
    type BodylessCase = (Method, Option<(&'static str, &'static str)>, bool);

    #[test]
    fn bodyless_methods_table() {
        let cases: &[BodylessCase] = &[
            (Method::GET, None, true),
            (Method::GET, Some(("content-length", "0")), true),
            (Method::GET, Some(("content-length", "2")), false),
            (Method::GET, Some(("transfer-encoding", "chunked")), false),
            (Method::HEAD, Some(("content-length", "1")), false),
            (Method::POST, Some(("content-length", "2")), true),
            (Method::POST, Some(("transfer-encoding", "chunked")), true),
        ];
        for (method, header, ok) in cases {
            let mut headers = HeaderMap::new();
            if let Some((name, value)) = header {
                headers.insert(*name, value.parse().unwrap());
            }
            let got = check_bodyless(method, &headers);
            assert_eq!(got.is_ok(), *ok, "{method} {header:?}");
            if let Err(reject) = got {
                assert_eq!(
                    (reject.status.as_u16(), reject.reason),
                    (400, "body_not_allowed")
                );
            }
        }
    }

    #[test]
    fn declared_length_table() {
        for (length, ok) in [
            (None, true),
            (Some("0"), true),
            (Some("10"), true),
            (Some("11"), false),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(length) = length {
                headers.insert(header::CONTENT_LENGTH, length.parse().unwrap());
            }
            let got = check_declared(&headers, 10);
            assert_eq!(got.is_ok(), ok, "{length:?}");
        }
    }

    #[tokio::test]
    async fn streamed_bodies_are_counted() {
        let chunked = |sizes: &[usize]| {
            let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = sizes
                .iter()
                .map(|n| Ok(Frame::data(Bytes::from(vec![b'x'; *n]))))
                .collect();
            StreamBody::new(stream::iter(frames))
        };
        let second = Duration::from_secs(1);
        let cases: &[(&[usize], Result<usize, u16>)] = &[
            (&[], Ok(0)),
            (&[4, 6], Ok(10)),
            (&[4, 4, 4], Err(413)),
            (&[11], Err(413)),
        ];
        for (sizes, expected) in cases {
            let got = read(chunked(sizes), 10, second)
                .await
                .map(|b| b.len())
                .map_err(|r| r.status.as_u16());
            assert_eq!(got, *expected, "{sizes:?}");
        }
        let full = read(Full::new(Bytes::from_static(b"{}")), 10, second).await;
        assert_eq!(full.unwrap(), Bytes::from_static(b"{}"));
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let stalled = StreamBody::new(stream::pending::<Result<Frame<Bytes>, std::io::Error>>());
        let reject = read(stalled, 10, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(reject.status, 408);
    }
}
