//! Moving provider keys out of a LiteLLM deployment (`proxyguard check`, `systemd harden`).
//!
//! It finds the keys where LiteLLM keeps them: variables in the service's environment (names
//! only) and `api_key` entries of its config's `model_list`, literals or `os.environ/NAME`
//! references. The config is the one the process was started with: `--config PATH` (or `-c`) on
//! its command line, else `$CONFIG_FILE_PATH` in its environment (LiteLLM reads both), so no
//! proxyguard setting has to repeat it. For each provider it prints the migration: the key into
//! a root-only file, the `providers add` command, LiteLLM's new `api_base` and placeholder
//! `api_key` lines, and the `UnsetEnvironment=` drop-in line. A key's value is never read into
//! a finding or a line printed; only the commands that move it are.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsString,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::config::AuthScheme;
use crate::checks::{Finding, Severity};

/// A provider LiteLLM knows by its key variable and its model prefix.
struct Known {
    env: &'static str,
    name: &'static str,
    base_url: &'static str,
    auth: AuthScheme,
    header: Option<&'static str>,
}

const KNOWN: &[Known] = &[
    Known {
        env: "OPENAI_API_KEY",
        name: "openai",
        base_url: "https://api.openai.com/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "ANTHROPIC_API_KEY",
        name: "anthropic",
        base_url: "https://api.anthropic.com",
        auth: AuthScheme::XApiKey,
        header: Some("anthropic-version: 2023-06-01"),
    },
    Known {
        env: "AZURE_API_KEY",
        name: "azure",
        base_url: "https://YOUR-RESOURCE.openai.azure.com",
        auth: AuthScheme::ApiKey,
        header: None,
    },
    Known {
        env: "AZURE_OPENAI_API_KEY",
        name: "azure",
        base_url: "https://YOUR-RESOURCE.openai.azure.com",
        auth: AuthScheme::ApiKey,
        header: None,
    },
    Known {
        env: "MISTRAL_API_KEY",
        name: "mistral",
        base_url: "https://api.mistral.ai/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "GROQ_API_KEY",
        name: "groq",
        base_url: "https://api.groq.com/openai/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "DEEPSEEK_API_KEY",
        name: "deepseek",
        base_url: "https://api.deepseek.com",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "TOGETHERAI_API_KEY",
        name: "together_ai",
        base_url: "https://api.together.xyz/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "OPENROUTER_API_KEY",
        name: "openrouter",
        base_url: "https://openrouter.ai/api/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "XAI_API_KEY",
        name: "xai",
        base_url: "https://api.x.ai/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
    Known {
        env: "FIREWORKS_AI_API_KEY",
        name: "fireworks_ai",
        base_url: "https://api.fireworks.ai/inference/v1",
        auth: AuthScheme::Bearer,
        header: None,
    },
];

/// One `model_list` entry's provider fields (values of `api_key` are never kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub line: usize,
    pub model_name: Option<String>,
    pub model: Option<String>,
    pub api_base: Option<String>,
    pub key: Option<KeyRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// `os.environ/NAME`.
    Env(String),
    /// A key written into the file (line number).
    Literal(usize),
}

fn unquote(value: &str) -> String {
    let value = value.split(" #").next().unwrap_or(value).trim();
    value.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

/// The `model_list` entries of a LiteLLM config (YAML), read line by line: each `- ` item at
/// the list's indentation is one entry; `model_name`, `model`, `api_base`, `api_key` are taken
/// at any depth inside it.
pub fn scan_litellm_config(text: &str) -> Vec<ModelEntry> {
    let mut entries: Vec<ModelEntry> = Vec::new();
    let mut in_list = false;
    let mut item_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if indent == 0 && !trimmed.starts_with('-') {
            in_list = trimmed.starts_with("model_list:");
            item_indent = None;
            continue;
        }
        if !in_list {
            continue;
        }
        let mut body = trimmed;
        if let Some(rest) =
            trimmed
                .strip_prefix("- ")
                .or(if trimmed == "-" { Some("") } else { None })
        {
            if item_indent.is_none_or(|at| at == indent) {
                item_indent = Some(indent);
                entries.push(ModelEntry {
                    line: line_no,
                    model_name: None,
                    model: None,
                    api_base: None,
                    key: None,
                });
            }
            body = rest.trim_start();
        }
        let Some(entry) = entries.last_mut() else {
            continue;
        };
        let Some((key, value)) = body.split_once(':') else {
            continue;
        };
        let value = unquote(value);
        match key.trim() {
            "model_name" => entry.model_name = Some(value),
            "model" => entry.model = Some(value),
            "api_base" => entry.api_base = Some(value),
            "api_key" if !value.is_empty() => {
                entry.key = Some(match value.strip_prefix("os.environ/") {
                    Some(name) => KeyRef::Env(name.to_owned()),
                    None => KeyRef::Literal(line_no),
                })
            }
            _ => {}
        }
    }
    entries
}

