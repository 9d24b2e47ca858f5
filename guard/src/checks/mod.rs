//! The guarded-process audits behind `proxyguard check` and the daemon's continuous checks:
//! secret-looking names in its environment, endpoints outside the egress allow-list, temp files
//! others can read, and listeners off loopback. Findings carry names, paths and addresses, never
//! a variable's value or a file's contents.

pub mod continuous;
pub mod created;
pub mod endpoints;
pub mod listeners;
pub mod ownership;
mod private_tmp;
pub mod secrets;
pub mod tempfiles;
pub mod upstream_clients;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;

use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One problem found in one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `secret_env`, `endpoint`, `temp_file`, `open_file`, `listener`, `unreadable`.
    pub check: &'static str,
    pub severity: Severity,
    pub pid: u32,
    /// What it is about: a variable name, a path, an address.
    pub subject: String,
    /// Why it matters and what to do.
    pub detail: String,
    /// `--fix` (or the daemon in fix mode) repaired it.
    pub fixed: bool,
    /// For a file: the proof that it is the service's, or `unproven` (reported, never changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ownership: Option<ownership::Ownership>,
}

/// Runs every audit over `pids` (every process of the service). With `fix`, temp and open files
/// proven to be the service's get mode 0600 where that is safe; `history` says whether files it
/// created count as proven (the daemon) or cannot be known (a one-shot check).
pub fn run(
    config: &Config,
    pids: &BTreeSet<u32>,
    fix: bool,
    history: ownership::History,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut seen_files = BTreeSet::new();
    let evidence = ownership::Evidence::gather(pids, history);
    for &pid in pids {
        let Ok(process) = procfs::process::Process::new(pid as i32) else {
            continue;
        };
        let environ = match process.environ() {
            Ok(environ) => environ,
            Err(err) => {
                findings.push(Finding {
                    check: "unreadable",
                    severity: Severity::Low,
                    pid,
                    subject: format!("/proc/{pid}/environ"),
                    detail: format!("cannot read its environment ({err}); secrets and endpoints are not checked"),
                    fixed: false,
                    ownership: None,
                });
                HashMap::<OsString, OsString>::new()
            }
        };
        findings.extend(secrets::check(pid, &environ, &config.watch.secret_names));
        findings.extend(endpoints::check(pid, &environ, &config.egress));
        findings.extend(tempfiles::check(
            &process,
            &environ,
            &config.watch.temp_dirs,
            fix,
            &evidence,
            &mut seen_files,
        ));
        findings.extend(listeners::check(&process, config.egress.guard_port));
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.pid.cmp(&b.pid)));
    findings
}
