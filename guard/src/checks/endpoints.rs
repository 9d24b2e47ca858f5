//! Endpoints named in the environment (`OTEL_EXPORTER_OTLP_*ENDPOINT`, `*_API_BASE`,
//! `*_BASE_URL`) checked against the egress allow-list (threat 11): a wrong OTLP endpoint sends
//! prompts out. Only scheme, host and port are ever shown; user info, paths and queries are not.

use std::{collections::HashMap, ffi::OsString, net::IpAddr};

use super::{secrets::matches, Finding, Severity};
use crate::config::{egress::EgressTarget, EgressSection};

const ENDPOINT_NAMES: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_*_ENDPOINT",
    "*_API_BASE",
    "*_BASE_URL",
];

pub fn check(
    pid: u32,
    environ: &HashMap<OsString, OsString>,
    egress: &EgressSection,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut names: Vec<(String, String)> = environ
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .filter(|(k, _)| ENDPOINT_NAMES.iter().any(|p| matches(p, k)))
        .collect();
    names.sort();
    for (name, value) in names {
        let Some((scheme, host, port)) = authority(&value) else {
            out.push(Finding {
                check: "endpoint",
                severity: Severity::Medium,
                pid,
                subject: name,
                detail: "not a URL proxyguard can parse; check it by hand".into(),
                fixed: false,
                ownership: None,
            });
            continue;
        };
        if allowed(&host, port, egress) {
            continue;
        }
        out.push(Finding {
            check: "endpoint",
            severity: Severity::High,
            pid,
            detail: format!(
                "points at {scheme}://{host}:{port}, which is not on the egress allow-list; \
                 add it with `proxyguard egress allow {host}:{port}` if it is intended, \
                 otherwise fix the variable"
            ),
            subject: name,
            fixed: false,
            ownership: None,
        });
    }
    out
}

/// Scheme, host and port of a URL (the port defaulted from the scheme).
fn authority(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    // User info never leaves this function.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => match scheme.as_str() {
            "https" | "grpcs" => 443,
            "http" | "grpc" => 80,
            _ => return None,
        },
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

fn allowed(host: &str, port: u16, egress: &EgressSection) -> bool {
    let ip = host.parse::<IpAddr>().ok();
    egress.allow.iter().any(|target| match target {
        EgressTarget::Net { net, port: p } => {
            ip.is_some_and(|ip| net.contains(&ip)) && p.is_none_or(|p| p == port)
        }
        EgressTarget::Host { host: h, port: p } => h.eq_ignore_ascii_case(host) && *p == port,
    }) || (ip.is_some_and(|ip| ip.is_loopback()) && port == egress.guard_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<OsString, OsString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn endpoints_off_the_list_are_findings_without_credentials() {
        let egress = EgressSection {
            allow: vec![
                "api.openai.com:443".parse().unwrap(),
                "10.0.0.0/8:4317".parse().unwrap(),
            ],
            ..Default::default()
        };
        let environ = env(&[
            ("OPENAI_API_BASE", "https://api.openai.com/v1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://10.1.2.3:4317"),
            (
                "AZURE_BASE_URL",
                "https://user:hunter2@evil.example:8443/x?key=abc",
            ),
            ("HOME", "/root"),
        ]);
        let found = check(1, &environ, &egress);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].subject, "AZURE_BASE_URL");
        assert!(
            found[0].detail.contains("https://evil.example:8443"),
            "{}",
            found[0].detail
        );
        let text = format!("{found:?}");
        assert!(!text.contains("hunter2") && !text.contains("key=abc"));
    }
}
