//! One entry per fuzz target: each feeds arbitrary bytes to a parser of untrusted input and
//! asserts what must hold for every input. A panic is a bug in the guard.
//!
//! The targets in `fuzz/` (cargo-fuzz, nightly) call these; the unit test below replays the
//! checked-in seeds and past crashes (`fuzz/seeds/`) on stable, so they stay checked by
//! `cargo test`. Inputs are split into lines so that seeds stay readable.

use std::{path::Path, sync::OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::RegexSet;

use crate::{
    config::{
        proxy::{LimitsConfig, UpstreamKind, ALWAYS_RESERVED},
        Config, ConfigError,
    },
    proxy::{
        framing_watch::HeadScanner,
        layers::{
            body, content::ContentRules, framing, header_limits, header_limits::HeaderLimits, host,
            json, path, reserved,
        },
        routes::RouteTable,
    },
};

/// A fuzz target's body: it returns for every input, or panics on a bug.
pub type Entry = fn(&[u8]);

/// The fuzz targets, by name: `fuzz/fuzz_targets/{name}.rs` and `fuzz/seeds/{name}/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("path", path),
    ("headers", headers),
    ("json_body", json_body),
    ("config", config),
    ("framing_watch", framing_watch),
    ("rollout_token", rollout_token),
];

/// `METHOD\nPATH`: the raw-path checks, every profile's route table (Azure routes on) and the
/// method check, on the path as the pipeline sees it (from a parsed request target) and on any
/// string.
pub fn path(data: &[u8]) {
    let (method, raw) = split_line(data);
    let method = Method::from_bytes(method).unwrap_or(Method::GET);
    let max = LimitsConfig::default().max_path_bytes;
    for table in route_tables() {
        if let Ok(uri) = http::Uri::try_from(raw) {
            classify(table, uri.path(), &method, max);
        }
        classify(table, &String::from_utf8_lossy(raw), &method, max);
        classify(table, &String::from_utf8_lossy(raw), &method, 8);
    }
}

fn route_tables() -> &'static [RouteTable] {
    static TABLES: OnceLock<Vec<RouteTable>> = OnceLock::new();
    TABLES.get_or_init(|| {
        UpstreamKind::ALL
            .iter()
            .map(|kind| RouteTable::builtin(*kind, true))
            .collect()
    })
}

fn classify(table: &RouteTable, raw: &str, method: &Method, max: usize) {
    match path::classify_in(table, raw, max) {
        Ok(route) => {
            // What the syntax check promises about every path it lets through.
            assert!(raw.len() <= max && raw.starts_with('/'));
            assert!(raw.bytes().all(|b| b.is_ascii_graphic()), "{raw:?}");
            let lower = raw.to_ascii_lowercase();
            assert!(!["%2f", "%2e", "%5c", "%00", "//"]
                .iter()
                .any(|bad| lower.contains(bad)));
            assert!(!raw.split('/').any(|s| s == ".." || s == "."));
            assert!(route.template.starts_with('/'));
            // The label is the template's, never the path's own ids.
            assert_eq!(route.template, route.spec.label);
            if let Some(rollout) = &route.rollout {
                assert!(raw.split('/').any(|s| s == rollout.rollout));
                assert!(raw.split('/').any(|s| s == rollout.attempt));
            }
            if let Err(reject) = path::check_method(&route, method) {
                assert_eq!(reject.status, 405);
            }
        }
        Err(reject) => assert!(matches!(reject.status.as_u16(), 400 | 404), "{reject:?}"),
    }
}

