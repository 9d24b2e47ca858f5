//! `proxyguard check`: a one-shot audit of the guarded service (or of any process by `--pid` or
//! `--unit`): secrets in its environment (names only), endpoints off the egress allow-list, temp
//! and open files others can read, and listeners off loopback. Exit 0 clean, 1 findings.

use std::{collections::BTreeSet, path::Path, process::ExitCode};

use serde_json::json;

use crate::{
    checks::{self, Finding},
    config::{Config, ConfigError, GuardedSection},
    guarded_pids,
    kernel::cgroup,
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Repair what can be repaired safely: temp and open files of the service get mode 0600
    /// (never through a symlink, never a file of another user).
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
    let findings = checks::run(&config, &pids, args.fix);
    if json {
        println!(
            "{}",
            json!({ "pids": pids, "findings": findings, "fixed": findings.iter().filter(|f| f.fixed).count() })
        );
    } else {
        print!("{}", render(&pids, &findings));
    }
    Ok(if findings.iter().any(|f| !f.fixed) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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
    out
}
