//! `proxyguard check` against a real guarded process: a small Python HTTP server on 0.0.0.0 with
//! `OPENAI_API_KEY` planted, which writes a 0644 YAML file with an `api_key:` line into its TMPDIR
//! and keeps it open (so `--fix` may change it: it is provably the service's). And a shared temp
//! dir, standing in for /tmp, where other files of the same owner must keep their mode.
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
config = open(path, "w")
config.write("model_list:\n  - api_key: os.environ/OPENAI_API_KEY\n")
config.flush()
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

/// The stand-in service for the shared-temp-dir tests: it holds `held.yaml` open for writing and
/// `read.yaml` for reading only (both made by someone else), and creates `made.yaml` (then closes
/// it), all 0644, in `SHARED`.
const SHARED_SERVICE: &str = r#"
import os, time
shared = os.environ["SHARED"]
held = open(os.path.join(shared, "held.yaml"), "a")
reading = open(os.path.join(shared, "read.yaml"))
with open(os.path.join(shared, "made.yaml"), "w") as f:
    f.write("api_key: x\n")
os.chmod(os.path.join(shared, "made.yaml"), 0o644)
ready = os.path.join(os.environ["TMPDIR"], "ready")
open(ready + ".partial", "w").close()
os.rename(ready + ".partial", ready)
time.sleep(120)
"#;

