//! `proxyguard egress allow|deny|list` edit the config in place: comments kept, mode 0600,
//! invalid targets refused with exit 2 and the file unchanged.

use std::{os::unix::fs::PermissionsExt, process::Command};

use proxyguard_tests::proxyguard_bin;

fn proxyguard(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn allow_deny_and_list_edit_the_file_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    // No daemon answers this socket: the edit still lands, and says so.
    std::fs::write(
        &config,
        format!(
            "# operator's note\n[control]\nsocket = \"{}\"\n",
            dir.path().join("none.sock").display()
        ),
    )
    .unwrap();

    let out = proxyguard(&config, &["egress", "allow", "api.example.com:443"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("next start"));
    assert!(
        proxyguard(&config, &["egress", "allow", "[2001:db8::/32]:443"])
            .status
            .success()
    );
    assert!(proxyguard(&config, &["egress", "allow", "10.1.2.3"])
        .status
        .success());
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with("# operator's note\n"), "{text}");
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let listed = proxyguard(&config, &["egress", "list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        json["allow"],
        serde_json::json!(["api.example.com:443", "[2001:db8::/32]:443", "10.1.2.3/32"])
    );

    // `10.1.2.3/32` is the same entry as `10.1.2.3`.
    assert!(proxyguard(&config, &["egress", "deny", "10.1.2.3/32"])
        .status
        .success());
    let out = proxyguard(&config, &["egress", "deny", "10.9.9.9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on the allow-list"));

    let before = std::fs::read_to_string(&config).unwrap();
    let out = proxyguard(&config, &["egress", "allow", "api.example.com"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a host name needs a port"));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before,
        "a refused edit must not touch the file"
    );
}
