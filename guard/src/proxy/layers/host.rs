//! `Host` must be one syntactically valid `host[:port]`. A value with `/`, `#`, `@` or whitespace
//! is refused: LiteLLM built URLs from it, and such values confused its routing (a published CVE).

use http::{header, HeaderMap, StatusCode};

use crate::proxy::reject::Reject;

pub fn check(headers: &HeaderMap) -> Result<(), Reject> {
    let bad = |message: &str| Reject::new(StatusCode::BAD_REQUEST, "bad_host", message);
    let mut values = headers.get_all(header::HOST).iter();
    let value = values
        .next()
        .ok_or_else(|| bad("the Host header is missing"))?;
    if values.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    if valid(value.as_bytes()) {
        Ok(())
    } else {
        Err(bad("the Host header is not a valid host[:port]"))
    }
}

fn valid(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        // An IPv6 literal: "[::1]" or "[::1]:8080".
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(value), None),
        }
    };
    let host_ok = host.is_none_or(|host| {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    });
    let port_ok = port.is_none_or(|port| {
        !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok()
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("localhost", true),
            ("127.0.0.1:8080", true),
            ("api.example.com", true),
            ("[::1]", true),
            ("[::1]:8080", true),
            ("my_host-1.internal:443", true),
            ("", false),
            ("evil.com/admin", false),
            ("host#frag", false),
            ("user@host", false),
            ("host name", false),
            ("host:", false),
            ("host:99999", false),
            ("host:80:80", false),
            ("[::1", false),
            ("[nothex]:80", false),
            ("host:8a", false),
        ];
        for (value, ok) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().unwrap());
            assert_eq!(check(&headers).is_ok(), ok, "{value:?}");
        }
        assert!(check(&HeaderMap::new()).is_err(), "missing Host");
    }
}
