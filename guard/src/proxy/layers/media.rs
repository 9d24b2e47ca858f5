//! Media URLs in request messages (issue 12, threat 17): LiteLLM fetches `image_url`, file and
//! audio URLs itself for providers that want the bytes inline, so a URL is an outbound request
//! from the upstream's host. Allowed only as `https` to a public address (IP literals checked,
//! local and metadata host names refused), `data:` when configured, or none at all.
//!
//! Not caught: a public-looking name that resolves to a private address. The guard does not
//! resolve names (a resolution here could differ from the upstream's anyway).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{StatusCode, Uri};
use serde_json::Value;

use crate::proxy::reject::Reject;

#[derive(Debug, Clone, Copy)]
pub struct MediaPolicy {
    pub allow_urls: bool,
    pub allow_data: bool,
}

impl MediaPolicy {
    pub fn check(&self, body: &Value) -> Result<(), Reject> {
        for field in ["messages", "input"] {
            if let Some(value) = body.get(field) {
                self.walk(value, None, field)?;
            }
        }
        Ok(())
    }

    /// Every string under a URL-ish key (`url`, `*_url`, `file_id`, `file_data`), at any depth.
    fn walk(&self, value: &Value, key: Option<&str>, path: &str) -> Result<(), Reject> {
        match value {
            Value::Array(items) => items.iter().try_for_each(|item| self.walk(item, key, path)),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, v)| self.walk(v, Some(k), if k == "url" { path } else { k })),
            Value::String(text) if key.is_some_and(url_key) => self.check_url(text, path),
            _ => Ok(()),
        }
    }

    fn check_url(&self, text: &str, field: &str) -> Result<(), Reject> {
        let text = text.trim();
        let Some((scheme, _)) = text.split_once(':') else {
            return Ok(()); // A file id or bare base64, not a URL.
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "data" {
            return if self.allow_data {
                Ok(())
            } else {
                Err(refuse(field, "data: URLs are turned off"))
            };
        }
        if !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Ok(()); // No scheme: text with a colon.
        }
        if !self.allow_urls {
            return Err(refuse(field, "media URLs are turned off"));
        }
        if scheme != "https" {
            return Err(refuse(field, "only https media URLs are accepted"));
        }
        let host = text
            .parse::<Uri>()
            .ok()
            .and_then(|uri| uri.host().map(str::to_owned))
            .ok_or_else(|| refuse(field, "the media URL has no readable host"))?;
        match host_class(&host) {
            None => Ok(()),
            Some(why) => Err(refuse(field, why)),
        }
    }
}

fn url_key(key: &str) -> bool {
    key == "url" || key.ends_with("_url") || key == "file_id" || key == "file_data"
}

fn refuse(field: &str, why: &str) -> Reject {
    Reject::new(
        StatusCode::BAD_REQUEST,
        "media_url",
        format!("media URL in {field} refused: {why}"),
    )
}

/// Why `host` (from a URL) is not a public destination, or `None` when it is.
fn host_class(host: &str) -> Option<&'static str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let bracketless = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bracketless.parse::<IpAddr>() {
        return (!is_public(ip)).then_some("the address is not public");
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    if last.chars().all(|c| c.is_ascii_digit()) || last.starts_with("0x") {
        // `2130706433`, `0x7f.1`, `127.1`: numeric forms some clients read as addresses.
        return Some("the host is a numeric address in a non-standard form");
    }
    const LOCAL_NAMES: &[&str] = &[
        "localhost",
        "metadata",
        "instance-data",
        "metadata.google.internal",
    ];
    const LOCAL_SUFFIXES: &[&str] = &[
        ".localhost",
        ".internal",
        ".local",
        ".localdomain",
        ".home.arpa",
    ];
    if LOCAL_NAMES.contains(&host.as_str()) || LOCAL_SUFFIXES.iter().any(|s| host.ends_with(s)) {
        return Some("the host is a local or metadata name");
    }
    if !host.contains('.') {
        // One-label names resolve through the search domains, to internal hosts.
        return Some("the host is a one-label (internal) name");
    }
    None
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 to any IPv4
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(url: &str) -> Value {
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this: see http://x"},
            {"type": "image_url", "image_url": {"url": url}}
        ]}]})
    }

    #[test]
    fn url_classes() {
        let on = MediaPolicy {
            allow_urls: true,
            allow_data: true,
        };
        let cases = [
            ("https://example.com/cat.png", true),
            ("HTTPS://Example.COM./cat.png", true),
            ("https://93.184.216.34/cat.png", true),
            ("https://[2606:2800:220:1::]/a.png", true),
            ("data:image/png;base64,iVBORw0KGgo=", true),
            ("http://example.com/cat.png", false),
            ("ftp://example.com/cat.png", false),
            ("file:///etc/passwd", false),
            ("https://127.0.0.1/a", false),
            ("https://[::1]/a", false),
            ("https://169.254.169.254/latest/meta-data/", false),
            ("https://10.1.2.3/a", false),
            ("https://192.168.0.1/a", false),
            ("https://172.16.0.1/a", false),
            ("https://100.64.0.1/a", false),
            ("https://0.0.0.0/a", false),
            ("https://[fd00::1]/a", false),
            ("https://[fe80::1]/a", false),
            ("https://[::ffff:127.0.0.1]/a", false),
            ("https://2130706433/a", false),
            ("https://0x7f.1/a", false),
            ("https://localhost/a", false),
            ("https://api.localhost/a", false),
            ("https://metadata.google.internal/a", false),
            ("https://metadata/a", false),
            ("https://printer.local/a", false),
            ("https://user@127.0.0.1:8443/a", false),
        ];
        for (url, ok) in cases {
            let got = on.check(&image(url));
            assert_eq!(got.is_ok(), ok, "{url}: {got:?}");
            if let Err(reject) = got {
                assert_eq!(reject.reason, "media_url");
                assert!(reject.message.contains("image_url"), "{}", reject.message);
                assert!(!reject.message.contains(url), "never the URL itself");
            }
        }
    }

    #[test]
    fn file_and_audio_parts_and_switches() {
        let on = MediaPolicy {
            allow_urls: true,
            allow_data: false,
        };
        let file = json!({"messages": [{"content": [
            {"type": "file", "file": {"file_id": "https://10.0.0.1/x.pdf"}}]}]});
        assert!(on.check(&file).is_err());
        let audio = json!({"messages": [{"content": [
            {"type": "audio_url", "audio_url": "https://169.254.169.254/a.wav"}]}]});
        assert!(on.check(&audio).is_err());
        let responses = json!({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://[::1]/a.png"}]}]});
        assert!(on.check(&responses).is_err());
        let id =
            json!({"messages": [{"content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]});
        assert!(on.check(&id).is_ok());
        let data = image("data:image/png;base64,AAAA");
        assert!(on.check(&data).unwrap_err().message.contains("data:"));
        let off = MediaPolicy {
            allow_urls: false,
            allow_data: true,
        };
        assert!(off.check(&image("https://example.com/a.png")).is_err());
        assert!(off.check(&data).is_ok());
        assert!(off
            .check(&json!({"messages": [{"content": "https://127.0.0.1"}]}))
            .is_ok());
    }
}
