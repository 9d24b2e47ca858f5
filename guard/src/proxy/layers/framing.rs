//! Request smuggling (framing): a request whose length the upstream could read differently from
//! us is refused with 400.
//!
//! What hyper's parser already does before this layer sees a request (tested end to end):
//! - differing Content-Length values, or a non-numeric one: 400;
//! - a Transfer-Encoding that does not end in `chunked`: 400;
//! - identical repeated Content-Length values: folded into one (RFC 9110 §8.6 allows that);
//! - Content-Length with Transfer-Encoding: the Content-Length is dropped, chunked wins, and the
//!   connection is closed after the response (RFC 9112 §6.3).
//!
//! The last two are safe but not refused, and hyper removes the evidence; `framing_watch` sees
//! them on the wire and hands this layer `ambiguous_on_wire`. This layer refuses those, and
//! whatever of the others still reaches it (if hyper's behaviour changes). Every refusal here
//! closes the connection: after an ambiguous length, nothing later on it can be trusted. The proxy
//! never forwards the client's framing either: it re-frames the complete, buffered body with its
//! own Content-Length. `Content_Length` and `Transfer_Encoding` are refused too: hyper treats them
//! as ordinary headers and they would be forwarded, but a server that folds `_` into `-` reads
//! them as framing, a second length beside the guard's own.

use http::{header, HeaderMap, StatusCode};

use crate::proxy::reject::Reject;

pub fn check(headers: &HeaderMap, ambiguous_on_wire: bool) -> Result<(), Reject> {
    let bad = |message: &str| {
        let mut reject = Reject::new(StatusCode::BAD_REQUEST, "framing", message);
        reject.close_connection = true;
        reject
    };
    if ambiguous_on_wire {
        return Err(bad(
            "Content-Length with Transfer-Encoding, or Content-Length more than once, is refused",
        ));
    }
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let encodings = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    let disguised = headers.keys().any(|name| {
        name.as_str().contains('_')
            && (super::folds_to(name, "content-length")
                || super::folds_to(name, "transfer-encoding"))
    });
    if disguised {
        return Err(bad(
            "Content-Length or Transfer-Encoding spelled with '_' is refused",
        ));
    }
    if lengths > 0 && encodings > 0 {
        return Err(bad(
            "Content-Length and Transfer-Encoding together are refused",
        ));
    }
    if lengths > 1 {
        return Err(bad("more than one Content-Length header"));
    }
    if let Some(value) = headers.get(header::CONTENT_LENGTH) {
        let digits = value.as_bytes();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("Content-Length is not a number"));
        }
    }
    if encodings > 1 {
        return Err(bad("more than one Transfer-Encoding header"));
    }
    if let Some(value) = headers.get(header::TRANSFER_ENCODING) {
        if !value.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("only `Transfer-Encoding: chunked` is accepted"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table row's headers: (name, value) pairs.
    type Headers = &'static [(&'static str, &'static str)];

    #[test]
    fn table() {
        let cases: &[(Headers, bool)] = &[
            (&[], true),
            (&[("content-length", "10")], true),
            (&[("transfer-encoding", "chunked")], true),
            (
                &[("content-length", "10"), ("transfer-encoding", "chunked")],
                false,
            ),
            (&[("content-length", "10"), ("content-length", "10")], false),
            (&[("content-length", "+10")], false),
            (&[("content_length", "10")], false),
            (
                &[("content-length", "2"), ("transfer_encoding", "chunked")],
                false,
            ),
            (&[("content-length", "2"), ("x_content_length", "3")], true),
            (&[("transfer-encoding", "gzip, chunked")], false),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                false,
            ),
        ];
        for (headers, ok) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers.iter() {
                map.append(http::HeaderName::from_static(name), value.parse().unwrap());
            }
            let got = check(&map, false);
            assert_eq!(got.is_ok(), *ok, "{headers:?}: {got:?}");
            if let Err(reject) = got {
                assert_eq!(reject.status, 400);
                assert!(reject.close_connection);
            }
        }
    }

    #[test]
    fn what_the_wire_saw_is_refused_whatever_hyper_left() {
        let mut map = HeaderMap::new();
        map.insert(http::header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        let reject = check(&map, true).unwrap_err();
        assert_eq!(reject.status, 400);
        assert_eq!(reject.reason, "framing");
        assert!(reject.close_connection);
    }
}
