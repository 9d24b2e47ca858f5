//! `[export]`: audit lines and kernel events sent, besides stdout, to an OpenTelemetry collector
//! as OTLP logs over HTTP/protobuf (`crate::export`). Off while `otlp_endpoint` is empty.
//!
//! The endpoint receives key names, client addresses and routes, so it is a destination like any
//! other: it must be on loopback (a collector agent on the host, the usual set-up) or on the
//! `[egress] allow` list, where the operator names what may receive the host's data. The kernel
//! egress rule judges the guarded service, not proxyguard, so this check is made here.

use std::{
    net::IpAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{egress::EgressTarget, Config, FieldError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSection {
    /// `http://HOST:PORT/PATH` of an OTLP/HTTP logs receiver (usually `.../v1/logs`); empty: off.
    pub otlp_endpoint: String,
    /// Per export request; a batch not accepted in time is dropped and counted.
    pub timeout_ms: u64,
    /// Records per export request.
    pub batch_size: usize,
    /// Records waiting for export; past it new ones are dropped and counted.
    pub queue: usize,
    /// A 0600 file of `Name: value` lines sent with every export (a collector's auth token).
    /// Their values are never logged.
    pub headers_file: PathBuf,
    /// `service.instance.id`; empty: the host name.
    pub instance: String,
}

impl Default for ExportSection {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            timeout_ms: 5000,
            batch_size: 512,
            queue: 8192,
            headers_file: PathBuf::new(),
            instance: String::new(),
        }
    }
}

/// An endpoint split into what the exporter connects to and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// Path and query, `/` at least.
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url.trim().strip_prefix("http://").ok_or_else(|| {
            "must start with http:// (send to a collector agent on loopback for TLS onwards)"
                .to_owned()
        })?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err("must not carry user info; put credentials in headers_file".into());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("missing `]`")?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))?,
            None => 80,
        };
        if host.is_empty() {
            return Err("names no host".into());
        }
        Ok(Endpoint {
            host: host.to_ascii_lowercase(),
            port,
            path: path.to_owned(),
        })
    }

    /// `host:port` as a connect target (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn on_allow_list(&self, allow: &[EgressTarget]) -> bool {
        let ip = self.host.parse::<IpAddr>().ok();
        allow.iter().any(|target| match target {
            EgressTarget::Net { net, port } => {
                ip.is_some_and(|ip| net.contains(&ip)) && port.is_none_or(|p| p == self.port)
            }
            EgressTarget::Host { host, port } => *host == self.host && *port == self.port,
        })
    }
}

/// Reads `Name: value` lines (blank lines and `#` comments skipped). The file must be the
/// daemon's user's and 0600, like every secret file. Errors name lines, never values.
pub fn read_headers(path: &Path) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, String> {
    let meta = std::fs::metadata(path).map_err(|err| format!("{}: {err}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} must belong to the user proxyguard runs as",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut headers = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("{} line {}: write `Name: value`", path.display(), n + 1);
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let mut value = http::HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        value.set_sensitive(true);
        headers.push((name, value));
    }
    Ok(headers)
}

pub fn validate(config: &Config, errors: &mut Vec<FieldError>) {
    let export = &config.export;
    let mut push = |field: &str, message: String| {
        errors.push(FieldError {
            field: format!("export.{field}"),
            line: None,
            message,
        })
    };
    for (field, value) in [("batch_size", export.batch_size), ("queue", export.queue)] {
        if !(1..=super::bounds::MAX_COUNT).contains(&value) {
            push(
                field,
                format!("must be from 1 to {}", super::bounds::MAX_COUNT),
            );
        }
    }
    if export.timeout_ms == 0 || export.timeout_ms > 600_000 {
        push(
            "timeout_ms",
            "must be from 1 to 600000 (ten minutes)".into(),
        );
    }
    if export.otlp_endpoint.is_empty() {
        return;
    }
    match Endpoint::parse(&export.otlp_endpoint) {
        Err(why) => push("otlp_endpoint", why),
        Ok(endpoint) if !endpoint.loopback() && !endpoint.on_allow_list(&config.egress.allow) => {
            push(
                "otlp_endpoint",
                format!(
                    "{} is neither on loopback nor on the egress allow-list, and it would receive \
                     key names, client addresses and routes; add it with `proxyguard egress allow \
                     {}` if it is intended (the guarded service may then reach it too), or send \
                     to a collector on loopback",
                    endpoint.authority(),
                    endpoint.authority()
                ),
            )
        }
        Ok(_) => {}
    }
    if !export.headers_file.as_os_str().is_empty() {
        if let Err(why) = read_headers(&export.headers_file) {
            push("headers_file", why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(endpoint: &str, allow: &[&str]) -> Vec<String> {
        let mut config = Config::default();
        config.export.otlp_endpoint = endpoint.into();
        config.egress.allow = allow.iter().map(|t| t.parse().unwrap()).collect();
        let mut errors = Vec::new();
        validate(&config, &mut errors);
        errors
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn the_endpoint_must_be_loopback_or_allowed() {
        assert!(errors("", &[]).is_empty());
        assert!(errors("http://127.0.0.1:4318/v1/logs", &[]).is_empty());
        assert!(errors("http://[::1]:4318/v1/logs", &[]).is_empty());
        assert!(errors("http://localhost:4318/v1/logs", &[]).is_empty());
        let off = errors("http://collector.example:4318/v1/logs", &[]);
        assert_eq!(off.len(), 1, "{off:?}");
        assert!(
            off[0].starts_with("export.otlp_endpoint: collector.example:4318 is neither"),
            "{off:?}"
        );
        assert!(errors(
            "http://collector.example:4318/v1/logs",
            &["collector.example:4318"]
        )
        .is_empty());
        assert!(errors("http://10.1.2.3:4318/v1/logs", &["10.1.0.0/16"]).is_empty());
        assert_eq!(
            errors("http://10.1.2.3:4318/v1/logs", &["10.1.0.0/16:443"]).len(),
            1
        );
        let tls = errors("https://127.0.0.1:4318/v1/logs", &[]);
        assert!(tls[0].contains("must start with http://"), "{tls:?}");
        let user = errors("http://u:p@127.0.0.1:4318/v1/logs", &[]);
        assert!(
            user[0].contains("user info") && !user[0].contains("u:p"),
            "{user:?}"
        );
    }

    #[test]
    fn endpoints_split_into_authority_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:4318/v1/logs").unwrap();
        assert_eq!(
            (e.authority().as_str(), e.path.as_str()),
            ("127.0.0.1:4318", "/v1/logs")
        );
        let e = Endpoint::parse("http://[::1]/x?y=1").unwrap();
        assert_eq!(
            (e.authority().as_str(), e.path.as_str()),
            ("[::1]:80", "/x?y=1")
        );
    }

    #[test]
    fn headers_files_are_secret_files_and_errors_show_no_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers");
        std::fs::write(
            &path,
            "# auth\nAuthorization: Bearer s3cret\n\nx-tenant: a\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = read_headers(&path).unwrap_err();
        assert!(open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let headers = read_headers(&path).unwrap();
        assert_eq!(headers.len(), 2);
        assert!(headers[0].1.is_sensitive());
        std::fs::write(&path, "Authorization Bearer s3cret\n").unwrap();
        let bad = read_headers(&path).unwrap_err();
        assert!(bad.contains("line 1") && !bad.contains("s3cret"), "{bad}");
    }
}