/// `name:value` lines: the head checks in pipeline order, under the default limits and under
/// tight ones.
pub fn headers(data: &[u8]) {
    let mut map = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    let framed = framing::check(&map, false).err().map(|r| r.status);
    assert!(framed.is_none_or(|s| s == 400));
    let defaults = LimitsConfig::default();
    for limits in [
        HeaderLimits {
            max_headers: defaults.max_headers,
            max_value_bytes: defaults.max_header_value_bytes,
            max_total_bytes: defaults.max_header_bytes,
        },
        HeaderLimits {
            max_headers: 4,
            max_value_bytes: 16,
            max_total_bytes: 64,
        },
    ] {
        let limited = header_limits::check(&map, &limits).err();
        assert!(limited.is_none_or(|r| r.status == 431));
    }
    assert!(host::check(&map).err().is_none_or(|r| r.status == 400));
    let forged = reserved::check(&map, reserved_names()).err();
    assert!(forged.is_none_or(|r| r.status == 400));
    let bodyless = body::check_bodyless(&http::Method::GET, &map).err();
    assert!(bodyless.is_none_or(|r| r.status == 400));
    if framed.is_none() {
        let declared = body::check_declared(&map, defaults.max_body_bytes).err();
        assert!(declared.is_none_or(|r| r.status == 413));
    }
}

fn reserved_names() -> &'static [HeaderName] {
    static NAMES: OnceLock<Vec<HeaderName>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ALWAYS_RESERVED
            .iter()
            .chain(&["x-team"])
            .map(|name| HeaderName::from_static(name))
            .collect()
    })
}

/// `CONTENT-TYPE\nBODY`: the JSON check at the default depth, then the content rules.
pub fn json_body(data: &[u8]) {
    let (content_type, body) = split_line(data);
    let mut map = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(content_type) {
        map.insert(http::header::CONTENT_TYPE, value);
    }
    let max_depth = LimitsConfig::default().max_json_depth;
    match json::check(&map, &Bytes::copy_from_slice(body), max_depth) {
        Ok(value) => {
            assert!(value.is_object());
            if let Err(reject) = content_rules().check(&value) {
                assert_eq!(reject.status, 400);
                assert_eq!(reject.reason, "content_rule");
            }
        }
        Err(reject) => assert!(matches!(reject.status.as_u16(), 400 | 415), "{reject:?}"),
    }
}

fn content_rules() -> &'static ContentRules {
    static RULES: OnceLock<ContentRules> = OnceLock::new();
    RULES.get_or_init(|| ContentRules {
        max_messages: 8,
        max_message_chars: 256,
        deny: Some(RegexSet::new(["(?i)ignore (all )?previous", "rm -rf"]).expect("valid")),
    })
}

/// Any UTF-8 text as the config file: parse, validate, and locate every error's line.
pub fn config(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(source, Path::new("fuzz.toml")) {
        Ok(_) => {}
        Err(ConfigError::Invalid { errors, .. }) => {
            assert!(!errors.is_empty());
            let lines = source.lines().count().max(1);
            for error in &errors {
                assert!(
                    error
                        .line
                        .is_none_or(|line| (1..=lines + 1).contains(&line)),
                    "{error}"
                );
                assert!(!error.to_string().is_empty());
            }
        }
        Err(other) => panic!("parsing text returned {other}"),
    }
}

/// Raw connection bytes: the framing watch fed them whole, in two reads split where the first
/// byte says, and one byte at a time, must give one answer, and the answer worked out over whole
/// lines below.
pub fn framing_watch(data: &[u8]) {
    let whole = HeadScanner::default().feed(data);
    let at = data.first().map_or(0, |&b| data.len() * b as usize / 256);
    let mut scanner = HeadScanner::default();
    let split = scanner.feed(&data[..at]) | scanner.feed(&data[at..]);
    let mut scanner = HeadScanner::default();
    let bytewise = data.iter().fold(false, |seen, b| {
        seen | scanner.feed(std::slice::from_ref(b))
    });
    let expected = framing_by_lines(data);
    assert_eq!(
        (whole, split, bytewise),
        (expected, expected, expected),
        "split at {at}"
    );
}

/// The fuzz target's signing key and clock: seeds signed with it at this time verify, so the
/// fuzzer starts from tokens that reach past the MAC.
pub const ROLLOUT_TOKEN_KEY: &str =
    "f1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const ROLLOUT_TOKEN_NOW: u64 = 1_800_000_000;

