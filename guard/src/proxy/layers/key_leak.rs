//! The client's own key goes nowhere but the header it authenticated in (threat 1): a copy of it
//! in another header, in the query (percent-decoded) or in the body is refused with 400
//! `client_key_forwarded`, naming where it was, before anything reaches the upstream. Credential
//! headers are not looked at: `auth::strip` removes them all.
//!
//! Why refuse rather than cut it out: a key inside a body or a query is part of what the
//! request means; cutting it would forward something the client did not send. Keys are 256-bit
//! random strings, so an exact copy is never a coincidence.

use http::{HeaderMap, HeaderName, StatusCode};
use memchr::arch::all::rabinkarp;

use super::auth;
use crate::proxy::reject::Reject;

/// The largest haystack searched with Rabin-Karp: its worst case (every window's hash
/// colliding) costs a key's length per byte, bounded here to a few hundred kilobytes of compares.
const SMALL: usize = 16 * 1024;

pub fn check(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
    key: &[u8],
    custom: Option<&HeaderName>,
) -> Result<(), Reject> {
    if key.is_empty() {
        return Ok(());
    }
    // One searcher for every place looked at. memchr's two-way searcher costs more to build
    // than a small request's whole scan (it showed as 4 % of a request's instructions), so
    // haystacks up to `SMALL` go through Rabin-Karp, cheap to build and linear on such
    // sizes; only a larger body gets the two-way one, whose worst case stays linear.
    let small = rabinkarp::Finder::new(key);
    let contains = |haystack: &[u8]| {
        if haystack.len() <= SMALL {
            small.find(haystack, key).is_some()
        } else {
            memchr::memmem::find(haystack, key).is_some()
        }
    };
    let refuse = |place: &str| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "client_key_forwarded",
            format!("the API key may only be sent in its auth header, not in {place}"),
        )
    };
    for (name, value) in headers {
        if !auth::is_credential(name, custom) && contains(value.as_bytes()) {
            return Err(refuse(&format!("header `{name}`")));
        }
    }
    if let Some(query) = query {
        if contains(query.as_bytes()) || contains(&percent_decode(query.as_bytes())) {
            return Err(refuse("the query"));
        }
    }
    if contains(body) {
        return Err(refuse("the body"));
    }
    Ok(())
}

/// `%XX` decoded (a malformed escape stays as written); `+` is left alone, as no key has one.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pgk_0123abcd";

    /// (headers, query, body, where the key is reported, if refused).
    type Case = (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
        &'static str,
        Option<&'static str>,
    );

    #[test]
    fn table() {
        let custom = HeaderName::from_static("x-my-key");
        let cases: &[Case] = &[
            (
                &[("authorization", "Bearer pgk_0123abcd")],
                None,
                "{}",
                None,
            ),
            (&[("x-litellm-api-key", "pgk_0123abcd")], None, "{}", None),
            (&[("x_api_key", "pgk_0123abcd")], None, "{}", None),
            (&[("x-my-key", "pgk_0123abcd")], None, "{}", None),
            (
                &[("x-other", "Bearer pgk_0123abcd")],
                None,
                "{}",
                Some("header `x-other`"),
            ),
            (&[], Some("key=pgk_0123abcd"), "{}", Some("query")),
            (&[], Some("key=pgk%5F0123abcd"), "{}", Some("query")),
            (&[], Some("key=pgk_0123abc"), "{}", None),
            (&[], None, r#"{"api_key":"pgk_0123abcd"}"#, Some("body")),
            (&[], None, r#"{"user":"pgk_0123abc"}"#, None),
        ];
        for (headers, query, body, refused) in cases {
            let mut map = HeaderMap::new();
            for (name, value) in headers.iter() {
                map.insert(HeaderName::from_static(name), value.parse().unwrap());
            }
            let got = check(&map, *query, body.as_bytes(), KEY.as_bytes(), Some(&custom));
            match refused {
                None => assert!(got.is_ok(), "{headers:?} {query:?} {body}"),
                Some(place) => {
                    let reject = got.expect_err(place);
                    assert_eq!(
                        (reject.status.as_u16(), reject.reason),
                        (400, "client_key_forwarded")
                    );
                    assert!(reject.message.contains(place), "{}", reject.message);
                    assert!(
                        !reject.message.contains(KEY),
                        "the message never repeats the key"
                    );
                }
            }
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%5Fb%zz%4"), b"a_b%zz%4");
        assert_eq!(percent_decode(b"%41%42"), b"AB");
    }
}
