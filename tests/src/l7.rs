//! Real peers for the L7 tests: a LiteLLM proxy (from the venv that `cargo xtask setup` makes), a
//! slow provider behind it, proxyguard in front (`run --no-kernel`), and the official `openai`
//! SDK as the client. Every child runs in its own process group and is killed on drop, panics
//! included.

use std::{
    fs,
    io::Read,
    net::{TcpListener, TcpStream},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::Daemon;

/// The venv with `litellm[proxy]` and `openai`: `$PROXYGUARD_VENV` (set by `cargo xtask`), else
/// the cache path that `cargo xtask setup` fills.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("PROXYGUARD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("venv"));
    assert!(
        dir.join("bin/litellm").is_file() && dir.join("bin/python").is_file(),
        "no LiteLLM venv at {}: run `cargo xtask setup` (it installs litellm[proxy] and openai there)",
        dir.display()
    );
    dir
}

/// Mirrors `xtask::setup::cache_dir`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROXYGUARD_CACHE") {
        return dir.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        })
        .join("proxyguard")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A random client key and its hash, as `keys add` would make them.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("urandom");
    let key = format!("pgk_{}", hex::encode(bytes));
    let hash = hash_hex(key.as_bytes());
    (key, hash)
}

/// Lower-case hex SHA-256, the form the config stores keys in.
pub fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A child process group, SIGTERMed then SIGKILLed on drop.
pub struct Group {
    child: Child,
}

