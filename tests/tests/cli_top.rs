//! `proxyguard top` as a person uses it: in a terminal (tmux), against a running daemon, counting
//! the requests it sees, redrawing when the pane is resized, and leaving a sane terminal behind
//! on `q`, Ctrl-C and a lost daemon. `--once` for scripts. And the shipped alert rules pass
//! `promtool check rules`, and `promtool test rules` shows each firing when it should.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use proxyguard_tests::{l7::Guard, proxyguard_bin, upstream};
use serde_json::Value;

const UPSTREAM_KEY: &str = "sk-upstream-top";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// A guard in front of a plain upstream, with keys `alice` and `bob`.
fn guard() -> Guard {
    Guard::start(upstream::upstream(), UPSTREAM_KEY, &["alice", "bob"], "")
}

/// `n` chat completions with `key` through `guard`; their statuses.
fn requests(guard: &Guard, key: &str, n: usize) -> Vec<u16> {
    let addr = guard.base.trim_start_matches("http://");
    (0..n)
        .map(|_| {
            let mut stream = BufReader::new(TcpStream::connect(addr).unwrap());
            upstream::request(&mut stream, key).unwrap()
        })
        .collect()
}

fn top(config: &Path, args: &[&str]) -> Output {
    Command::new(proxyguard_bin())
        .arg("top")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// A tmux server of the test's own (its own socket), with one shell in a pane of the given size.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16) -> Tmux {
        let tmux = Tmux {
            socket: format!("proxyguard-{name}-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "env PS1='$ ' bash --norc --noprofile",
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `line` and Enter into the pane.
    fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "t", "-l", line]);
        self.run(&["send-keys", "-t", "t", "Enter"]);
    }

    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", "t", key]);
    }

    fn screen(&self) -> Vec<String> {
        self.run(&["capture-pane", "-p", "-t", "t"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn alternate_screen(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "t", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Waits (within a generous bound) until the pane shows what `pred` wants; the last screen.
    fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the pane never showed {what}:\n{}",
                screen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts `proxyguard top` in the pane's shell; the shell reports its exit status after.
    fn start_top(&self, config: &Path) {
        self.type_line(&format!(
            "{} top --config {}; echo \"top exited $?\"",
            proxyguard_bin().display(),
            config.display()
        ));
        self.wait_for("top's view", |s| {
            s.iter().any(|l| l.contains("Requests")) && s.iter().any(|l| l.contains("every 1s"))
        });
        assert!(self.alternate_screen(), "top draws on the alternate screen");
    }

    /// After top exited: the shell is back on the normal screen and the terminal is in cooked
    /// mode with echo, as `stty -a` in the pane reports. Returns what the pane showed when top
    /// had exited.
    fn assert_sane(&self, status: &str) -> String {
        self.wait_for(&format!("`top exited {status}`"), |s| {
            s.iter()
                .any(|l| l.contains(&format!("top exited {status}")))
        });
        let shown = self.run(&["capture-pane", "-p", "-S", "-", "-t", "t"]);
        assert!(!self.alternate_screen(), "top left the alternate screen");
        self.run(&["clear-history", "-t", "t"]);
        self.type_line("clear; stty -a | tr ';' '\\n' | tr ' ' '\\n' | grep -E '^-?(icanon|echo|isig|icrnl|opost)$' | sort | tr '\\n' ' '; echo STTY''-END");
        let screen = self.wait_for("stty's answer", |s| {
            s.iter().any(|l| l.trim_end().ends_with("STTY-END"))
        });
        let line = screen
            .iter()
            .find(|l| l.trim_end().ends_with("STTY-END"))
            .unwrap();
        let modes: Vec<&str> = line.split_whitespace().collect();
        for mode in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(
                modes.contains(&mode) && !modes.contains(&format!("-{mode}").as_str()),
                "the terminal is left without {mode}: {line}"
            );
        }
        shown
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The cells after `label` on the first line holding it, up to the box's edge.
fn row<'a>(screen: &'a [String], label: &str) -> Vec<&'a str> {
    screen
        .iter()
        .find_map(|line| {
            let at = line.find(label)?;
            let rest = &line[at + label.len()..];
            Some(
                rest.split('│')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// The last cell of `label`'s row: the total.
fn total(screen: &[String], label: &str) -> Option<String> {
    row(screen, label).last().map(|s| (*s).to_owned())
}

/// A key's request total: the second cell after its name (its requests per second first; the
/// tokens, spend and state columns follow).
fn key_requests(screen: &[String], key: &str) -> Option<String> {
    row(screen, key).get(1).map(|s| (*s).to_owned())
}

#[test]
fn top_in_a_terminal_counts_redraws_on_resize_and_quits_cleanly() {
    let guard = guard();
    let alice = guard.key("alice").to_owned();
    assert_eq!(requests(&guard, &alice, 3), [200; 3]);
    assert_eq!(requests(&guard, "sk-not-a-key", 2), [401; 2]);

    let tmux = Tmux::start("top", 120, 45);
    tmux.start_top(&guard.daemon.config_path);
    let screen = tmux.wait_for("3 allowed and 2 refused", |s| {
        total(s, "allowed").as_deref() == Some("3")
            && total(s, "refused bad_key").as_deref() == Some("2")
    });
    assert!(
        screen
            .iter()
            .any(|l| l.contains("Requests") && l.contains("Kernel")),
        "at 120 columns the sections sit side by side:\n{}",
        screen.join("\n")
    );
    assert_eq!(
        key_requests(&screen, "alice").as_deref(),
        Some("3"),
        "{screen:#?}"
    );
    assert_eq!(row(&screen, "127.0.0.1")[..2], ["l7", "2"], "{screen:#?}");
    assert!(
        screen.iter().any(|l| l.contains("reason=bad_key")),
        "the refusals are among the security events:\n{}",
        screen.join("\n")
    );
    assert!(
        screen
            .iter()
            .any(|l| l.contains("the kernel half is off (--no-kernel)")),
        "{screen:#?}"
    );

    // Live: requests made while it runs are counted at the next refresh.
    let bob = guard.key("bob").to_owned();
    assert_eq!(requests(&guard, &bob, 2), [200; 2]);
    let screen = tmux.wait_for("5 allowed", |s| total(s, "allowed").as_deref() == Some("5"));
    assert_eq!(
        key_requests(&screen, "bob").as_deref(),
        Some("2"),
        "{screen:#?}"
    );
    assert!(
        row(&screen, "Upstream latency").is_empty() || screen.iter().any(|l| l.contains("p50")),
        "{screen:#?}"
    );

    // Narrow and tall: the sections stack, all still there.
    tmux.run(&["resize-window", "-t", "t", "-x", "70", "-y", "70"]);
    let screen = tmux.wait_for("the stacked layout", |s| {
        s.first().is_some_and(|l| l.chars().count() <= 70)
            && s.iter().any(|l| l.contains("Requests"))
            && s.iter().any(|l| l.contains("Kernel"))
            && !s
                .iter()
                .any(|l| l.contains("Requests") && l.contains("Kernel"))
    });
    assert_eq!(
        total(&screen, "allowed").as_deref(),
        Some("5"),
        "{screen:#?}"
    );
    assert!(screen.iter().all(|l| l.chars().count() <= 70));

    tmux.key("q");
    let _ = tmux.assert_sane("0");
}

#[test]
fn ctrl_c_sigterm_and_a_lost_daemon_leave_a_sane_terminal() {
    let guard = guard();
    let tmux = Tmux::start("lost", 100, 40);
    tmux.start_top(&guard.daemon.config_path);
    tmux.key("C-c");
    let _ = tmux.assert_sane("0");

    // Killed (SIGTERM, as `kill` or a session's end sends it).
    tmux.run(&["clear-history", "-t", "t"]);
    tmux.type_line("clear");
    tmux.start_top(&guard.daemon.config_path);
    let shell = tmux.run(&["display-message", "-p", "-t", "t", "#{pane_pid}"]);
    let shell = shell.trim();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
    let top_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(top_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tmux.assert_sane("0");

    tmux.run(&["clear-history", "-t", "t"]);
    tmux.type_line("clear");
    tmux.start_top(&guard.daemon.config_path);
    let _ = guard.daemon.stop();
    let scrollback = tmux.assert_sane("1");
    assert!(
        scrollback.contains("`proxyguard top` stopped: the daemon went away"),
        "top says why it stopped:\n{scrollback}"
    );
}

#[test]
fn once_prints_one_plain_frame_and_json() {
    let guard = guard();
    let alice = guard.key("alice").to_owned();
    assert_eq!(requests(&guard, &alice, 4), [200; 4]);
    assert_eq!(requests(&guard, "sk-not-a-key", 1), [401]);
    let config = &guard.daemon.config_path;

    let out = top(config, &["--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[0].starts_with("proxyguard pid "), "{text}");
    assert!(lines[0].contains("kernel half off  L7 proxy on"), "{text}");
    assert_eq!(total(&lines, "allowed").as_deref(), Some("4"), "{text}");
    assert_eq!(
        total(&lines, "refused bad_key").as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        key_requests(&lines, "alice").as_deref(),
        Some("4"),
        "{text}"
    );
    assert!(text.contains("\nUpstream latency\n  over"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "plain text, no escape sequences: {text:?}"
    );

    let out = top(config, &["--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = frame["requests"]["rows"].as_array().unwrap();
    assert_eq!(rows[0][0], "allowed");
    assert_eq!(rows[0][2], "4");
    assert_eq!(frame["refused"]["rows"][0][0], "127.0.0.1");
    assert_eq!(frame["latency"]["rows"][0][3], "4", "{frame}");

    // Without a terminal and without --once it says what to do instead.
    let out = top(config, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("proxyguard top --once"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A daemon that is not there: a clear error, not a hang. (The config outlives the daemon's
    // temp dir in a copy; the files it names are the guard's, still there.)
    let kept = tempfile::tempdir().unwrap();
    let copy = kept.path().join("proxyguard.toml");
    std::fs::copy(config, &copy).unwrap();
    let daemon = guard.daemon;
    let _ = daemon.stop();
    let out = top(&copy, &["--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A chat completion of model `m` with `key` and a prompt of `chars` characters (about a token
/// per four, as the guard estimates an answer without usage, like the plain upstream's); its
/// status.
fn chat(guard: &Guard, key: &str, chars: usize) -> u16 {
    let body = serde_json::json!({
        "model": "m",
        "messages": [{"role": "user", "content": "x".repeat(chars)}],
    })
    .to_string();
    let addr = guard.base.trim_start_matches("http://");
    let mut stream = BufReader::new(TcpStream::connect(addr).unwrap());
    write!(
        stream.get_mut(),
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    upstream::read_response(&mut stream).unwrap()
}

/// `top --once --json`'s key rows, by name.
fn key_rows(config: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let out = top(config, &["--once", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame: Value = serde_json::from_slice(&out.stdout).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    };
    (
        strings(&frame["keys"]["header"]),
        frame["keys"]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(strings)
            .collect(),
    )
}

#[test]
fn top_shows_tokens_and_spend_per_key_and_a_suspended_key_first() {
    // Model m is priced (1000 dollars a million tokens: a token is a tenth of a cent), and a key
    // using over 50 tokens in 5 minutes with nothing before is suspended.
    let guard = Guard::start(
        upstream::upstream(),
        UPSTREAM_KEY,
        &["alice", "bob"],
        "\n[proxy.pricing.models.\"m\"]\ninput = 1000.0\noutput = 1000.0\n\n\
         [proxy.usage.spike]\nfloor = 50\nfactor = 100.0\naction = \"suspend\"\n",
    );
    let config = &guard.daemon.config_path;
    let (alice, bob) = (guard.key("alice").to_owned(), guard.key("bob").to_owned());
    // bob: 4 small requests (the prompt "hi", one token each).
    assert_eq!(requests(&guard, &bob, 4), [200; 4]);
    // alice: one of 100 tokens, a spike.
    assert_eq!(chat(&guard, &alice, 400), 200);

    let (header, rows) = key_rows(config);
    assert_eq!(
        header,
        ["key", "req/s", "requests", "tok/s", "tokens", "$/h", "spend $", "state"]
    );
    let by_name = |rows: &[Vec<String>], name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {name}: {rows:?}"))
    };
    let first = &rows[0];
    assert_eq!(
        (
            first[0].as_str(),
            first[2].as_str(),
            first[4].as_str(),
            first[6].as_str(),
            first[7].as_str()
        ),
        ("alice", "1", "100", "0.1000", "suspended"),
        "the suspended key first, its tokens and spend: {rows:?}"
    );
    let bob_row = by_name(&rows, "bob");
    assert_eq!(
        (
            bob_row[2].as_str(),
            bob_row[4].as_str(),
            bob_row[6].as_str(),
            bob_row[7].as_str()
        ),
        ("4", "4", "0.0040", ""),
        "{rows:?}"
    );

    // alice is refused now, and listed as suspended until resumed.
    assert_eq!(requests(&guard, &alice, 1), [403]);
    let out = Command::new(proxyguard_bin())
        .args(["keys", "resume", "alice", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rows) = key_rows(config);
    assert_eq!(by_name(&rows, "alice")[7], "", "{rows:?}");
    assert_eq!(requests(&guard, &alice, 1), [200]);

    // The plain frame has the same columns.
    let out = top(config, &["--once"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("  key    req/s  requests  tok/s  tokens  $/h"),
        "{text}"
    );
}

/// The alert names of a rules file.
fn text_alerts(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// Debian's prometheus package has promtool; `cargo xtask setup` installs it.
#[test]
fn promtool_accepts_the_shipped_rules() {
    let rules = repo_file("share/proxyguard.rules.yml");
    let out = match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => out,
        Err(err) => {
            println!("skipped: promtool is not installed ({err}); `cargo xtask setup` installs the prometheus package");
            return;
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS: 11 rules found"), "{said}");

    // And each alert fires on the series it is about (and a steady rate of denials does not).
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo_file("tests/promtool/proxyguard.rules.test.yml"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules: {said}");
    assert!(said.contains("SUCCESS"), "{said}");
    let cases =
        std::fs::read_to_string(repo_file("tests/promtool/proxyguard.rules.test.yml")).unwrap();
    for alert in text_alerts(&std::fs::read_to_string(&rules).unwrap()) {
        assert!(
            cases.contains(&format!("alertname: {alert}\n")),
            "{alert} has no case in tests/promtool/proxyguard.rules.test.yml"
        );
    }

    // Every rule has a summary and a runbook that names the proxyguard command to run next.
    let text = std::fs::read_to_string(&rules).unwrap();
    let alerts = text_alerts(&text).len();
    assert_eq!(alerts, 11);
    assert_eq!(text.matches("\n          summary: ").count(), alerts);
    let runbooks: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
        .collect();
    assert_eq!(runbooks.len(), alerts);
    for runbook in runbooks {
        assert!(runbook.contains("`proxyguard "), "{runbook}");
    }
}
