//! The shipped alert rules and dashboard name only metrics a running daemon (both halves) really
//! serves, so a renamed metric or kernel counter fails here instead of silently breaking an
//! alert; and `proxyguard top --once` shows the kernel half's counters and events.

use std::{
    collections::BTreeSet,
    io::{BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    process::Command,
};

use nix::errno::Errno;
use proxyguard_tests::{l7::new_key, net, proxyguard_bin, require_root, upstream, Daemon};
use serde_json::Value;

/// Compiled in: this test also runs in the VM, which has the test binaries but not the repository.
const RULES: &str = include_str!("../../share/proxyguard.rules.yml");
const DASHBOARD: &str = include_str!("../../share/grafana-dashboard.json");

/// A bind rule on `port` (loopback only), and the proxy in front of `upstream` with key `alice`,
/// model `m` priced and a spike rule that suspends: one large request meters tokens and spend,
/// raises a spike and suspends alice, so the budget metrics are served with samples.
fn config(dir: &std::path::Path, port: u16, upstream: u16, hash: &str) -> String {
    let key_file = dir.join("upstream.key");
    std::fs::write(&key_file, "sk-upstream-metrics\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[bind]\nmode = \"enforce\"\n\n[[bind.rules]]\nport = {port}\nallow = [\"127.0.0.1/32\"]\n\n\
         [proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         upstream = \"http://127.0.0.1:{upstream}\"\nupstream_key_file = \"{}\"\n\n\
         [[proxy.keys]]\nname = \"alice\"\nsha256 = \"{hash}\"\n\n\
         [proxy.pricing.models.\"m\"]\ninput = 1000.0\noutput = 1000.0\n\n\
         [proxy.usage.spike]\nfloor = 50\nfactor = 1.0\naction = \"suspend\"\n",
        key_file.display()
    )
}

/// A chat completion of model `m` with `key` and a prompt of `chars` characters (about a token
/// per four, as the guard estimates an answer without usage); its status.
fn chat(listen: &str, key: &str, chars: usize) -> u16 {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "x".repeat(chars)}],
    })
    .to_string();
    let mut stream = BufReader::new(TcpStream::connect(listen).unwrap());
    write!(
        stream.get_mut(),
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    upstream::read_response(&mut stream).unwrap()
}

/// `GET /metrics` on the admin listener.
fn scrape(admin: &str) -> String {
    let mut stream = TcpStream::connect(admin).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// Every sample name the exposition declares (by its `# TYPE` lines) or holds.
fn served_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The `proxyguard_*` metric names in `text`.
fn named_metrics(text: &str) -> BTreeSet<String> {
    text.match_indices("proxyguard_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The values a selector in `text` asks of `label` (`label="a"` or `label=~"a|b"`).
fn label_values(text: &str, label: &str) -> BTreeSet<String> {
    let mut values = BTreeSet::new();
    for op in ["=\"", "=~\""] {
        let needle = format!("{label}{op}");
        for (at, _) in text.match_indices(&needle) {
            let rest = &text[at + needle.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            values.extend(rest[..end].split('|').map(str::to_owned));
        }
    }
    values
}

/// Every PromQL expression of the dashboard (panel targets and template queries).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

#[test]
fn kernel_every_metric_the_rules_and_dashboard_name_is_served() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let port = net::free_port();
    let (alice, hash) = new_key();
    let mut daemon = Daemon::start(&config(dir.path(), port, upstream::upstream(), &hash));
    let proxy = &daemon.ready["proxy"];
    let listen = proxy["listen"].as_str().unwrap().to_owned();
    let admin = proxy["admin"].as_str().unwrap().to_owned();

    // Traffic for both halves: allowed and refused requests, and a denied bind. alice's first
    // request (about 100 tokens, nothing before) is a spike that suspends her.
    assert_eq!(chat(&listen, &alice, 400), 200);
    for key in [alice.as_str(), "sk-not-a-key"] {
        let mut stream = BufReader::new(TcpStream::connect(&listen).unwrap());
        upstream::request(&mut stream, key).unwrap();
    }
    assert_eq!(
        net::try_bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))),
        Err(Errno::EPERM)
    );
    daemon.wait_for(|e| e["kind"] == "bind_denied").unwrap();
    // The counters reach /metrics from the daemon's loop; wait until the denial has.
    let mut text = scrape(&admin);
    for _ in 0..100 {
        if text.contains(r#"proxyguard_kernel_events{program="bind",counter="denied"} 1"#) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        text = scrape(&admin);
    }
    assert!(
        text.contains(r#"proxyguard_kernel_events{program="bind",counter="denied"} 1"#),
        "{text}"
    );

    // The budget metrics the rules and dashboard name have samples, not only their `# TYPE`.
    for sample in [
        r#"proxyguard_tokens_total{key="alice",model="m",direction="in"} "#,
        r#"proxyguard_spend_usd_total{key="alice",model="m"} "#,
        r#"proxyguard_usage_spikes_total{key="alice"} 1"#,
        r#"proxyguard_key_suspended{key="alice"} 1"#,
    ] {
        assert!(text.contains(sample), "no {sample} in:\n{text}");
    }

    let served = served_names(&text);
    let rules = RULES;
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let exprs = dashboard_exprs(&dashboard).join("\n");
    for (source, named) in [
        ("rules", named_metrics(rules)),
        ("dashboard", named_metrics(&exprs)),
    ] {
        assert!(named.len() >= 3, "{source}: {named:?}");
        let missing: Vec<&String> = named.iter().filter(|n| !served.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "the {source} name metrics /metrics does not serve: {missing:?}\nserved: {served:?}"
        );
    }

    // The kernel counters they select by label exist too.
    let kernel: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("proxyguard_kernel_events{"))
        .collect();
    for label in ["program", "counter"] {
        let asked: BTreeSet<String> = label_values(rules, label)
            .into_iter()
            .chain(label_values(&exprs, label))
            .collect();
        assert!(!asked.is_empty(), "{label}");
        for value in asked {
            assert!(
                kernel
                    .iter()
                    .any(|l| l.contains(&format!("{label}=\"{value}\""))),
                "no kernel counter has {label}=\"{value}\":\n{}",
                kernel.join("\n")
            );
        }
    }

    // One row per half in the dashboard.
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(rows, ["L7 proxy", "Kernel"]);

    // top sees the kernel half: the denial among the counters and the events.
    let out = Command::new(proxyguard_bin())
        .args(["top", "--once", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(frame.contains("kernel half on  L7 proxy on"), "{frame}");
    // And the keys' tokens and spend, the suspended one marked.
    assert!(
        frame.contains("tokens") && frame.contains("spend $"),
        "{frame}"
    );
    assert!(
        frame
            .lines()
            .any(|l| l.trim_start().starts_with("alice ") && l.trim_end().ends_with(" suspended")),
        "{frame}"
    );
    let kernel_rows: Vec<Vec<&str>> = frame
        .lines()
        .skip_while(|l| *l != "Kernel")
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        kernel_rows.contains(&vec!["bind", "denied", "0", "1"]),
        "{frame}"
    );
    assert!(
        frame
            .lines()
            .any(|l| l.contains(" bind_denied ") && l.contains(&format!("port={port}"))),
        "{frame}"
    );
}
