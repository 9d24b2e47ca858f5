//! Real agent-lightning peers for `l7_agent_lightning.rs`, from the PyPI pins of
//! `tests/py/agl/v*/requirements.txt` (venvs that `cargo xtask setup` makes):
//! - 0.3.0: the trainer's `LLMProxy` (LiteLLM's proxy app with agl's rollout middleware and span
//!   exporter) with an in-memory store, served over agl's store API;
//! - 1.0.2: `agl-server` (its FastAPI server, in-memory store and OpenAI proxy), with a LiteLLM
//!   `mock_response` model (from the main venv) as its model server;
//!
//! and their trainers and agents (`py/agl/v03_client.py`, `py/agl/v10_client.py`). Every child is a
//! [`Group`], killed on drop, but the 0.3 client: one serves the whole test process over its
//! stdin and exits when that closes. Keys reach the children through their environment or stdin,
//! never argv.

use std::{
    fs,
    io::{BufRead, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::l7::{free_port, venv, Group};

/// A venv from `$VAR`, else `~/.cache/proxyguard/NAME`, holding `executable`.
fn agl_venv(var: &str, name: &str, executable: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| venv().with_file_name(name));
    assert!(
        dir.join(executable).is_file() && dir.join("bin/python").is_file(),
        "no agent-lightning venv at {} (no {executable}): run `cargo xtask setup` (it installs {} there)",
        dir.display(),
        name.trim_start_matches("venv-"),
    );
    dir
}

/// agent-lightning 0.3.0's venv: `$PROXYGUARD_AGL03_VENV`, else `~/.cache/proxyguard/venv-agl-0.3`.
pub fn venv03() -> PathBuf {
    agl_venv("PROXYGUARD_AGL03_VENV", "venv-agl-0.3", "bin/agl")
}

/// agent-lightning 1.0.2's venv: `$PROXYGUARD_AGL10_VENV`, else `~/.cache/proxyguard/venv-agl-1.0`.
pub fn venv10() -> PathBuf {
    agl_venv("PROXYGUARD_AGL10_VENV", "venv-agl-1.0", "bin/agl-server")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("py/agl")
        .join(name)
}

/// Waits until `port` accepts connections, or fails with the child's log.
fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
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

/// A started child and the log its output goes to.
struct Peer {
    _group: Group,
    log: PathBuf,
}

fn spawn(command: &mut Command, dir: &Path, name: &str, port: u16) -> Peer {
    let log = dir.join(format!("{name}.log"));
    let file = fs::File::create(&log).expect("log");
    let group = Group::spawn(
        command
            .current_dir(dir)
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdout(file.try_clone().expect("log"))
            .stderr(file),
    );
    wait_for_port(port, name, &log);
    Peer { _group: group, log }
}

/// agent-lightning 0.3.0 as a trainer runs it: an `LLMProxy` with an in-memory store, which is
/// also served over agl's store API for the trainer's other processes (and the test).
pub struct Agl03 {
    /// The LLMProxy's own port (LiteLLM's app): the guard's upstream.
    pub proxy_port: u16,
    /// agl's store API (`LightningStoreServer`), where the spans are read back.
    pub store_url: String,
    proxy: Peer,
    _dir: tempfile::TempDir,
}

impl Agl03 {
    /// The LLMProxy on `proxy_port` with `master_key`, LiteLLM's, in its `general_settings`.
    pub fn start(master_key: &str, proxy_port: u16) -> Agl03 {
        let dir = tempfile::tempdir().expect("temp dir");
        let store_port = free_port();
        let proxy = spawn(
            Command::new(venv03().join("bin/python"))
                .arg(script("v03_proxy.py"))
                .args([proxy_port.to_string(), store_port.to_string()])
                .env("PG_AGL_MASTER_KEY", master_key),
            dir.path(),
            "llm-proxy",
            proxy_port,
        );
        Agl03 {
            proxy_port,
            store_url: format!("http://127.0.0.1:{store_port}"),
            proxy,
            _dir: dir,
        }
    }

    /// The LLMProxy's log, for a failure message.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proxy.log).unwrap_or_default()
    }

    /// The trainer starts a rollout in the store: `(rollout_id, attempt_id)`.
    pub fn start_rollout(&self) -> (String, String) {
        let out = v03(&["rollout", &self.store_url]);
        (
            out["rollout_id"].as_str().expect("rollout id").to_owned(),
            out["attempt_id"].as_str().expect("attempt id").to_owned(),
        )
    }

    /// `{count, attempts: {attempt_id: n}}` of the spans the store holds for `rollout`.
    pub fn spans(&self, rollout: &str) -> Value {
        v03(&["spans", &self.store_url, rollout])
    }

    /// Waits until the store holds at least `at_least` spans for `rollout` (agl's exporter writes
    /// them in the background, after the answer), and returns them as [`Agl03::spans`] does.
    pub fn spans_at_least(&self, rollout: &str, at_least: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spans = self.spans(rollout);
            if spans["count"].as_u64().unwrap_or(0) >= at_least || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Runs `py/agl/v03_client.py`'s action `args` in the 0.3 venv and returns its JSON. The actions
/// go to one `v03_client.py serve` per test process, over its stdin: each new Python process
/// would import agl 0.3, and with it LiteLLM's proxy app (about 13 s of CPU).
pub fn v03(args: &[&str]) -> Value {
    static SERVED: Mutex<Option<Served>> = Mutex::new(None);
    // A test that panicked while holding the lock left the client as it was: still usable, or
    // found dead below and started again.
    let mut served = SERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if served.as_mut().is_none_or(|s| !s.alive()) {
        *served = Some(Served::start(&venv03(), "v03_client.py"));
    }
    served.as_mut().unwrap().act(args)
}

/// A client script in its `serve` mode: one JSON array per stdin line in, one `PGV03 {json}`
/// line per action out. It exits at end of input, when the test process that holds its stdin
/// exits.
struct Served {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    log: PathBuf,
}

impl Served {
    fn start(venv: &Path, name: &str) -> Served {
        let log = std::env::temp_dir().join(format!("pg-{name}-{}.log", std::process::id()));
        let mut child = Command::new(venv.join("bin/python"))
            .arg(script(name))
            .arg("serve")
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).expect("client log"))
            .spawn()
            .expect("run the agent-lightning client");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        Served {
            child,
            stdin,
            stdout,
            log,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn act(&mut self, args: &[&str]) -> Value {
        let action = args.first().copied().unwrap_or_default();
        let mut request = serde_json::to_string(args).unwrap();
        request.push('\n');
        self.stdin
            .write_all(request.as_bytes())
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|err| panic!("{action}: the client's stdin: {err}\n{}", self.log()));
        let mut line = String::new();
        loop {
            line.clear();
            let read = self
                .stdout
                .read_line(&mut line)
                .expect("the client's stdout");
            assert!(read > 0, "{action}: the client exited\n{}", self.log());
            if let Some(answer) = line.trim_end().strip_prefix("PGV03 ") {
                let answer: Value = serde_json::from_str(answer)
                    .unwrap_or_else(|err| panic!("{action}: the client printed {line:?}: {err}"));
                assert!(
                    answer.get("error").is_none(),
                    "{action} failed: {answer}\n{}",
                    self.log()
                );
                return answer;
            }
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `py/agl/v10_client.py ARGS` in the 1.0 venv and returns its JSON.
pub fn v10(args: &[&str], env: &[(&str, &str)]) -> Value {
    run(&venv10(), "v10_client.py", args, env)
}

fn run(venv: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let output = Command::new(venv.join("bin/python"))
        .arg(script(name))
        .args(args)
        .envs(env.iter().copied())
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .output()
        .expect("run the agent-lightning client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name} {} failed: {}\n{stdout}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|err| panic!("{name} printed {stdout:?}: {err}"))
}

/// A LiteLLM proxy with no key of its own and one `mock_response` model, `mock-gpt`: the model
/// server behind agl-server (a vLLM's place; agl-server sends it no key). LiteLLM 1.108.7 starts
/// without a master key only when told to (`dangerously_permit_weak_or_unset_master_key`); it
/// listens on loopback only.
pub struct ModelServer {
    pub port: u16,
    peer: Peer,
    _dir: tempfile::TempDir,
}

impl ModelServer {
    pub fn start() -> ModelServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("model-server.yaml");
        fs::write(
            &config,
            "model_list:\n  - model_name: mock-gpt\n    litellm_params:\n      model: openai/mock-gpt\n      api_key: sk-provider-unused\n      mock_response: \"Hello from the mock model.\"\n\
             general_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n",
        )
        .expect("write the model server's config");
        let port = free_port();
        let peer = spawn(
            Command::new(venv().join("bin/litellm"))
                .arg("--config")
                .arg(&config)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--telemetry",
                    "False",
                ]),
            dir.path(),
            "model-server",
            port,
        );
        ModelServer {
            port,
            peer,
            _dir: dir,
        }
    }

    /// The OpenAI base URL agl-server's model registry takes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.peer.log).unwrap_or_default()
    }
}

/// `agl-server` (1.0.2) on a loopback port with its key from `$AGL_KEY` and `mock-gpt` as the
/// model it serves, started as the README says.
pub struct Agl10 {
    pub port: u16,
    peer: Peer,
    _dir: tempfile::TempDir,
}

impl Agl10 {
    /// `line` is the README's `agl-server` command line (paths and port filled in), run by bash
    /// with the 1.0 venv first on PATH; `env` is what the operator's shell holds.
    pub fn start(line: &str, env: &[(&str, &str)]) -> Agl10 {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = line
            .split_whitespace()
            .find_map(|arg| arg.strip_prefix("port=")?.parse().ok())
            .expect("the agl-server command names its port");
        let path = format!(
            "{}:{}",
            venv10().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // Hydra writes its run directory (config and log copies) under the working directory: the
        // temp dir.
        let peer = spawn(
            Command::new("bash")
                .args(["-c", line])
                .env("PATH", path)
                .envs(env.iter().copied()),
            dir.path(),
            "agl-server",
            port,
        );
        Agl10 {
            port,
            peer,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.peer.log).unwrap_or_default()
    }
}

/// The commands of README.md's `<!-- readme-test: NAME -->` block (the ```sh fence after the
/// marker), one per line, as an operator would type them.
pub fn readme_block(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = fs::read_to_string(&path).expect("README.md");
    let marker = format!("<!-- readme-test: {name} -->");
    let mut lines = readme.lines().skip_while(|line| line.trim() != marker);
    assert!(lines.next().is_some(), "README.md has no `{marker}` block");
    assert_eq!(
        lines.next().map(str::trim),
        Some("```sh"),
        "README.md: `{marker}` must be followed by a ```sh fence"
    );
    let commands: Vec<String> = lines
        .take_while(|line| line.trim() != "```")
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!commands.is_empty(), "README.md: `{marker}` is empty");
    commands
}

/// An operator's shell on a scratch host: README commands run in bash with proxyguard (the built
/// binary) and one agent-lightning venv first on PATH, `$PROXYGUARD_CONFIG` naming a config of
/// its own, the environment the README assumes (`$AGL_KEY`, ...), and the README's host paths
/// and ports replaced by the test's.
pub struct Operator {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    replace: Vec<(String, String)>,
    env: Vec<(String, String)>,
    path: String,
}

impl Operator {
    pub fn new(venv: &Path, replace: &[(&str, String)], env: &[(&str, &str)]) -> Operator {
        let dir = tempfile::tempdir().expect("temp dir");
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).expect("etc");
        let mut all = vec![("/etc/proxyguard/".to_owned(), format!("{}/", etc.display()))];
        all.extend(
            replace
                .iter()
                .map(|(from, to)| (from.to_string(), to.clone())),
        );
        let bin = crate::proxyguard_bin();
        let path = format!(
            "{}:{}:{}",
            bin.parent().expect("bin dir").display(),
            venv.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Operator {
            config: etc.join("proxyguard.toml"),
            dir,
            replace: all,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            path,
        }
    }

    /// `line` with the README's paths and ports replaced by the test's.
    pub fn localise(&self, line: &str) -> String {
        self.replace
            .iter()
            .fold(line.to_owned(), |line, (from, to)| line.replace(from, to))
    }

    /// Runs one README command; its stdout (which may hold a key: it is never printed). A failure
    /// shows the command and its stderr.
    pub fn run(&self, line: &str, env: &[(&str, &str)]) -> String {
        let line = self.localise(line);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &line])
            .current_dir(self.dir.path())
            .env("PATH", &self.path)
            .env("PROXYGUARD_CONFIG", &self.config)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "README command `{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Moves the config `config init` wrote off the host's shared defaults, so the test never
    /// meets another daemon: free loopback ports instead of 8080 and 9464, a control socket of its
    /// own, and JSON audit lines for the harness. Nothing else is touched.
    pub fn isolate_config(&self) {
        let text = fs::read_to_string(&self.config).expect("config init wrote the config");
        let socket = self.dir.path().join("control.sock");
        let mut isolated = text.clone();
        for (from, to) in [
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                "admin_listen = \"127.0.0.1:9464\"",
                "admin_listen = \"127.0.0.1:0\"".to_owned(),
            ),
            (
                "socket = \"/run/proxyguard/control.sock\"",
                format!("socket = \"{}\"", socket.display()),
            ),
            ("format = \"text\"", "format = \"json\"".to_owned()),
        ] {
            assert!(
                isolated.contains(from),
                "config init's file has no `{from}`"
            );
            isolated = isolated.replacen(from, &to, 1);
        }
        fs::write(&self.config, isolated).expect("write the config");
    }

    /// Names `key` in `[proxy.admin_routes] keys`, as the README tells the operator to.
    pub fn admit(&self, key: &str) {
        let text = fs::read_to_string(&self.config).expect("config");
        let at = text
            .find("[proxy.admin_routes]")
            .expect("config init's file has [proxy.admin_routes]");
        let (head, tail) = text.split_at(at);
        assert!(
            tail.contains("keys = []"),
            "[proxy.admin_routes] has no `keys = []`"
        );
        let tail = tail.replacen("keys = []", &format!("keys = [\"{key}\"]"), 1);
        fs::write(&self.config, format!("{head}{tail}")).expect("write the config");
    }

    /// Points later commands at the running daemon's config (the harness runs the daemon on a
    /// copy): on a host there is one file, and `keys mint` writes its signing key beside it and
    /// reloads the daemon.
    pub fn follow(&mut self, daemon: &crate::Daemon) {
        self.config = daemon.config_path.clone();
    }

    /// `proxyguard run --no-kernel` on the operator's config.
    pub fn start_guard(&self) -> crate::Daemon {
        let text = fs::read_to_string(&self.config).expect("config");
        crate::Daemon::start_with_env(&text, &["--no-kernel"], &[])
    }
}

/// Every audit record up to a sentinel request's (left off), as `l7::Guard::records_until_sentinel`.
pub fn records_until_sentinel(daemon: &mut crate::Daemon, base: &str) -> Vec<Value> {
    let answer = crate::l7::http(
        base,
        serde_json::json!({"method": "DELETE", "path": "/sentinel"}),
    );
    assert_eq!(answer["status"], 404, "the sentinel request: {answer}");
    let mut records = daemon.records_until(|e| e["kind"] == "request" && e["method"] == "DELETE");
    records.pop();
    records
}

/// The guard's front URL from its ready line.
pub fn front(daemon: &crate::Daemon) -> String {
    format!(
        "http://{}",
        daemon.ready["proxy"]["listen"]
            .as_str()
            .expect("ready names the listener")
    )
}