/// Files of the same owner as the service, made by someone else (this test), at depths 1, 2 and
/// 3 of the shared dir, a chroot's `etc/passwd` among them, and one the service only reads.
const UNRELATED: &[&str] = &[
    "read.yaml",
    "other-tool.log",
    "tool/state.json",
    "tool/cache/blob.bin",
    "chroot/etc/passwd",
];

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn plant(shared: &Path) {
    for name in UNRELATED.iter().copied().chain(["held.yaml"]) {
        let path = shared.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
fn fix_changes_only_the_services_own_files_in_a_shared_temp_dir() {
    let shared = tempfile::tempdir().unwrap();
    plant(shared.path());
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new("python3")
        .args(["-c", SHARED_SERVICE])
        .env("SHARED", shared.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let ready = eventually(Duration::from_secs(20), || {
        tmp.path().join("ready").exists()
    });
    let pid = child.id();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxyguard.toml");
    std::fs::write(
        &config,
        format!("[watch]\ntemp_dirs = [\"{}\"]\n", shared.path().display()),
    )
    .unwrap();
    let result = ready.then(|| check(&config, pid, &["--fix"]));
    let _ = child.kill();
    let _ = child.wait();
    let (out, json) = result.expect("the Python service did not start");

    // Held open for writing: provably the service's, and fixed.
    let held = finding(&json, "temp_file", "/held.yaml").expect("held.yaml");
    assert_eq!(held["fixed"], true, "{held}");
    assert_eq!(held["ownership"]["proof"], "held_open", "{held}");
    assert_eq!(mode(&shared.path().join("held.yaml")), 0o600);
    // Created by the service, but a one-shot check has no record of that: reported only.
    let made = finding(&json, "temp_file", "/made.yaml").expect("made.yaml");
    assert_eq!(made["fixed"], false, "{made}");
    assert_eq!(made["ownership"]["proof"], "unproven", "{made}");
    assert_eq!(mode(&shared.path().join("made.yaml")), 0o644);
    assert_eq!(json["ownership_evidence"]["created_by_service"], false);
    // Everything else of the same owner keeps its exact mode, and is a report-only finding.
    for name in UNRELATED {
        assert_eq!(mode(&shared.path().join(name)), 0o644, "{name} was changed");
        let f = finding(&json, "temp_file", &format!("/{name}"))
            .unwrap_or_else(|| panic!("{name}: {json}"));
        assert_eq!(f["fixed"], false, "{f}");
        assert_eq!(f["ownership"]["proof"], "unproven", "{f}");
        assert!(
            f["detail"]
                .as_str()
                .unwrap()
                .contains("reported, not changed: not proven to be the service's"),
            "{f}"
        );
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "unfixed findings remain: {json}"
    );
}

/// A service in its own mount namespace with its own tmpfs over the temp dir (what systemd's
/// PrivateTmp amounts to): what it leaves there is its own, held open or not.
#[test]
fn fix_changes_files_in_the_services_private_temp_dir() {
    if !nix::unistd::geteuid().is_root()
        || Command::new("unshare").arg("--version").output().is_err()
    {
        eprintln!("fix_changes_files_in_the_services_private_temp_dir: skipped, needs root and unshare(1)");
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // unshare(1) makes the new namespace's mounts private, so the tmpfs is not seen here.
    let script = r#"mount -t tmpfs tmpfs "$SHARED" && printf 'x
' > "$SHARED/private.log" && chmod 644 "$SHARED/private.log" && : > "$TMPDIR/ready" && exec sleep 120"#;
    let mut child = Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("SHARED", shared.path())
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare");
    let ready = eventually(Duration::from_secs(20), || {
        tmp.path().join("ready").exists()
    });
    let pid = child.id();
    let inside = Path::new(&format!("/proc/{pid}/root"))
        .join(shared.path().join("private.log").strip_prefix("/").unwrap());
    assert!(
        !shared.path().join("private.log").exists(),
        "the tmpfs leaked into our namespace"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxyguard.toml");
    std::fs::write(
        &config,
        format!("[watch]\ntemp_dirs = [\"{}\"]\n", shared.path().display()),
    )
    .unwrap();
    let result = ready.then(|| (check(&config, pid, &["--fix"]), mode(&inside)));
    let _ = child.kill();
    let _ = child.wait();
    let ((_, json), after) = result.expect("the namespaced service did not start");
    let f = finding(&json, "temp_file", "/private.log").expect("private.log");
    assert_eq!(f["ownership"]["proof"], "private_tmp", "{f}");
    assert_eq!(f["fixed"], true, "{f}");
    assert_eq!(after, 0o600);
}

/// A systemd-like service cgroup (`…/fix.service`) holding spawned processes, all killed and
/// the cgroup removed on drop.
struct ServiceCgroup {
    children: Vec<Child>,
    dir: std::path::PathBuf,
    _parent: proxyguard_tests::cgroup::TestCgroup,
}

impl ServiceCgroup {
    fn new() -> ServiceCgroup {
        let parent = proxyguard_tests::cgroup::TestCgroup::create("peers");
        let dir = parent.path.join("fix.service");
        std::fs::create_dir(&dir).expect("create the service cgroup");
        ServiceCgroup {
            children: Vec::new(),
            dir,
            _parent: parent,
        }
    }

    fn spawn(&mut self, command: &mut Command) -> u32 {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
        self.children.push(child);
        pid
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let procs = self.dir.join("cgroup.procs");
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).map_or(true, |t| t.trim().is_empty())
        });
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `--pid` names one process of a service; a file another process of the same service (a
/// worker) writes is the service's too, and is fixed; the rest of the shared dir is not.
#[test]
fn a_file_a_worker_of_the_same_service_writes_is_the_services() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("a_file_a_worker_of_the_same_service_writes_is_the_services: skipped, needs root (cgroups)");
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    plant(shared.path());
    let tmp = tempfile::tempdir().unwrap();
    let mut service = ServiceCgroup::new();
    let master = service.spawn(Command::new("sleep").arg("120"));
    let worker = r#"
import os, time
held = open(os.path.join(os.environ["SHARED"], "held.yaml"), "a")
open(os.path.join(os.environ["TMPDIR"], "ready"), "w").close()
time.sleep(120)
"#;
    service.spawn(
        Command::new("python3")
            .args(["-c", worker])
            .env("SHARED", shared.path())
            .env("TMPDIR", tmp.path()),
    );
    assert!(
        eventually(Duration::from_secs(20), || tmp
            .path()
            .join("ready")
            .exists()),
        "the worker did not start"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxyguard.toml");
    std::fs::write(
        &config,
        format!("[watch]\ntemp_dirs = [\"{}\"]\n", shared.path().display()),
    )
    .unwrap();
    let (_, json) = check(&config, master, &["--fix"]);
    let held = finding(&json, "temp_file", "/held.yaml").expect("held.yaml");
    assert_eq!(held["fixed"], true, "{held}");
    assert_eq!(held["ownership"]["proof"], "held_open", "{held}");
    assert_ne!(
        held["ownership"]["pid"], master,
        "the worker holds it: {held}"
    );
    assert_eq!(mode(&shared.path().join("held.yaml")), 0o600);
    for name in UNRELATED {
        assert_eq!(mode(&shared.path().join(name)), 0o644, "{name} was changed");
    }
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

/// Issue 13: provider keys in the service's environment (names only) and in its LiteLLM config
/// (found through `--config` on its command line), each with its migration: the key into a
/// root-only file, `providers add`, LiteLLM's new lines and the `UnsetEnvironment=` line.
#[test]
fn provider_keys_come_with_their_migration_to_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let litellm_config = dir.path().join("litellm.yaml");
    std::fs::write(
        &litellm_config,
        format!(
            "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: os.environ/OPENAI_API_KEY\n  - model_name: claude\n    litellm_params:\n      model: anthropic/claude-3-5-sonnet\n      api_key: \"sk-ant-{CANARY}\"\n"
        ),
    )
    .unwrap();
    // A stand-in for LiteLLM: its command line names the config the way `litellm --config` does.
    let mut child = Command::new("sh")
        .args(["-c", "sleep 60; :", "litellm", "--config"])
        .arg(&litellm_config)
        .env("OPENAI_API_KEY", CANARY)
        .stdout(Stdio::null())
        .spawn()
        .expect("sh");
    let config = config(dir.path());
    let pid = child.id();
    let (out, json) = check(&config, pid, &[]);
    assert_eq!(out.status.code(), Some(1), "{json}");
    let literal = finding(&json, "provider_key", "litellm.yaml:9").expect("the literal key");
    assert_eq!(literal["severity"], "high", "{literal}");
    assert!(
        finding(&json, "provider_key", "litellm.yaml:2").is_some(),
        "{json}"
    );
    let migration = json["migration"].as_array().expect("a migration");
    let openai = migration
        .iter()
        .find(|m| m["provider"] == "openai")
        .expect("openai's migration");
    assert_eq!(
        openai["providers_add"],
        "proxyguard providers add openai --base-url https://api.openai.com/v1 --key-file /etc/proxyguard/providers/openai.key"
    );
    assert_eq!(openai["dropin_line"], "UnsetEnvironment=OPENAI_API_KEY");
    assert_eq!(
        openai["litellm_lines"][0],
        "api_base: http://127.0.0.1:8089/openai"
    );
    let anthropic = migration
        .iter()
        .find(|m| m["provider"] == "anthropic")
        .expect("anthropic's migration");
    assert!(
        anthropic["providers_add"]
            .as_str()
            .unwrap()
            .contains("--auth x-api-key"),
        "{anthropic}"
    );

    let table = Command::new(proxyguard_bin())
        .args(["check", "--pid", &pid.to_string(), "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    for line in [
        "proxyguard providers add openai --base-url https://api.openai.com/v1",
        "api_base: http://127.0.0.1:8089/openai",
        "api_key: proxyguard-gateway",
        "UnsetEnvironment=OPENAI_API_KEY",
        "sed -n 's/^OPENAI_API_KEY=//p'",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(!text.contains(CANARY), "{text}");
    let _ = child.kill();
    let _ = child.wait();
}
