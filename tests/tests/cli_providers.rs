//! `proxyguard providers add|list|remove` edit `[[providers.routes]]` in place: comments kept,
//! mode 0600, the result validated as the daemon would (key file and CA file read), a refused
//! edit leaving the file byte-identical, and a key never printed.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use proxyguard_tests::proxyguard_bin;

fn proxyguard(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn add_list_remove_round_trip_keeps_comments_and_never_shows_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    let key = dir.path().join("openai.key");
    std::fs::write(&key, "sk-SECRET-provider-key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let original = format!(
        "# operator's note\n[control]\nsocket = \"{}\" # no daemon here\n\n[providers]\n# the gateway\nlisten = \"127.0.0.1:8089\"\n",
        dir.path().join("none.sock").display()
    );
    std::fs::write(&config, &original).unwrap();

    let key_arg = key.to_str().unwrap();
    let out = proxyguard(
        &config,
        &[
            "providers",
            "add",
            "openai",
            "--base-url",
            "https://api.openai.com/v1",
            "--key-file",
            key_arg,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("http://127.0.0.1:8089/openai"), "{stdout}");
    assert!(stdout.contains("next start"), "{stdout}");
    let out = proxyguard(
        &config,
        &[
            "providers",
            "add",
            "anthropic",
            "--base-url",
            "https://api.anthropic.com",
            "--key-file",
            key_arg,
            "--auth",
            "x-api-key",
            "--header",
            "anthropic-version: 2023-06-01",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&original), "{text}");
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let listed = proxyguard(&config, &["providers", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let names: Vec<&str> = json["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["openai", "anthropic"]);
    assert_eq!(json["providers"][1]["auth"], "x-api-key");
    assert_eq!(
        json["providers"][1]["headers"],
        serde_json::json!(["anthropic-version"])
    );
    let human = proxyguard(&config, &["providers", "list"]);
    for out in [&listed, &human] {
        assert!(!String::from_utf8_lossy(&out.stdout).contains("SECRET"));
    }

    // A second provider of the same name is refused, the file untouched.
    let before = std::fs::read(&config).unwrap();
    let out = proxyguard(
        &config,
        &[
            "providers",
            "add",
            "openai",
            "--base-url",
            "https://x.example",
            "--key-file",
            key_arg,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("already"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&config).unwrap(), before);

    let out = proxyguard(&config, &["providers", "remove", "openai"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = proxyguard(&config, &["providers", "remove", "openai"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("providers list"), "{}", stderr(&out));
    let out = proxyguard(&config, &["providers", "remove", "anthropic"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.starts_with(&original), "{text}");
    assert!(
        !text.contains("openai") && !text.contains("anthropic"),
        "{text}"
    );
}

#[test]
fn refused_edits_leave_the_file_byte_identical_and_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    let original = format!(
        "# keep me\n[control]\nsocket = \"{}\"\n",
        dir.path().join("none.sock").display()
    );
    std::fs::write(&config, &original).unwrap();
    let missing = dir.path().join("absent.key");
    let loose = dir.path().join("loose.key");
    std::fs::write(&loose, "sk-SECRET-loose\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o640)).unwrap();
    let world = dir.path().join("world.key");
    std::fs::write(&world, "sk-SECRET-world\n").unwrap();
    std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o604)).unwrap();
    let good = dir.path().join("good.key");
    std::fs::write(&good, "sk-SECRET-good\n").unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();

    let cases: [(&[&str], &[&str]); 5] = [
        (
            &[
                "--base-url",
                "https://api.openai.com/v1",
                "--key-file",
                missing.to_str().unwrap(),
            ],
            &[
                "providers.routes[0].key_file",
                "absent.key",
                "install -m 600",
            ],
        ),
        (
            &[
                "--base-url",
                "https://api.openai.com/v1",
                "--key-file",
                loose.to_str().unwrap(),
            ],
            &["providers.routes[0].key_file", "loose.key", "chmod 600"],
        ),
        (
            &[
                "--base-url",
                "https://api.openai.com/v1",
                "--key-file",
                world.to_str().unwrap(),
            ],
            &["providers.routes[0].key_file", "world.key", "chmod 600"],
        ),
        (
            &[
                "--base-url",
                "http://api.openai.com/v1",
                "--key-file",
                good.to_str().unwrap(),
            ],
            &["providers.routes[0].base_url", "https://"],
        ),
        (
            &[
                "--base-url",
                "https://api.openai.com/v1",
                "--key-file",
                good.to_str().unwrap(),
                "--header",
                "authorization: Bearer x",
            ],
            &["providers.routes[0].headers.authorization", "key_file"],
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["providers", "add", "openai"];
        full.extend_from_slice(args);
        let out = proxyguard(&config, &full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(config.to_str().unwrap()), "{err}");
        for part in expected {
            assert!(err.contains(part), "{args:?}: {part} not in {err}");
        }
        assert!(!err.contains("SECRET"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            original,
            "{args:?}: a refused edit changed the file"
        );
    }

    // A non-loopback gateway is refused by the compiler: `config check` names the field.
    std::fs::write(
        &config,
        format!("{original}\n[providers]\nlisten = \"0.0.0.0:8089\"\n"),
    )
    .unwrap();
    let out = proxyguard(&config, &["config", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("providers.listen") && stderr(&out).contains("loopback"),
        "{}",
        stderr(&out)
    );
}