/// The LiteLLM config the process runs on: `--config`/`-c` on its command line (relative to
/// its working directory), else `$CONFIG_FILE_PATH`.
pub fn litellm_config_path(pid: u32, environ: &HashMap<OsString, OsString>) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut found = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some(path) = arg.strip_prefix("--config=") {
            found = Some(path.to_owned());
        } else if arg == "--config" || arg == "-c" {
            found = args.get(i + 1).cloned();
        }
    }
    let path = found
        .or_else(|| {
            environ
                .get(&OsString::from("CONFIG_FILE_PATH"))
                .map(|v| v.to_string_lossy().into_owned())
        })
        .filter(|p| !p.is_empty())?;
    let path = PathBuf::from(path);
    Some(if path.is_absolute() {
        path
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|cwd| cwd.join(&path))
            .unwrap_or(path)
    })
}

/// What to do for one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub provider: String,
    /// The variable the key is in now, if it is one.
    pub env: Option<String>,
    /// Where it was found: `environment of pid N`, `PATH line N (model M)`.
    pub found: Vec<String>,
    /// The commands and lines, in order.
    pub key_file_command: String,
    pub providers_add: String,
    pub litellm_lines: Vec<String>,
    pub models: Vec<String>,
    pub dropin_line: Option<String>,
}

fn known_by_env(env: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.env == env)
}

fn known_by_name(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name == name)
}

/// A provider name for the gateway (lower-case, `[a-z0-9_.-]`).
fn gateway_name(text: &str) -> String {
    let name: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.trim_matches(['-', '.']).to_owned()
}

struct Pending {
    env: Option<String>,
    found: Vec<String>,
    base_url: Option<String>,
    models: Vec<String>,
    literal: bool,
}

