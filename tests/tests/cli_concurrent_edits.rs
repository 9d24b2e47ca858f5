//! Edits at the same moment lose nothing: in each of 20 rounds two `keys add` and one
//! `egress allow` run at once on one config, and afterwards every key and every target is there.
//! Without the edit lock, each process reads the file, adds its entry and renames its copy over
//! the other's, so one of the edits disappears.

use std::process::{Child, Command, Stdio};

use proxyguard_tests::proxyguard_bin;

fn spawn(config: &std::path::Path, args: &[&str]) -> Child {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_keys_and_egress_edits_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pg.toml");
    // No daemon answers this socket; each edit lands and says it applies at the next start.
    std::fs::write(
        &config,
        format!(
            "[control]\nsocket = \"{}\"\n",
            dir.path().join("none.sock").display()
        ),
    )
    .unwrap();

    const ROUNDS: u32 = 20;
    for round in 0..ROUNDS {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let target = format!("198.18.{round}.0/24:443");
        let children = [
            spawn(&config, &["keys", "add", &a]),
            spawn(&config, &["keys", "add", &b]),
            spawn(&config, &["egress", "allow", &target]),
        ];
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let out = Command::new(proxyguard_bin())
        .args(["keys", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    let text = std::fs::read_to_string(&config).unwrap();
    for round in 0..ROUNDS {
        for name in [format!("a{round}"), format!("b{round}")] {
            assert!(
                names.contains(&name.as_str()),
                "key {name} was lost: {names:?}"
            );
        }
        let target = format!("198.18.{round}.0/24:443");
        assert!(text.contains(&target), "target {target} was lost:\n{text}");
    }
    assert_eq!(names.len(), 2 * ROUNDS as usize, "{names:?}");
    // The lock file is a sibling of the config, owner-only; no temp file is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