impl Group {
    pub fn spawn(command: &mut Command) -> Group {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn peer");
        Group { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not listen on {port}; its log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// The slow provider (`py/provider.py`) that the `slow` model streams from.
pub struct Provider {
    _group: Group,
    pub port: u16,
    pub gate: PathBuf,
    pub state: PathBuf,
    _dir: tempfile::TempDir,
}

impl Provider {
    pub fn start() -> Provider {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let gate = dir.path().join("gate");
        let state = dir.path().join("state");
        let log = dir.path().join("provider.log");
        let group = Group::spawn(
            Command::new(venv().join("bin/python"))
                .arg(py("provider.py"))
                .arg(port.to_string())
                .arg(&gate)
                .arg(&state)
                .stdout(fs::File::create(&log).expect("log"))
                .stderr(fs::File::create(dir.path().join("provider.err")).expect("log")),
        );
        wait_for_port(port, "the slow provider", &log);
        Provider {
            _group: group,
            port,
            gate,
            state,
            _dir: dir,
        }
    }

    /// The headers of the last request the provider received (lower-case names).
    pub fn last_headers(&self) -> serde_json::Value {
        let path = self.state.with_extension("headers");
        serde_json::from_str(&fs::read_to_string(path).unwrap_or_else(|_| "null".into()))
            .unwrap_or_default()
    }

    pub fn outcome(&self) -> String {
        fs::read_to_string(&self.state).unwrap_or_else(|_| "no stream finished".into())
    }
}

/// A LiteLLM proxy on a free loopback port, with `mock_response` models and its own master key.
pub struct LiteLlm {
    _group: Group,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LiteLlm {
    pub fn start(master_key: &str, provider: Option<&Provider>, env: &[(&str, &str)]) -> LiteLlm {
        let mut config = String::from(
            "model_list:\n  - model_name: mock-gpt\n    litellm_params:\n      model: openai/mock-gpt\n      api_key: sk-provider-unused\n      mock_response: \"Hello from the mock model.\"\n",
        );
        if let Some(provider) = provider {
            config.push_str(&format!(
                "  - model_name: slow\n    litellm_params:\n      model: openai/slow\n      api_base: http://127.0.0.1:{}/v1\n      api_key: sk-provider-unused\n",
                provider.port
            ));
        }
        Self::start_with_models(master_key, &config, env)
    }

    /// LiteLLM on `model_list` (YAML, starting with `model_list:`), with no provider key in its
    /// environment: the variables LiteLLM reads keys from are removed, whatever the test's own.
    pub fn start_with_models(master_key: &str, model_list: &str, env: &[(&str, &str)]) -> LiteLlm {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut config = model_list.to_owned();
        config.push_str(&format!("general_settings:\n  master_key: {master_key}\n"));
        let config_path = dir.path().join("litellm.yaml");
        fs::write(&config_path, config).expect("write LiteLLM config");
        let log = dir.path().join("litellm.log");
        let file = fs::File::create(&log).expect("log");
        let group = Group::spawn(
            Command::new(venv().join("bin/litellm"))
                .arg("--config")
                .arg(&config_path)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--telemetry",
                    "False",
                ])
                // Offline: the bundled model cost map, no fetch.
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env_remove("OPENAI_API_KEY")
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("AZURE_API_KEY")
                .envs(env.iter().copied())
                .stdout(file.try_clone().expect("log"))
                .stderr(file),
        );
        wait_for_port(port, "LiteLLM", &log);
        LiteLlm {
            _group: group,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The LiteLLM process's id (for its /proc/<pid>/environ).
    pub fn pid(&self) -> u32 {
        self._group.pid()
    }

    /// How many requests for `path` LiteLLM's access log shows.
    pub fn arrivals(&self, path: &str) -> usize {
        self.log()
            .lines()
            .filter(|line| line.contains(&format!(" {path} HTTP/1.1\"")))
            .count()
    }
}

/// proxyguard in front of an upstream, with client keys and an upstream key file.
pub struct Guard {
    pub daemon: Daemon,
    pub base: String,
    pub admin: String,
    pub keys: Vec<(String, String, String)>,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// The value of the metric line starting `prefix` in a `/metrics` text (0 if absent).
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .map_or(0, |v| v.parse().expect("a counter value"))
}

impl Guard {
    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        let admin = self.admin.trim_start_matches("http://");
        let mut stream = TcpStream::connect(admin).expect("connect to the admin listener");
        std::io::Write::write_all(
            &mut stream,
            b"GET /metrics HTTP/1.0\r\nhost: localhost\r\n\r\n",
        )
        .expect("ask for /metrics");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read /metrics");
        text
    }

    /// `extra` is TOML appended to `[proxy]` (sub-tables allowed); `names` are the client keys.
    pub fn start(upstream_port: u16, upstream_key: &str, names: &[&str], extra: &str) -> Guard {
        Self::start_with_env(upstream_port, upstream_key, names, extra, &[])
    }

    pub fn start_with_env(
        upstream_port: u16,
        upstream_key: &str,
        names: &[&str],
        extra: &str,
        env: &[(&str, &str)],
    ) -> Guard {
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = dir.path().join("upstream.key");
        fs::write(&key_file, format!("{upstream_key}\n")).expect("key file");
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
        let keys: Vec<(String, String, String)> = names
            .iter()
            .map(|name| {
                let (key, hash) = new_key();
                (name.to_string(), key, hash)
            })
            .collect();
        let config = Self::config(upstream_port, &key_file, &keys, extra);
        let daemon = Daemon::start_with_env(&config, &["--no-kernel"], env);
        let proxy = &daemon.ready["proxy"];
        let base = format!(
            "http://{}",
            proxy["listen"].as_str().expect("ready names the listener")
        );
        let admin = format!(
            "http://{}",
            proxy["admin"]
                .as_str()
                .expect("ready names the admin listener")
        );
        Guard {
            daemon,
            base,
            admin,
            keys,
            key_file,
            _dir: dir,
        }
    }

    pub fn config(
        upstream_port: u16,
        key_file: &Path,
        keys: &[(String, String, String)],
        extra: &str,
    ) -> String {
        let mut config = format!(
            "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{upstream_port}\"\nupstream_key_file = \"{}\"\n{extra}\n",
            key_file.display()
        );
        for (name, _, hash) in keys {
            config.push_str(&format!(
                "\n[[proxy.keys]]\nname = \"{name}\"\nsha256 = \"{hash}\"\n"
            ));
        }
        config
    }

    /// Every audit record up to a sentinel request's (which is left off): one `DELETE /sentinel`
    /// (refused as an unknown route before any upstream), made after everything the test did. Request records leave the proxy
    /// through one queue in order, and alerts are written before their request's answer, so
    /// once the sentinel's record arrives, every record of an earlier request has been seen.
    pub fn records_until_sentinel(&mut self) -> Vec<Value> {
        let answer = http(
            &self.base,
            serde_json::json!({"method": "DELETE", "path": "/sentinel"}),
        );
        assert_eq!(answer["status"], 404, "the sentinel request: {answer}");
        let mut records = self
            .daemon
            .records_until(|e| e["kind"] == "request" && e["method"] == "DELETE");
        records.pop();
        records
    }

    pub fn key(&self, name: &str) -> &str {
        &self
            .keys
            .iter()
            .find(|(n, _, _)| n == name)
            .expect("key name")
            .1
    }
}

fn py(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(script)
}

/// Runs `py/client.py ACTION BASE KEY [ARG]` and returns its JSON result.
pub fn client(action: &str, base: &str, key: &str, arg: Option<&str>) -> Value {
    client_with_env(action, base, key, arg, &[])
}

pub fn client_with_env(
    action: &str,
    base: &str,
    key: &str,
    arg: Option<&str>,
    env: &[(&str, &str)],
) -> Value {
    let output = Command::new(venv().join("bin/python"))
        .arg(py("client.py"))
        .args([action, base, key])
        .args(arg)
        .envs(env.iter().copied())
        .output()
        .expect("run the openai client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client {action} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("client printed {stdout:?}: {err}"))
}

/// A raw request through `client.py http`.
pub fn http(base: &str, spec: Value) -> Value {
    client("http", base, "-", Some(&spec.to_string()))
}
