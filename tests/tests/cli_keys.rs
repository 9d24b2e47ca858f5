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
