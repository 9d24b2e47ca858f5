//! The two nginx processes of the L7 bench, each with its own master and workers: the upstream
//! (a fixed chat completion for the upstream's key, 401 otherwise) and nginx as the comparison
//! guard, configured as a user who wanted proxyguard's checks from nginx would configure it: every
//! check nginx can express, and no more (BENCHMARKS.md lists what it cannot).
//!
//! The guard's lists of headers are read from proxyguard's own source
//! (`guard/src/proxy/upstream_surface.rs`) when the bench runs, so the two never drift apart; its
//! routes are proxyguard's built-in LiteLLM table (`guard/src/proxy/routes.rs`), written out here.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::peers::{self, Process};
use crate::cmd;

/// proxyguard's `[proxy.limits]` defaults that nginx can mirror (`guard/src/config/default.toml`).
pub const MAX_BODY_BYTES: u64 = 2_097_152;
pub const MAX_HEADER_VALUE_BYTES: u64 = 8192;
pub const MAX_HEADER_BYTES: u64 = 32_768;

/// The OpenAI routes of the LiteLLM profile (`OPENAI_ROUTES` in routes.rs): name and method,
/// each served with and without `/v1`; `messages` only under `/v1` (`MESSAGES`).
const ROUTES: &[(&str, &str)] = &[
    ("chat/completions", "POST"),
    ("completions", "POST"),
    ("embeddings", "POST"),
    ("models", "GET"),
    ("responses", "POST"),
    ("moderations", "POST"),
];

/// The prefix of the same routes attributed to a rollout (`/rollout/{rid:id}/attempt/{aid:id}`).
const ROLLOUT: &str = "/rollout/[A-Za-z0-9_-]{1,128}/attempt/[A-Za-z0-9_-]{1,128}";

/// Headers proxyguard refuses with 400 (`layers::reserved`, always on).
pub const RESERVED: &[&str] = &["x-rollout-id", "x-attempt-id", "x-sequence-id"];

/// The main-context lines every bench nginx shares: foreground, its own pid and error log.
pub(super) fn common(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 16384; }}
"#
    )
}

fn temp_paths(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "    client_body_temp_path {dir}/body;\n    proxy_temp_path {dir}/proxy;\n    fastcgi_temp_path {dir}/fastcgi;\n    uwsgi_temp_path {dir}/uwsgi;\n    scgi_temp_path {dir}/scgi;\n"
    )
}

/// Checks and starts nginx on `config` in `dir`, and waits until every port listens.
pub(super) fn start(dir: &Path, config: String, ports: &[(u16, &str)]) -> Result<Process> {
    fs::create_dir_all(dir.join("logs"))?;
    let path = dir.join("nginx.conf");
    fs::write(&path, config)?;
    // Checked first, so a bad config says why instead of "did not listen".
    cmd::run(
        Command::new("nginx")
            .arg("-t")
            .arg("-q")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir),
    )
    .with_context(|| format!("nginx refused {}", path.display()))?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    // The master stops its workers on SIGTERM; SIGKILL would leave them holding the port.
    let process = Process::graceful(child);
    for (port, what) in ports {
        peers::wait_for(*port, what)?;
    }
    Ok(process)
}

/// The upstream: `peers::RESPONSE` on `port` for `Authorization: Bearer <upstream_key>`, 401
/// for anything else, so a guard that does not set the upstream's key shows as non-2xx. Default
/// worker count (`auto`), keep-alive without a request cap.
pub fn upstream(dir: &Path, port: u16, upstream_key: &str) -> Result<Process> {
    let config = format!(
        r#"{common}worker_processes auto;
http {{
    access_log off;
{temp}    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            if ($http_authorization != "Bearer {upstream_key}") {{ return 401; }}
            default_type application/json;
            return 200 '{response}';
        }}
    }}
}}
"#,
        common = common(dir),
        temp = temp_paths(dir),
        response = peers::RESPONSE,
    );
    start(dir, config, &[(port, "nginx (upstream)")])
}