/// Findings for keys in the LiteLLM config, and the migration for every provider key found in
/// `environ` (of `pid`) or in its config. `listen` is the gateway's address.
pub fn plan(
    pid: u32,
    environ: &HashMap<OsString, OsString>,
    listen: std::net::SocketAddr,
) -> (Vec<Finding>, Vec<Migration>) {
    let mut findings = Vec::new();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    let env_names: BTreeSet<String> = environ
        .keys()
        .map(|k| k.to_string_lossy().into_owned())
        .filter(|name| known_by_env(name).is_some())
        .collect();
    let config_path = litellm_config_path(pid, environ);
    let entries = config_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|text| scan_litellm_config(&text))
        .unwrap_or_default();
    for entry in &entries {
        let Some(key) = &entry.key else { continue };
        let path = config_path.as_deref().unwrap_or(Path::new("?"));
        let model = entry.model.clone().unwrap_or_default();
        let prefix = model.split('/').next().unwrap_or_default();
        let (name, env, literal) = match key {
            KeyRef::Env(var) => {
                let name = known_by_env(var)
                    .map(|k| k.name.to_owned())
                    .unwrap_or_else(|| gateway_name(var.trim_end_matches("_API_KEY")));
                (name, Some(var.clone()), false)
            }
            KeyRef::Literal(_) => (
                gateway_name(if prefix.is_empty() {
                    "provider"
                } else {
                    prefix
                }),
                None,
                true,
            ),
        };
        let line = match key {
            KeyRef::Literal(line) => *line,
            KeyRef::Env(_) => entry.line,
        };
        let model_name = entry.model_name.clone().unwrap_or_else(|| model.clone());
        findings.push(Finding {
            check: "provider_key",
            severity: if literal { Severity::High } else { Severity::Medium },
            pid,
            subject: format!("{}:{line}", path.display()),
            detail: if literal {
                format!("model {model_name}: a provider key is written into LiteLLM's config; move it to proxyguard's provider gateway (see the migration below)")
            } else {
                format!("model {model_name}: api_key comes from {}; move it to proxyguard's provider gateway (see the migration below)", env.as_deref().unwrap_or("?"))
            },
            fixed: false,
            ownership: None,
        });
        let slot = pending.entry(name).or_insert(Pending {
            env: env.clone(),
            found: Vec::new(),
            base_url: None,
            models: Vec::new(),
            literal,
        });
        slot.found
            .push(format!("{}:{line} (model {model_name})", path.display()));
        slot.models.push(model_name);
        slot.literal |= literal;
        if slot.base_url.is_none() {
            slot.base_url = entry
                .api_base
                .clone()
                .filter(|b| !b.contains("127.0.0.1") && !b.contains("localhost"));
        }
    }
    for var in env_names {
        let known = known_by_env(&var).expect("filtered to known names");
        let slot = pending.entry(known.name.to_owned()).or_insert(Pending {
            env: Some(var.clone()),
            found: Vec::new(),
            base_url: None,
            models: Vec::new(),
            literal: false,
        });
        slot.found.push(format!("environment of pid {pid}"));
    }
    let migrations = pending
        .into_iter()
        .map(|(name, p)| {
            let known = p.env.as_deref().and_then(known_by_env).or_else(|| known_by_name(&name));
            let base_url = p
                .base_url
                .or_else(|| known.map(|k| k.base_url.to_owned()))
                .unwrap_or_else(|| "https://PROVIDER-API-HOST/v1".to_owned());
            let key_file = format!("/etc/proxyguard/providers/{name}.key");
            let key_file_command = match (&p.env, p.literal) {
                (Some(var), false) => format!(
                    "(umask 077; mkdir -p /etc/proxyguard/providers; tr '\\0' '\\n' < /proc/{pid}/environ | sed -n 's/^{var}=//p' > {key_file})"
                ),
                _ => format!(
                    "install -D -m 600 /dev/stdin {key_file}   # paste the key from LiteLLM's config, then Ctrl-D"
                ),
            };
            let mut providers_add = format!(
                "proxyguard providers add {name} --base-url {base_url} --key-file {key_file}"
            );
            if let Some(known) = known {
                if known.auth != AuthScheme::Bearer {
                    providers_add.push_str(&format!(" --auth {}", known.auth.as_str()));
                }
                if let Some(header) = known.header {
                    providers_add.push_str(&format!(" --header '{header}'"));
                }
            }
            Migration {
                provider: name.clone(),
                dropin_line: p.env.as_ref().map(|var| format!("UnsetEnvironment={var}")),
                env: p.env,
                found: p.found,
                key_file_command,
                providers_add,
                litellm_lines: vec![
                    format!("api_base: http://{listen}/{name}"),
                    "api_key: proxyguard-gateway   # a placeholder: the gateway adds the real key".to_owned(),
                ],
                models: p.models,
            }
        })
        .collect();
    (findings, migrations)
}

/// The migrations as text, for `check`.
pub fn render(migrations: &[Migration]) -> String {
    if migrations.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nmigration: run LiteLLM with no provider keys (README: \"Run LiteLLM with no provider keys\")\n");
    for m in migrations {
        out.push_str(&format!(
            "\n  {}{} (found in {}):\n",
            m.provider,
            m.env
                .as_deref()
                .map(|e| format!(", {e}"))
                .unwrap_or_default(),
            m.found.join(", ")
        ));
        out.push_str(&format!(
            "    1. the key into a root-only file:\n       {}\n",
            m.key_file_command
        ));
        out.push_str(&format!("    2. {}\n", m.providers_add));
        let models = if m.models.is_empty() {
            "each model that uses this provider".to_owned()
        } else {
            format!("models {}", m.models.join(", "))
        };
        out.push_str(&format!(
            "    3. in LiteLLM's model_list, under litellm_params of {models}:\n"
        ));
        for line in &m.litellm_lines {
            out.push_str(&format!("       {line}\n"));
        }
        match &m.dropin_line {
            Some(line) => out.push_str(&format!(
                "    4. in the service's drop-in (`proxyguard systemd harden UNIT` prints it), then restart it:\n       {line}\n"
            )),
            None => out.push_str("    4. remove the key from LiteLLM's config file (and its backups)\n"),
        }
    }
    out
}

