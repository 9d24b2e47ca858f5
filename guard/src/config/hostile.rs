//! Hostile values for every config field that reaches a third-party parser, each through the
//! whole `Config::parse` (TOML, serde, our checks, the line lookup): none may panic, and each is
//! refused naming its field. Where a value that passes goes on to a library at run time (a regex
//! set, a resolver's name parser), that call runs here too.
//!
//! TLS files are read by `proxy::tls`, whose own table feeds them garbage PEM; `log.level` has its
//! table in `log_level.rs`, integer bounds in `bounds.rs`.

use std::path::Path;

use super::{Config, ConfigError};

/// The field paths of every error `source` gets; `[""]` for a TOML syntax or type error.
fn refused(source: &str) -> Vec<String> {
    match Config::parse(source, Path::new("hostile.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { errors, .. }) => {
            let lines = source.lines().count().max(1);
            for error in &errors {
                assert!(
                    error.line.is_none_or(|l| (1..=lines + 1).contains(&l)),
                    "{error}"
                );
            }
            errors.into_iter().map(|e| e.field).collect()
        }
        Err(other) => panic!("parsing text returned {other}"),
    }
}

/// A TOML basic string holding `value` (escaped, so any text can be written).
fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn assert_refused(table: &str, key: &str, values: &[String], field: &str) {
    for value in values {
        let source = format!("[{table}]\n{key} = {}\n", quoted(value));
        assert_eq!(refused(&source), [field], "{value:?}");
    }
}

fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn toml_itself() {
    let deep = |open: &str, close: &str, n: usize| {
        format!(
            "[log]\nlevel = {}\"info\"{}\n",
            open.repeat(n),
            close.repeat(n)
        )
    };
    let sources = [
        deep("[", "]", 100_000),
        deep("{a = ", "}", 100_000),
        "[log]\nlevel = 99999999999999999999999999999\n".into(),
        "[proxy.limits]\nmax_body_bytes = -1\n".into(),
        "[proxy.limits]\nmax_body_bytes = 1e999\n".into(),
        "[proxy.limits]\nmax_headers = 0x7fffffffffffffffff\n".into(),
        "[proxy]\nlisten = 1979-05-27T07:32:00Z\n".into(),
        "[[[proxy]]]\n".into(),
        "[proxy\n".into(),
        "[proxy]\nupstream = \"a\nb\"\n".into(),
        "[proxy]\nupstream = \"\\uD800\"\n".into(),
        "[proxy]\nupstream = \"\\U0011FFFF\"\n".into(),
        "[log]\nlevel = \"info\"\nlevel = \"info\"\n".into(),
        "[log]\0\n".into(),
        "a.b.c.d.e.f.g = 1\n".repeat(1000),
        format!("{} = 1\n", "k".repeat(100_000)),
        "[proxy.keys]\n".into(),
    ];
    for source in &sources {
        let fields = refused(source);
        assert!(
            !fields.is_empty(),
            "{:?} accepted",
            &source[..source.len().min(80)]
        );
    }
    // Valid, odd as they look.
    for source in [
        "\u{feff}[log]\n",
        "[log]\nlevel = 'info'\n",
        "[log]\r\nlevel = \"info\"\r\n",
    ] {
        assert!(refused(source).is_empty(), "{source:?}");
    }
}

#[test]
fn bytes_that_are_not_utf8_name_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxyguard.toml");
    std::fs::write(&path, b"[log]\nlevel = \"in\xff\xfefo\"\n").unwrap();
    let Err(ConfigError::Invalid { errors, .. }) = Config::load(&path) else {
        panic!("not refused as invalid");
    };
    assert_eq!(errors[0].line, Some(2), "{errors:?}");
    assert!(errors[0].message.contains("UTF-8"), "{errors:?}");
}

#[test]
fn regexes() {
    let mut patterns = owned(&[
        "(",
        ")",
        "[z-a]",
        "a{4294967296}",
        "a{1000}{1000}{1000}",
        "\\p{NotAProperty}",
        "(?=lookahead)",
        "(a)\\1",
        "\\",
        "(?P<>a)",
        "(?<ב",
        "[[:nope:]",
        "\u{0}(",
        "ב(",
        "x{2,1}",
    ]);
    patterns.push(format!("{}a{}", "(".repeat(1000), ")".repeat(1000)));
    patterns.push("\\w{1000}".repeat(100));
    let source = |p: &str| format!("[proxy.content]\ndeny_patterns = [{}]\n", quoted(p));
    for pattern in &patterns {
        assert_eq!(
            refused(&source(pattern)),
            ["proxy.content.deny_patterns[0]"],
            "{pattern:?}"
        );
    }
    // What passes one by one is compiled again as one set at reload: that returns, too.
    let good = owned(&["(?i)ignore (all )?previous", "ב+", "\u{0}", "\\w{50}", "^$"]);
    for pattern in &good {
        assert!(refused(&source(pattern)).is_empty(), "{pattern:?}");
    }
    assert!(regex::RegexSet::new(&good).is_ok());
    let many = vec!["\\w{100}".to_owned(); 200];
    let _ = regex::RegexSet::new(&many);
}

