//! `proxyguard check`: a one-shot audit of the guarded service (or of any process by `--pid` or
//! `--unit`): secrets in its environment (names only), endpoints off the egress allow-list, temp
//! and open files others can read, and listeners off loopback; and, host-wide, local processes
//! connected to the upstream from outside proxyguard's cgroup. Exit 0 clean, 1 findings. The bind,
//! egress and upstream rules in force and the kernel features available are shown as context.

use std::{collections::BTreeSet, path::Path, process::ExitCode};

use serde_json::json;

use crate::{
    checks::{self, ownership::History, Finding},
    config::{Config, ConfigError, GuardedSection},
    guarded_pids,
    kernel::{self, cgroup},
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Repair what can be repaired safely: temp and open files proven to be the service's (it
    /// holds them open for writing, or they are in its private temp dir) get mode 0600, never
    /// through a symlink, never a file of another user. Other files of the same owner are
    /// reported only.
    #[arg(long)]
    pub fix: bool,
    /// Audit this process instead of the configured service (no config file needed).
    #[arg(long, value_name = "PID", conflicts_with = "unit")]
    pub pid: Option<u32>,
    /// Audit this systemd unit's processes instead of the configured service.
    #[arg(long, value_name = "NAME")]
    pub unit: Option<String>,
}

