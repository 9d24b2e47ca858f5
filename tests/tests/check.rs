//! `proxyguard check` against a real guarded process: a small Python HTTP server on 0.0.0.0 with
//! `OPENAI_API_KEY` planted, which writes a 0644 YAML file with an `api_key:` line into its TMPDIR.
//! Not a `kernel_` test: it loads nothing into the kernel, and the VM has no Python.

use std::{
    os::unix::fs::{symlink, MetadataExt, PermissionsExt},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use proxyguard_tests::{
    guarded::{eventually, CANARY},
    proxyguard_bin,
};
use serde_json::Value;

const SERVER: &str = r#"
import http.server, os, sys
path = os.path.join(os.environ["TMPDIR"], "model_config.yaml")
with open(path, "w") as f:
    f.write("model_list:\n  - api_key: os.environ/OPENAI_API_KEY\n")
os.chmod(path, 0o644)
server = http.server.HTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
open(os.path.join(os.environ["TMPDIR"], "port.txt.partial"), "w").write(str(server.server_port))
os.rename(os.path.join(os.environ["TMPDIR"], "port.txt.partial"), os.path.join(os.environ["TMPDIR"], "port"))
os.chmod(os.path.join(os.environ["TMPDIR"], "port"), 0o600)
server.serve_forever()
"#;

struct Server {
    child: Child,
    tmp: tempfile::TempDir,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new("python3")
        .args(["-c", SERVER])
        .env("OPENAI_API_KEY", CANARY)
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let port_file = tmp.path().join("port");
    assert!(
        eventually(Duration::from_secs(20), || port_file.exists()),
        "the Python server did not start"
    );
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .parse()
        .unwrap();
    Server { child, tmp, port }
}

/// A config that walks only the server's TMPDIR: the shared /tmp of this host is not the test's
/// to change.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("proxyguard.toml");
    std::fs::write(&path, "[watch]\ntemp_dirs = [\"$TMPDIR\"]\n").unwrap();
    path
}

fn check(config: &Path, pid: u32, extra: &[&str]) -> (Output, Value) {
    let out = Command::new(proxyguard_bin())
        .args(["check", "--json", "--pid", &pid.to_string(), "--config"])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(stream).contains(CANARY),
            "the secret's value leaked into the output"
        );
    }
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, json)
}

fn finding<'a>(json: &'a Value, check: &str, subject: &str) -> Option<&'a Value> {
    json["findings"].as_array().unwrap().iter().find(|f| {
        f["check"] == check && f["subject"].as_str().is_some_and(|s| s.ends_with(subject))
    })
}

#[test]
fn finds_the_secret_the_file_and_the_listener_and_fixes_the_file() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let pid = server.child.id();

    let (out, json) = check(&config, pid, &[]);
    assert_eq!(out.status.code(), Some(1), "findings exit 1: {json}");
    let secret = finding(&json, "secret_env", "OPENAI_API_KEY").expect("the secret's name");
    assert!(
        secret["detail"].as_str().unwrap().contains("credential"),
        "{secret}"
    );
    let yaml = finding(&json, "temp_file", "model_config.yaml").expect("the 0644 YAML file");
    assert_eq!(yaml["severity"], "high", "{yaml}");
    assert_eq!(yaml["fixed"], false);
    let listener = finding(&json, "listener", &format!(":{}", server.port)).expect("the listener");
    assert_eq!(listener["subject"], format!("0.0.0.0:{}", server.port));
    assert!(
        finding(&json, "temp_file", "port").is_none(),
        "0600 is fine"
    );

    let file = server.tmp.path().join("model_config.yaml");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o644);
    let (_, fixed) = check(&config, pid, &["--fix"]);
    let yaml = finding(&fixed, "temp_file", "model_config.yaml").unwrap();
    assert_eq!(yaml["fixed"], true, "{yaml}");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);

    // The human table carries the same names, and still no value.
    let table = Command::new(proxyguard_bin())
        .args(["check", "--pid", &pid.to_string(), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("OPENAI_API_KEY") && !text.contains(CANARY),
        "{text}"
    );
}

#[test]
fn symlinks_and_other_users_files_are_never_chmodded() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // A file outside the temp dirs (standing in for /etc/shadow), and a symlink to it planted in
    // the service's TMPDIR.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("shadow");
    std::fs::write(&target, "root:x:0:0\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    symlink(&target, server.tmp.path().join("evil.yaml")).unwrap();
    // A file of another user in the TMPDIR.
    let foreign = server.tmp.path().join("foreign.json");
    std::fs::write(&foreign, "{}").unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o644)).unwrap();
    let chowned =
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok();

    let (_, json) = check(&config, server.child.id(), &["--fix"]);
    assert!(finding(&json, "temp_file", "evil.yaml").is_none(), "{json}");
    assert_eq!(
        std::fs::metadata(&target).unwrap().mode() & 0o777,
        0o644,
        "the symlink was followed"
    );
    if chowned {
        assert!(
            finding(&json, "temp_file", "foreign.json").is_none(),
            "{json}"
        );
        assert_eq!(std::fs::metadata(&foreign).unwrap().mode() & 0o777, 0o644);
    }
    assert_eq!(
        std::fs::metadata(server.tmp.path().join("model_config.yaml"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let out = Command::new(proxyguard_bin())
        .args(["check", "--pid", "999999999", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::write(&missing, "").unwrap();
    let out = Command::new(proxyguard_bin())
        .args(["check", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "no [guarded] service and no --pid"
    );
}