#[test]
fn upstream_urls() {
    let mut urls = owned(&[
        "",
        "http://",
        "http://[::1",
        "http://[",
        "http://ב:1",
        "http://\u{0}:1",
        "http://a:1/path",
        "http://:80",
        "//a:1",
        "https://a:1",
        "http://a b:1",
        "http://%zz:1",
        "\t http://127.0.0.1:4000",
        "ftp://a:1",
        // A port past 65535 would be dropped by the client, which then dials port 80.
        "http://a:99999",
        "http://a:",
    ]);
    urls.push(format!("http://{}:1", "a".repeat(70_000)));
    assert_refused("proxy", "upstream", &urls, "proxy.upstream");
}

#[test]
fn cidrs() {
    let mut nets = owned(&[
        "10.0.0.0/33",
        "::/129",
        "1.2.3.4/",
        "/8",
        "ב/8",
        "1.2.3.4/-1",
        "1.2.3.4/8/8",
        "999.1.1.1/8",
        "[::1]/8",
        "1.2.3.4 /8",
        "1.2.3.4/٣",
        "",
        "::ffff:1.2.3.4.5/128",
    ]);
    nets.push(format!("{}/8", "1".repeat(10_000)));
    for net in &nets {
        let list = |table: &str, key: &str| format!("[{table}]\n{key} = [{}]\n", quoted(net));
        for source in [
            list("xdp", "allow"),
            list("xdp", "deny"),
            list("egress", "dns"),
            format!("[[bind.rules]]\nport = 4000\nallow = [{}]\n", quoted(net)),
        ] {
            assert_eq!(refused(&source), [""], "{net:?} in {source}");
        }
    }
}

#[test]
fn egress_targets_and_host_names() {
    let mut targets = owned(&[
        "ב.com:443",
        "xn--ב:443",
        "a.com",
        "a.com:",
        ".com:443",
        "a..com:443",
        "a.com:443:1",
        "a_b.com:443",
        "a.com:0",
        "a.com:65536",
        "a.com:٤٤٣",
        "[::1]:443x",
        "[ב]:443",
        "[::1",
        "-a.com:443",
        "a-.com:443",
        "10.0.0.0/33:443",
        "",
        "\u{0}:1",
    ]);
    targets.push(format!("{}.com:443", "a".repeat(64)));
    targets.push(format!("{}:443", "a.".repeat(127) + "a"));
    for target in &targets {
        let source = format!("[egress]\nallow = [{}]\n", quoted(target));
        assert_eq!(refused(&source), [""], "{target:?}");
    }
    // Host names that pass go to the resolver, which parses them again.
    for target in [
        "a-b.com:443",
        "1.com:443",
        "123:443",
        "A.COM:1",
        &format!("{}.com:443", "a".repeat(63)),
    ] {
        let source = format!("[egress]\nallow = [{}]\n", quoted(target));
        assert!(refused(&source).is_empty(), "{target:?}");
        let host = target.rsplit_once(':').unwrap().0;
        // What `lookup_ip` does with it first.
        let name = hickory_resolver::proto::rr::IntoName::into_name(host);
        assert!(name.is_ok(), "{host}: {name:?}");
    }
}

#[test]
fn key_times() {
    let times = owned(&[
        "",
        "soon",
        "2027-02-30T00:00:00Z",
        "2027-13-01T00:00:00Z",
        "0000-00-00T00:00:00Z",
        "2027-01-01Tב0:00:00Z",
        "ב027-01-01T00:00:00Z",
        "2027-01-01T00:00:00.ב",
        "2027-01-01T00:00:00+ב",
        "2027-01-01T00:00:00+99:99",
        "9999999999-01-01T00:00:00Z",
        "2027-01-01T24:00:60Z",
        "2027-01-01T00:00:00\u{0}",
    ]);
    let key = |time: &str| {
        format!(
            "[[proxy.keys]]\nname = \"ci\"\nsha256 = \"{}\"\nexpires = {}\n",
            "a".repeat(64),
            quoted(time)
        )
    };
    for time in &times {
        assert_eq!(refused(&key(time)), ["proxy.keys[0].expires"], "{time:?}");
    }
    // Digits past nanoseconds are dropped, however many.
    let long = format!("2027-01-01T00:00:00.{}Z", "9".repeat(10_000));
    assert!(refused(&key(&long)).is_empty());
}

#[test]
fn header_names_and_paths() {
    let mut names = owned(&["", "ב", "a b", "a:b", "\u{0}", "a\r\nb"]);
    names.push("a".repeat(70_000));
    for name in &names {
        let source = format!("[proxy.headers]\nreserved = [{}]\n", quoted(name));
        assert_eq!(refused(&source), ["proxy.headers.reserved[0]"], "{name:?}");
    }
    // Paths reach the file system only: a NUL byte or a huge name is an error there.
    for path in ["a\u{0}b", "/nonexistent/\u{0}", &"/x".repeat(10_000)] {
        assert_refused(
            "proxy",
            "upstream_key_file",
            &[path.to_owned()],
            "proxy.upstream_key_file",
        );
        let source = format!(
            "[proxy.tls]\ncert = {}\nkey = {}\n",
            quoted(path),
            quoted(path)
        );
        assert_eq!(
            refused(&source),
            ["proxy.tls.cert", "proxy.tls.key"],
            "{path:?}"
        );
    }
}