/// A presented credential, as the token verifier sees it: it returns a verdict for every input,
/// and what it accepts is a bounded, well-formed token whose ids are path ids and whose expiry is
/// current and within the bound.
pub fn rollout_token(data: &[u8]) {
    use crate::proxy::rollout_token::{
        valid_id, SigningKeys, CLOCK_SKEW, MAX_TOKEN_BYTES, MAX_TTL, PREFIX,
    };
    static KEYS: OnceLock<SigningKeys> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        SigningKeys::parse(ROLLOUT_TOKEN_KEY, Path::new("fuzz")).expect("the fuzz key parses")
    });
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ROLLOUT_TOKEN_NOW);
    if let Ok(claims) = keys.verify(data, now) {
        assert!(data.len() <= MAX_TOKEN_BYTES && data.starts_with(PREFIX.as_bytes()));
        assert!(valid_id(&claims.rollout));
        assert!(claims.attempt.as_deref().is_none_or(valid_id));
        assert!(claims.expires > ROLLOUT_TOKEN_NOW);
        assert!(claims.expires <= ROLLOUT_TOKEN_NOW + (MAX_TTL + CLOCK_SKEW).as_secs());
    }
}

/// A block (the lines before one holding nothing but CRs) is ambiguous with Content-Length
/// twice, or with both Content-Length and Transfer-Encoding. A line's name is what comes before
/// its first `:`, CRs dropped, in any case; bytes after the last newline end no line.
fn framing_by_lines(wire: &[u8]) -> bool {
    let mut lines: Vec<&[u8]> = wire.split(|&b| b == b'\n').collect();
    lines.pop();
    let (mut lengths, mut encodings, mut ambiguous) = (0usize, 0usize, false);
    for line in lines {
        if line.iter().all(|&b| b == b'\r') {
            ambiguous |= lengths > 1 || (lengths > 0 && encodings > 0);
            (lengths, encodings) = (0, 0);
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name: Vec<u8> = line[..colon]
                .iter()
                .filter(|&&b| b != b'\r')
                .map(u8::to_ascii_lowercase)
                .collect();
            match name.as_slice() {
                b"content-length" => lengths += 1,
                b"transfer-encoding" => encodings += 1,
                _ => {}
            }
        }
    }
    ambiguous
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[], data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed and every past crash, through the same entry as the fuzzer.
    #[test]
    fn seeds_replay() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        for (name, entry) in TARGETS {
            let dir = root.join(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            assert!(files.len() >= 3, "{}: too few seeds", dir.display());
            for file in files {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| entry(&data));
                assert!(outcome.is_ok(), "{} panics", file.display());
            }
        }
    }

    /// The token seeds named `valid*` get past the MAC, so the fuzzer starts from accepted tokens.
    #[test]
    fn the_valid_rollout_token_seeds_verify() {
        use crate::proxy::rollout_token::SigningKeys;
        let keys = SigningKeys::parse(ROLLOUT_TOKEN_KEY, Path::new("fuzz")).unwrap();
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ROLLOUT_TOKEN_NOW);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/rollout_token");
        for name in ["valid", "valid_attempt", "expired", "unknown_kid"] {
            let token = std::fs::read(dir.join(name)).unwrap();
            assert_eq!(
                keys.verify(&token, now).is_ok(),
                name.starts_with("valid"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_framing_model_agrees_on_the_unit_cases() {
        let smuggle = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(framing_by_lines(smuggle));
        assert!(
            !framing_by_lines(&smuggle[..smuggle.len() - 1]),
            "no blank line yet"
        );
        assert!(!framing_by_lines(
            b"POST / HTTP/1.1\r\nX-Content-Length: 2\r\nContent-Length: 2\r\n\r\n"
        ));
        framing_watch(smuggle);
    }

    #[test]
    fn splits_at_the_first_newline() {
        assert_eq!(
            split_line(b"GET\n/v1/models\n"),
            (&b"GET"[..], &b"/v1/models\n"[..])
        );
        assert_eq!(split_line(b"/v1"), (&b""[..], &b"/v1"[..]));
    }
}