pub fn run(config_path: &Path, json: bool, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let ad_hoc = args.pid.is_some() || args.unit.is_some();
    // Ad hoc, a missing config means the defaults (an empty egress allow-list among them).
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(ConfigError::Read { .. }) if ad_hoc => Config::default(),
        Err(err) => return Err(err.into()),
    };
    let root = cgroup::cgroup2_root().ok();
    let pids: BTreeSet<u32> = match (&args.pid, &args.unit) {
        (Some(pid), _) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("proxyguard: no process {pid}");
                return Ok(ExitCode::from(2));
            }
            BTreeSet::from([*pid])
        }
        (None, Some(unit)) => {
            let section = GuardedSection {
                unit: Some(unit.clone()),
                ..Default::default()
            };
            guarded_pids::tgids(&section, root.as_deref())
        }
        (None, None) => {
            if !config.guarded.is_set() {
                eprintln!(
                    "proxyguard: no [guarded] service in {}; set one, or use --pid PID or --unit NAME",
                    config_path.display()
                );
                return Ok(ExitCode::from(2));
            }
            guarded_pids::tgids(&config.guarded, root.as_deref())
        }
    };
    if pids.is_empty() {
        eprintln!("proxyguard: the service has no running processes; nothing to check");
        return Ok(ExitCode::from(2));
    }
    // A one-shot has no record of the files the service created: only open files and private
    // temp dirs prove a file its own.
    let mut findings = checks::run(&config, &pids, args.fix, History::None);
    // Provider keys LiteLLM holds (its environment and its config file), and how to move each
    // into the provider gateway.
    let mut migrations: Vec<crate::providers::migrate::Migration> = Vec::new();
    for pid in &pids {
        let Ok(environ) = procfs::process::Process::new(*pid as i32).and_then(|p| p.environ())
        else {
            continue;
        };
        let (found, planned) =
            crate::providers::migrate::plan(*pid, &environ, config.providers.listen);
        // Workers of one service share its config: one finding per line, not per process.
        for finding in found {
            if !findings
                .iter()
                .any(|f| f.check == finding.check && f.subject == finding.subject)
            {
                findings.push(finding);
            }
        }
        for migration in planned {
            if !migrations.iter().any(|m| m.provider == migration.provider) {
                migrations.push(migration);
            }
        }
    }
    // Host-wide: whoever talks to the upstream without going through proxyguard.
    findings.extend(checks::upstream_clients::check(&config));
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.pid.cmp(&b.pid)));
    // Context, not findings: the rules in force and what this kernel offers.
    let rules = rules(&config);
    let features = kernel::probe_features();
    if json {
        println!(
            "{}",
            json!({
                "pids": pids,
                "findings": findings,
                "fixed": findings.iter().filter(|f| f.fixed).count(),
                "ownership_evidence": {
                    "held_open": true,
                    "private_tmp": true,
                    "created_by_service": false,
                    "note": CREATED_NOTE,
                },
                "rules": rules,
                "kernel_features": features,
                "migration": migrations,
            })
        );
    } else {
        print!("{}", render(&pids, &findings));
        print!("{}", crate::providers::migrate::render(&migrations));
        print!("{}", render_context(&rules, &features));
    }
    Ok(if findings.iter().any(|f| !f.fixed) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Why `created_by_service` is never evidence here.
const CREATED_NOTE: &str = "a one-shot check has no record of the files the service created; \
     only the daemon's fix mode ([watch] temp_files = \"fix\") proves ownership that way";

/// The bind, egress and upstream rules of the config, as the kernel enforces them.
fn rules(config: &Config) -> serde_json::Value {
    let bind: Vec<_> = config
        .bind
        .rules
        .iter()
        .map(|r| json!({ "port": r.port, "allow": r.allow, "owner": r.owner }))
        .collect();
    json!({
        "bind": { "enabled": config.bind.enabled, "mode": config.bind.mode.as_str(), "rules": bind },
        "egress": {
            "enabled": config.egress.enabled,
            "mode": config.egress.mode.as_str(),
            "allow": config.egress.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "dns": config.egress.dns,
            "guard_port": config.egress.guard_port,
        },
        "upstream_guard": {
            "enabled": config.upstream_guard.enabled,
            "mode": config.upstream_guard.mode.as_str(),
            "port": kernel::upstream_destinations(config).map(|(port, _)| port),
            "allow_cgroups": config.upstream_guard.allow_cgroups,
        },
    })
}

fn render_context(rules: &serde_json::Value, features: &[kernel::Feature]) -> String {
    let mut out = String::from(
        "
rules:
",
    );
    let bind = &rules["bind"];
    for rule in bind["rules"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  bind   port {} only on {}{} ({})\n",
            rule["port"],
            rule["allow"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" "))
                .unwrap_or_default(),
            rule["owner"]
                .as_str()
                .map(|o| format!(", by {o}"))
                .unwrap_or_default(),
            bind["mode"].as_str().unwrap_or("?"),
        ));
    }
    let egress = &rules["egress"];
    let allow: Vec<&str> = egress["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    out.push_str(&format!(
        "  egress {} ({}), DNS and loopback:{} always\n",
        if allow.is_empty() {
            "nothing listed".to_owned()
        } else {
            allow.join(" ")
        },
        egress["mode"].as_str().unwrap_or("?"),
        egress["guard_port"],
    ));
    let upstream = &rules["upstream_guard"];
    out.push_str(
        &match (upstream["enabled"].as_bool(), upstream["port"].as_u64()) {
            (Some(true), Some(port)) => format!(
                "  upstream port {port} on this host only from proxyguard's cgroup{} ({})\n",
                upstream["allow_cgroups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .map(|c| format!(", {c}"))
                    .collect::<String>(),
                upstream["mode"].as_str().unwrap_or("?"),
            ),
            (Some(true), None) => "  upstream not on this host: no connect rule\n".to_owned(),
            _ => "  upstream connect rule off\n".to_owned(),
        },
    );
    out.push_str("\nkernel features:\n");
    for f in features {
        let mark = if f.available { "yes" } else { "no " };
        out.push_str(&format!("  {mark} {:<10} {}\n", f.name, f.detail));
    }
    out
}

fn render(pids: &BTreeSet<u32>, findings: &[Finding]) -> String {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut out = format!("checked pids {}\n", pids.join(", "));
    if findings.is_empty() {
        out.push_str("no findings\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<8} {:<11} {:<8} {:<40} {}\n",
        "SEVERITY", "CHECK", "PID", "SUBJECT", "DETAIL"
    ));
    for f in findings {
        let status = if f.fixed { "fixed: " } else { "" };
        out.push_str(&format!(
            "{:<8} {:<11} {:<8} {:<40} {status}{}\n",
            f.severity.as_str(),
            f.check,
            f.pid,
            f.subject,
            f.detail
        ));
    }
    let open = findings.iter().filter(|f| !f.fixed).count();
    out.push_str(&format!(
        "\n{} findings, {} fixed\n",
        findings.len(),
        findings.len() - open
    ));
    if findings.iter().any(|f| f.ownership.is_some()) {
        out.push_str(&format!(
            "files are changed only when proven the service's (held open for writing, or in its private temp dir); {CREATED_NOTE}\n"
        ));
    }
    out
}
