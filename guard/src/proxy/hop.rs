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

pub fn strip(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table row's headers: (name, value) pairs.
    type Headers = &'static [(&'static str, &'static str)];

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
