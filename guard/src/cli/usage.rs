//! `proxyguard usage [--key NAME]`: per key and model, tokens in and out, requests, spend, and
//! what is left of each budget in the current windows. It asks the running daemon; when none
//! answers, it reads the state file (`proxy.usage.state_dir`), which is at most
//! `persist_secs` behind.
//!
//! Also the two key commands that touch the usage state: `keys resume` and the suspensions
//! `keys list` shows.

use std::{collections::HashMap, path::Path, process::ExitCode};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{
    config::{proxy::KeyEntry, Config},
    control::{client, Command, ControlError},
    proxy::budget::{clock, ledger, persist, policy::Policy},
};

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Only this key.
    #[arg(long, value_name = "NAME")]
    pub key: Option<String>,
}

pub fn run(config_path: &Path, json: bool, args: UsageArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let report = report(&config, args.key.as_deref())?;
    if let Some(key) = &args.key {
        if report["keys"].as_array().is_none_or(|keys| keys.is_empty()) {
            bail!("no key named \"{key}\" in {}", config_path.display());
        }
    }
    if json {
        println!("{report}");
    } else {
        print!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's report, or the state file's when no daemon answers.
fn report(config: &Config, key: Option<&str>) -> anyhow::Result<Value> {
    let command = Command::Usage {
        key: key.map(str::to_owned),
    };
    match client::request(&config.control.socket, &command) {
        Ok(answer) if answer.get("error").is_none() => return Ok(answer),
        Ok(answer) => tracing::debug!("daemon: {answer}"),
        Err(ControlError::Connect { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let Some(dir) = persist::state_dir(&config.proxy.usage) else {
        bail!(
            "no daemon answers on {} and no state directory is set (proxy.usage.state_dir)",
            config.control.socket.display()
        );
    };
    let mut book = persist::read(&dir)?;
    let now = clock::now();
    let mut keys = Vec::new();
    for entry in &config.proxy.keys {
        if key.is_some_and(|k| k != entry.name) {
            continue;
        }
        let counts = book.keys.entry(entry.name.clone()).or_default();
        counts.roll(now);
        keys.push(ledger::key_report(&entry.name, counts, &policy(entry), now));
    }
    Ok(json!({ "keys": keys, "from_state_file": dir.join(persist::FILE) }))
}

/// The limits of a key as `usage` shows them (sources play no part there).
fn policy(key: &KeyEntry) -> Policy {
    Policy {
        tpm: key.tpm,
        tokens_per_day: key.tokens_per_day,
        input_tokens_per_day: key.input_tokens_per_day,
        output_tokens_per_day: key.output_tokens_per_day,
        requests_per_day: key.requests_per_day,
        usd_per_day: key.usd_per_day,
        usd_per_month: key.usd_per_month,
        models: key.models.clone(),
        from: Vec::new(),
    }
}

fn render(report: &Value) -> String {
    let mut out = String::new();
    let show = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(0.0)),
        other => other.to_string(),
    };
    for key in report["keys"].as_array().into_iter().flatten() {
        let state = match &key["suspended"] {
            Value::Null => "active".to_string(),
            s => format!("suspended since {}", s["since"].as_str().unwrap_or("?")),
        };
        out.push_str(&format!(
            "{} ({state})\n",
            key["name"].as_str().unwrap_or("?")
        ));
        let (today, left, limits) = (&key["today"], &key["left"], &key["limits"]);
        out.push_str(&format!(
            "  today: {} tokens, {} requests, ${}; this month ${}; last minute {} tokens\n",
            today["tokens"],
            today["requests"],
            show(&today["usd"]),
            show(&key["month"]["usd"]),
            key["last_minute_tokens"]
        ));
        // `[fleet]`: the counts of every instance on the Redis (the lines above are this host's).
        let fleet = &key["fleet"];
        if fleet.is_object() {
            let shared = &fleet["today"];
            let counts = if shared.is_object() {
                format!(
                    "{} tokens, {} requests, ${}",
                    shared["tokens"],
                    shared["requests"],
                    show(&shared["usd"])
                )
            } else {
                "unknown (Redis does not answer)".to_owned()
            };
            out.push_str(&format!(
                "  fleet today (every instance; this is {}, {}): {counts}\n",
                fleet["instance"].as_str().unwrap_or("?"),
                fleet["mode"].as_str().unwrap_or("?"),
            ));
        }
        for name in [
            "tpm",
            "tokens_per_day",
            "input_tokens_per_day",
            "output_tokens_per_day",
            "requests_per_day",
            "usd_per_day",
            "usd_per_month",
        ] {
            if !limits[name].is_null() {
                out.push_str(&format!(
                    "  {name}: {} of {} left\n",
                    show(&left[name]),
                    show(&limits[name])
                ));
            }
        }
        if let Some(models) = key["month"]["models"].as_object() {
            for (model, m) in models {
                out.push_str(&format!(
                    "  {model:<24} in {:<10} out {:<10} requests {:<8} ${}{}\n",
                    m["tokens_in"],
                    m["tokens_out"],
                    m["requests"],
                    show(&m["usd"]),
                    if m["estimated_requests"].as_u64().unwrap_or(0) > 0 {
                        format!(" ({} estimated)", m["estimated_requests"])
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    if out.is_empty() {
        out.push_str("no keys\n");
    }
    out
}

/// Lifts `name`'s suspension: in the daemon, or in the state file when none runs.
pub fn resume(config: &Config, name: &str) -> anyhow::Result<bool> {
    if !config.proxy.keys.iter().any(|k| k.name == name) {
        bail!("no key named \"{name}\" in the config");
    }
    let command = Command::Resume { key: name.into() };
    match client::request(&config.control.socket, &command) {
        Ok(answer) if answer.get("error").is_none() => {
            return Ok(answer["resumed"] == true);
        }
        Ok(answer) => bail!("the daemon refused: {}", answer["error"]),
        Err(ControlError::Connect { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    let dir = persist::state_dir(&config.proxy.usage)
        .context("no daemon answers and no state directory is set (proxy.usage.state_dir)")?;
    let mut book = persist::read(&dir)?;
    let lifted = book
        .keys
        .get_mut(name)
        .and_then(|entry| entry.suspended.take())
        .is_some();
    if lifted {
        persist::write(&dir, &book)
            .with_context(|| format!("cannot write {}", dir.join(persist::FILE).display()))?;
    }
    Ok(lifted)
}

/// Suspended keys and since when: from the daemon, or the state file; none when neither says.
pub fn suspensions(config: &Config) -> HashMap<String, String> {
    let Ok(report) = report(config, None) else {
        return HashMap::new();
    };
    report["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|key| {
            Some((
                key["name"].as_str()?.to_owned(),
                key["suspended"]["since"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_daemon_resume_and_list_use_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.control.socket = dir.path().join("no-daemon.sock");
        config.proxy.usage.state_dir = Some(dir.path().into());
        config.proxy.keys = vec![
            KeyEntry::new("k", &"a".repeat(64)),
            KeyEntry::new("other", &"b".repeat(64)),
        ];
        let mut book = ledger::Book::default();
        book.keys.entry("k".into()).or_default().suspended = Some(ledger::Suspension {
            since: "2026-12-01T11:00:00Z".into(),
            reason: "usage_spike".into(),
        });
        persist::write(dir.path(), &book).unwrap();
        assert_eq!(
            suspensions(&config).get("k").map(String::as_str),
            Some("2026-12-01T11:00:00Z")
        );
        assert!(!suspensions(&config).contains_key("other"));
        assert!(resume(&config, "k").unwrap());
        assert!(!resume(&config, "k").unwrap(), "only once");
        assert!(resume(&config, "nobody").is_err());
        assert!(suspensions(&config).is_empty());
        assert!(persist::read(dir.path()).unwrap().keys["k"]
            .suspended
            .is_none());
    }

    #[test]
    fn the_table_shows_use_limits_left_and_models() {
        let mut entry = ledger::KeyBook::default();
        entry.day_tokens = 58;
        entry.day_requests = 3;
        entry.suspended = Some(ledger::Suspension {
            since: "2026-12-01T11:00:00Z".into(),
            reason: "usage_spike".into(),
        });
        entry.models = [(
            "mock-gpt".to_string(),
            ledger::ModelBook {
                input: 26,
                output: 32,
                requests: 3,
                usd: 0.058,
                estimated: 1,
            },
        )]
        .into();
        let policy = Policy {
            tokens_per_day: Some(100),
            ..Policy::default()
        };
        let report = json!({ "keys": [ledger::key_report("ci", &entry, &policy, 0)] });
        let text = render(&report);
        for want in [
            "ci (suspended since 2026-12-01T11:00:00Z)",
            "today: 58 tokens, 3 requests",
            "tokens_per_day: 42 of 100 left",
            "mock-gpt",
            "(1 estimated)",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(
            !text.contains("usd_per_day"),
            "unset limits are not shown:\n{text}"
        );
    }
}
