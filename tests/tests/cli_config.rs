//! The config commands as operators' scripts use them: files, modes and exit codes
//! (0 ok, 1 runtime failure, 2 usage or config error).

use std::{os::unix::fs::PermissionsExt, process::Command};

use proxyguard_tests::proxyguard_bin;

fn proxyguard(args: &[&str]) -> std::process::Output {
    Command::new(proxyguard_bin())
        .args(args)
        .env_remove("PROXYGUARD_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn init_writes_a_private_file_once_and_check_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/proxyguard.toml");
    let path_text = path.to_str().unwrap();

    let out = proxyguard(&["config", "init", "--path", path_text]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let edited = "# mine\n";
    std::fs::write(&path, edited).unwrap();
    let out = proxyguard(&["config", "init", "--path", path_text]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited,
        "a refused init must not touch the file"
    );

    assert_eq!(
        proxyguard(&["config", "init", "--force", "--path", path_text])
            .status
            .code(),
        Some(0)
    );
    let out = proxyguard(&["config", "check", "--config", path_text]);
    assert_eq!(out.status.code(), Some(0));
    let out = proxyguard(&["config", "check", "--json", "--config", path_text]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true);
}

#[test]
fn check_names_file_line_field_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[bind]\nmode = \"enforce\"\n\n[[bind.rules]]\nport = 0\n\n[xdp]\nrate_per_sec = 0\nenforce_harder = true\n").unwrap();
    let out = proxyguard(&["config", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(path.to_str().unwrap()), "{stderr}");
    // A parse error (the unknown field) comes first, with its line.
    assert!(
        stderr.contains("line 9") && stderr.contains("enforce_harder"),
        "{stderr}"
    );

    std::fs::write(
        &path,
        "[bind]\nmode = \"enforce\"\n\n[[bind.rules]]\nport = 0\n\n[xdp]\nrate_per_sec = 0\n",
    )
    .unwrap();
    let out = proxyguard(&["config", "check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 5: bind.rules[0].port"), "{stderr}");
    assert!(stderr.contains("line 8: xdp.rate_per_sec"), "{stderr}");
}

#[test]
fn missing_config_and_unreachable_daemon_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = proxyguard(&["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!(
            "[control]\nsocket = \"{}\"\n",
            dir.path().join("none.sock").display()
        ),
    )
    .unwrap();
    let out = proxyguard(&["status", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `proxyguard run` running"));

    let out = proxyguard(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn init_takes_the_upstream_kind_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["litellm", "agent-lightning", "openai"] {
        let path = dir.path().join(format!("{kind}.toml"));
        let path_text = path.to_str().unwrap();
        let out = proxyguard(&[
            "config",
            "init",
            "--path",
            path_text,
            "--upstream-kind",
            kind,
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(&format!("upstream_kind = \"{kind}\"")),
            "{kind}"
        );
        let out = proxyguard(&["config", "check", "--config", path_text]);
        assert_eq!(out.status.code(), Some(0), "{kind}");
    }
    let path = dir.path().join("other.toml");
    let out = proxyguard(&[
        "config",
        "init",
        "--path",
        path.to_str().unwrap(),
        "--upstream-kind",
        "vllm",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent-lightning"), "{stderr}");
    assert!(!path.exists());

    // A bad [[proxy.routes]] entry is a config error with its file, line and field.
    let bad = dir.path().join("routes.toml");
    std::fs::write(
        &bad,
        "[bind]\nenabled = false\n\n[proxy]\nupstream_kind = \"openai\"\n\n[[proxy.routes]]\nname = \"r\"\npath = \"/v1/{x:uuid}\"\nmethods = [\"POST\"]\nshape = \"chat\"\n",
    )
    .unwrap();
    let out = proxyguard(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 9: proxy.routes[0].path") && stderr.contains("`uuid`"),
        "{stderr}"
    );
}