/// The quoted string items of `pub const NAME: &[&str] = &[...]` in `source`.
pub fn const_list(source: &str, name: &str) -> Result<Vec<String>> {
    let open = format!("pub const {name}: &[&str] = &[");
    let at = source
        .find(&open)
        .with_context(|| format!("no `{open}` in upstream_surface.rs"))?;
    let rest = &source[at + open.len()..];
    let end = rest
        .find("];")
        .with_context(|| format!("`{name}` is not closed"))?;
    let items: Vec<String> = rest[..end]
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .flat_map(|line| line.split(','))
        .filter_map(|item| {
            let item = item.trim();
            Some(item.strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
        .collect();
    if items.is_empty() {
        bail!("`{name}` in upstream_surface.rs lists nothing");
    }
    Ok(items)
}

/// Every header proxyguard removes from requests by name (credentials but `Authorization`, which
/// the guard sets, the control headers and the client-address headers), from its source.
/// Prefix families (`x-litellm-*`, `litellm-*`, `x-mcp-*`, `typesafe-danger-zone-*`,
/// `x-forwarded-*`) nginx cannot express: only the names are removed.
pub fn removed_headers() -> Result<Vec<String>> {
    let path = cmd::workspace_root().join("guard/src/proxy/upstream_surface.rs");
    let source =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut names = Vec::new();
    for list in [
        "CREDENTIAL_HEADERS",
        "IDENTITY_HEADERS",
        "LOGGING_HEADERS",
        "ROUTING_HEADERS",
        "OUTBOUND_HEADERS",
        "GUARDRAIL_HEADERS",
        "CLIENT_IP_HEADERS",
    ] {
        names.extend(const_list(&source, list)?);
    }
    // Set by the guard itself below; the common x-forwarded-* names besides are removed.
    names.retain(|name| name != "authorization");
    names.extend(["x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix"].map(String::from));
    names.sort();
    names.dedup();
    Ok(names)
}

/// The checks of one allowed route: method, key, reserved headers, query, limits, then the
/// upstream. `query` is the regex the whole query string must match (`^$`: none, checked
/// without a regex).
fn route_block(method: &str, query: &str) -> String {
    let query = if query == "^$" {
        "            if ($args) { return 400; }\n".to_owned()
    } else {
        format!("            if ($args !~ \"{query}\") {{ return 400; }}\n")
    };
    format!(
        r#"            if ($request_method != {method}) {{ return 405; }}
            if ($client_key = "") {{ return 401; }}
            if ($reserved) {{ return 400; }}
{query}            limit_req zone=perip burst=1000000 nodelay;
            limit_req zone=perkey burst=1000000 nodelay;
            limit_conn perkey_concurrent 4096;
            proxy_pass http://llm;
"#
    )
}

/// nginx as the guard on `port`, in front of `upstream_port`, with default workers (`auto`).
pub fn guard(
    dir: &Path,
    upstream_port: u16,
    port: u16,
    client_key: &str,
    upstream_key: &str,
) -> Result<Process> {
    let mut locations = String::new();
    let mut location = |pattern: String, method: &str, query: &str| {
        locations.push_str(&format!(
            "        location {pattern} {{\n{}        }}\n",
            route_block(method, query)
        ));
    };
    for (name, method) in ROUTES {
        location(format!("= /{name}"), method, "^$");
        location(format!("= /v1/{name}"), method, "^$");
    }
    // Anthropic's SDK sends `?beta=true` on messages; nothing else takes a query.
    location("= /v1/messages".into(), "POST", "^(beta=[^&]*)?$");
    // The same routes under a rollout: one regex location per method.
    let posts: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, m)| *m == "POST")
        .map(|(n, _)| *n)
        .collect();
    location(
        format!("~ \"^{ROLLOUT}(/v1)?/({})$\"", posts.join("|")),
        "POST",
        "^$",
    );
    location(format!("~ \"^{ROLLOUT}(/v1)?/models$\""), "GET", "^$");
    location(
        format!("~ \"^{ROLLOUT}/v1/messages$\""),
        "POST",
        "^(beta=[^&]*)?$",
    );
    let removed: String = removed_headers()?
        .iter()
        .map(|name| format!("        proxy_set_header {name} \"\";\n"))
        .collect();
    let reserved: String = RESERVED
        .iter()
        .map(|name| format!("$http_{}", name.replace('-', "_")))
        .collect();
    let dir_text = dir.display();
    let config = format!(
        r#"{common}worker_processes auto;
http {{
{temp}    access_log off;
    # proxyguard's [proxy.limits]: the body limit, one header line and the whole head.
    client_max_body_size {MAX_BODY_BYTES};
    # proxyguard buffers the whole body in memory before its checks; so does nginx up to this.
    client_body_buffer_size {MAX_BODY_BYTES};
    large_client_header_buffers {buffers} {MAX_HEADER_VALUE_BYTES};
    # ([proxy.timeouts]: the head, idle keep-alive, the body, the upstream, a stalled client.)
    client_header_timeout 10s;
    keepalive_timeout 10s;
    client_body_timeout 30s;
    proxy_read_timeout 600s;
    send_timeout 60s;
    # proxyguard caps no connection's request count; nginx's default 1000 would make wrk reconnect.
    keepalive_requests 1000000;
    # Defaults, named: headers spelled with `_` are dropped, never forwarded.
    underscores_in_headers off;
    ignore_invalid_headers on;

    map_hash_bucket_size 256;
    # The key check: the client key's name, or empty (401).
    map $http_authorization $client_key {{
        default "";
        "Bearer {client_key}" bench;
    }}
    # Reserved headers, refused with 400 (x-rollout-id, x-attempt-id, x-sequence-id).
    map "{reserved}" $reserved {{
        default 1;
        "" 0;
    }}
    # Rate limits per IP and per key and concurrency per key, sized never to trigger.
    limit_req_zone $binary_remote_addr zone=perip:10m rate=1000000r/s;
    limit_req_zone $client_key zone=perkey:10m rate=1000000r/s;
    limit_conn_zone $client_key zone=perkey_concurrent:10m;
    # One line per request, as proxyguard's audit line: gathered and written in batches at most
    # 5 ms late (proxyguard's writer gathers for 5 ms too).
    log_format audit escape=json '{{"time":"$time_iso8601","kind":"request","key":"$client_key","client":"$remote_addr","method":"$request_method","route":"$uri","status":$status,"request_bytes":$request_length,"response_bytes":$bytes_sent,"ms":$request_time,"upstream_ms":"$upstream_response_time"}}';

    upstream llm {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {dir_text}/audit.jsonl audit buffer=64k flush=5ms;
        # Keep-alive to the upstream, the upstream's key, the client's address.
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Authorization "Bearer {upstream_key}";
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        # Credential, control and client-address headers proxyguard removes, by name.
{removed}
        # The route allow-list: anything else is 404 (LiteLLM's admin API included, closed
        # as proxyguard closes it to keys not named in admin_routes).
        location / {{ return 404; }}
{locations}    }}
}}
"#,
        common = common(dir),
        temp = temp_paths(dir),
        buffers = MAX_HEADER_BYTES / MAX_HEADER_VALUE_BYTES,
    );
    start(dir, config, &[(port, "nginx (guard)")])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lists_from_the_guard_source() {
        let names = removed_headers().unwrap();
        for name in [
            "x-litellm-api-key",
            "x-litellm-tags",
            "traceparent",
            "x-mcp-servers",
            "x-real-ip",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(!names.iter().any(|n| n == "authorization"));
        let source = "pub const A: &[&str] = &[\n    \"a\", // one\n    \"b\",\n];";
        assert_eq!(const_list(source, "A").unwrap(), ["a", "b"]);
        assert!(const_list(source, "B").is_err());
    }
}
