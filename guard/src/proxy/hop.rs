//! Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, so a proxy removes them,
//! and every header the `Connection` header names, in both directions.

use http::{header, HeaderMap, HeaderName};

pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `HOP_BY_HOP` as header names, compared with the map's own names: a request or a response
/// has a handful of headers, so one pass over them costs less than a hashed removal per
/// hop-by-hop name (three strips per request: the request, the response, the rewrite).
static HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub fn strip(headers: &mut HeaderMap) {
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok());
    let listed = headers
        .keys()
        .filter(|name| HOP_BY_HOP_NAMES.contains(name))
        .cloned();
    // Allocates only when there is something to remove.
    let found: Vec<HeaderName> = named.chain(listed).collect();
    for name in found {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table row's headers: (name, value) pairs.
    type Headers = &'static [(&'static str, &'static str)];

    #[test]
    fn the_names_are_the_list() {
        let names: Vec<&str> = HOP_BY_HOP_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP);
    }

    #[test]
    fn table() {
        let cases: &[(Headers, &[&str])] = &[
            (&[("content-type", "application/json")], &["content-type"]),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("accept", "*/*"),
                ],
                &["accept"],
            ),
            (
                &[
                    ("connection", "close, x-private"),
                    ("x-private", "1"),
                    ("x-public", "1"),
                ],
                &["x-public"],
            ),
            (
                &[
                    ("te", "trailers"),
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                    ("trailer", "x"),
                ],
                &[],
            ),
            (
                &[
                    ("proxy-authorization", "Basic x"),
                    ("proxy-connection", "keep-alive"),
                ],
                &[],
            ),
        ];
        for (input, kept) in cases {
            let mut headers = HeaderMap::new();
            for (name, value) in input.iter() {
                headers.append(HeaderName::from_static(name), value.parse().unwrap());
            }
            strip(&mut headers);
            let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
            names.sort();
            assert_eq!(names, *kept, "{input:?}");
        }
    }
}