/// The `UnsetEnvironment=` lines for `systemd harden`: every provider key variable in the
/// environment of `pids` (names only).
pub fn unset_lines(pids: &BTreeSet<u32>) -> Vec<String> {
    let mut names = BTreeSet::new();
    for pid in pids {
        let Ok(process) = procfs::process::Process::new(*pid as i32) else {
            continue;
        };
        if let Ok(environ) = process.environ() {
            names.extend(
                environ
                    .keys()
                    .map(|k| k.to_string_lossy().into_owned())
                    .filter(|n| known_by_env(n).is_some()),
            );
        }
    }
    names
        .into_iter()
        .map(|n| format!("UnsetEnvironment={n}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-sonnet
      api_key: \"sk-ant-LITERAL\"   # pasted
  -
    model_name: local
    litellm_params:
      model: openai/local
      api_base: http://127.0.0.1:9000/v1
general_settings:
  master_key: sk-master
";

    #[test]
    fn the_model_list_is_scanned_without_keeping_a_key() {
        let entries = scan_litellm_config(CONFIG);
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[0].key, Some(KeyRef::Env("OPENAI_API_KEY".into())));
        assert_eq!(entries[1].key, Some(KeyRef::Literal(9)));
        assert_eq!(
            entries[1].model.as_deref(),
            Some("anthropic/claude-3-5-sonnet")
        );
        assert_eq!(entries[2].key, None);
        assert_eq!(entries[2].model_name.as_deref(), Some("local"));
        assert!(!format!("{entries:?}").contains("LITERAL"));
    }

    #[test]
    fn the_plan_names_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("litellm.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let mut environ = HashMap::new();
        environ.insert(
            OsString::from("CONFIG_FILE_PATH"),
            path.clone().into_os_string(),
        );
        environ.insert(
            OsString::from("OPENAI_API_KEY"),
            OsString::from("sk-ENV-SECRET"),
        );
        environ.insert(
            OsString::from("MISTRAL_API_KEY"),
            OsString::from("sk-ENV-SECRET"),
        );
        // This test process has no --config: $CONFIG_FILE_PATH is used.
        let pid = std::process::id();
        let (findings, migrations) = plan(pid, &environ, "127.0.0.1:8089".parse().unwrap());
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(findings[1].severity, Severity::High);
        let names: Vec<&str> = migrations.iter().map(|m| m.provider.as_str()).collect();
        assert_eq!(names, ["anthropic", "mistral", "openai"]);
        let openai = &migrations[2];
        assert_eq!(
            openai.providers_add,
            "proxyguard providers add openai --base-url https://api.openai.com/v1 --key-file /etc/proxyguard/providers/openai.key"
        );
        assert_eq!(
            openai.litellm_lines[0],
            "api_base: http://127.0.0.1:8089/openai"
        );
        assert_eq!(
            openai.dropin_line.as_deref(),
            Some("UnsetEnvironment=OPENAI_API_KEY")
        );
        assert_eq!(openai.models, ["gpt-4o"]);
        let anthropic = &migrations[0];
        assert!(anthropic
            .providers_add
            .contains("--auth x-api-key --header 'anthropic-version: 2023-06-01'"));
        assert_eq!(anthropic.dropin_line, None);
        let text = render(&migrations);
        assert!(
            !text.contains("SECRET") && !text.contains("LITERAL"),
            "{text}"
        );
        assert!(text.contains("sed -n 's/^MISTRAL_API_KEY=//p'"), "{text}");
    }
}
