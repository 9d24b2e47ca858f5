//! Key rotation from the CLI against a running daemon: `keys add` prints a key that works at once,
//! `keys list` never shows it, `keys revoke` makes it 401 without a restart, and a bad edit is
//! refused with the file unchanged.

use std::{io::BufReader, net::TcpStream, process::Command};

use proxyguard_tests::{proxyguard_bin, upstream, Daemon};

fn cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap()
}

#[test]
fn add_authenticates_at_once_and_revoke_refuses_without_a_restart() {
    let upstream = upstream::upstream();
    let config = format!(
        "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n"
    );
    let daemon = Daemon::start_with_args(&config, &["--no-kernel"]);
    let listen = daemon.ready["proxy"]["listen"].as_str().unwrap().to_owned();
    let call = |key: &str| {
        let mut conn = BufReader::new(TcpStream::connect(&listen).unwrap());
        upstream::request(&mut conn, key).unwrap()
    };

    let out = cli(&daemon, &["keys", "add", "ci", "--expires", "30d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let key = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the key alone on one line: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reloaded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(key), 200, "a new key works without a restart");
    assert_eq!(call("pgk_not-a-key"), 401);

    let listed = cli(&daemon, &["keys", "list", "--json"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("\"ci\"") && !text.contains(key), "{text}");
    assert!(
        !std::fs::read_to_string(&daemon.config_path)
            .unwrap()
            .contains(key),
        "only the hash is stored"
    );

    // A bad edit is refused and leaves the file as it was.
    let before = std::fs::read_to_string(&daemon.config_path).unwrap();
    let out = cli(&daemon, &["keys", "add", "ci"]);
    assert!(!out.status.success(), "a duplicate name must be refused");
    assert_eq!(
        std::fs::read_to_string(&daemon.config_path).unwrap(),
        before
    );

    let out = cli(&daemon, &["keys", "revoke", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(call(key), 401, "a revoked key is refused without a restart");
}

#[test]
fn revoking_an_admin_key_closes_its_admin_routes_and_leaves_no_name_behind() {
    use std::io::Write;

    let upstream = upstream::upstream();
    let config = format!(
        "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n"
    );
    let daemon = Daemon::start_with_args(&config, &["--no-kernel"]);
    let listen = daemon.ready["proxy"]["listen"].as_str().unwrap().to_owned();
    let admin_call = |key: &str| {
        let mut conn = BufReader::new(TcpStream::connect(&listen).unwrap());
        let head = format!(
            "GET /key/info HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\r\n"
        );
        conn.get_mut().write_all(head.as_bytes()).unwrap();
        upstream::read_response(&mut conn).unwrap()
    };

    let out = cli(&daemon, &["keys", "add", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // A second admin key keeps the admin routes open after the revoke, so the refusal seen
    // below is the revoked key's own (401), not the closed-route 404.
    let out = cli(&daemon, &["keys", "add", "ops2"]);
    assert!(out.status.success());
    let other = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Name them an admin key the way an operator would, then reload.
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    let text = format!(
        "{text}\n[proxy.admin_routes]\n# who may manage LiteLLM\nkeys = [\"ops\", \"ops2\"]\n"
    );
    std::fs::write(&daemon.config_path, text).unwrap();
    let out = cli(&daemon, &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        admin_call(&key),
        200,
        "the admin key reaches an admin route"
    );

    let out = cli(&daemon, &["keys", "revoke", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let after = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(
        !after.contains("\"ops\""),
        "neither [[proxy.keys]] nor proxy.admin_routes.keys names it:\n{after}"
    );
    assert!(
        after.contains("# who may manage LiteLLM"),
        "comments are kept"
    );
    assert!(after.contains("keys = [\"ops2\"]"), "{after}");
    assert_eq!(admin_call(&key), 401, "a revoked admin key is refused");
    assert_eq!(admin_call(&other), 200, "the other admin key still works");
    let mut conn = BufReader::new(TcpStream::connect(&listen).unwrap());
    assert_eq!(upstream::request(&mut conn, &key).unwrap(), 401);
}

/// `keys mint` against a running daemon with no signing key yet: the first mint creates the key
/// file (0600, beside the config), names it in the config and reloads the daemon, so its token
/// works at once on its rollout's path; the output is the token alone on one line; bad ids and
/// TTLs are refused naming the flag, with nothing written.
#[test]
fn mint_prints_one_token_that_works_at_once_and_refuses_bad_input() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    let upstream = upstream::upstream();
    let config = format!(
        "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream}\"\n"
    );
    let daemon = Daemon::start_with_args(&config, &["--no-kernel"]);
    let listen = daemon.ready["proxy"]["listen"].as_str().unwrap().to_owned();
    let call = |token: &str, rollout: &str| {
        let mut conn = BufReader::new(TcpStream::connect(&listen).unwrap());
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let head = format!(
            "POST /rollout/{rollout}/attempt/a1/v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.get_mut().write_all(head.as_bytes()).unwrap();
        upstream::read_response(&mut conn).unwrap()
    };

    let out = cli(
        &daemon,
        &["keys", "mint", "--rollout", "ro-1", "--ttl", "2h"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "the token alone on one line: {stdout}"
    );
    let token = stdout.trim();
    assert!(token.starts_with("pgr1."), "{token}");
    assert!(
        stderr.contains("created") && stderr.contains("reloaded"),
        "{stderr}"
    );
    let key_file = daemon.config_path.with_file_name("rollout-tokens.key");
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(
        text.contains("rollout_tokens") && !text.contains(token),
        "{text}"
    );
    assert_eq!(
        call(token, "ro-1"),
        200,
        "a new token works without a restart"
    );
    assert_eq!(call(token, "ro-2"), 403, "only on its own rollout");

    // The next mint reuses the key and says nothing more.
    let out = cli(&daemon, &["keys", "mint", "--rollout", "ro-2", "--json"]);
    assert!(out.status.success());
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(call(minted["token"].as_str().unwrap(), "ro-2"), 200);

    let before = std::fs::read_to_string(&daemon.config_path).unwrap();
    for (args, flag) in [
        (&["--rollout", "ro/1"][..], "--rollout"),
        (&["--rollout", "ro", "--attempt", ""][..], "--attempt"),
        (&["--rollout", "ro", "--ttl", "31d"][..], "--ttl"),
    ] {
        let out = cli(&daemon, &[&["keys", "mint"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "no token for {args:?}");
    }
    let out = cli(&daemon, &["keys", "mint"]);
    assert!(!out.status.success(), "--rollout is required");
    assert_eq!(
        std::fs::read_to_string(&daemon.config_path).unwrap(),
        before
    );
}
