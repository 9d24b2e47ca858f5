//! `proxyguard status`: what the running daemon has attached, in which mode, what is missing and
//! why, and its counters.

use std::{path::Path, process::ExitCode};

use serde_json::{json, Value};

use crate::{
    config::{egress::EgressPolicy, Config},
    control::{client, Command},
    kernel::{self, Destination, Kernel},
};

pub fn run(config_path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let status = client::request(&config.control.socket, &Command::Status)?;
    if json {
        println!("{status}");
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// The egress policy and the provider gateway, as the daemon runs them: whether the kernel
/// guards the gateway's port (only where the kernel half runs and the upstream guard is on).
pub(super) fn egress_fields(config: &Config, kernel: Option<&Kernel>) -> Value {
    let gateway = kernel::gateway(config);
    let guarded = gateway_kernel_guarded(kernel);
    json!({
        "policy": config.egress.policy.as_str(),
        "allow_dns": config.egress.allow_dns,
        "gateway": gateway.map(|listen| json!({
            "listen": listen,
            "kernel_guard": guarded,
            "mode": config.upstream_guard.mode.as_str(),
        })),
    })
}

/// The interfaces the XDP limit runs on, and why those (`[xdp] interfaces`, or the front
/// listener's address when the list is empty).
pub(super) fn xdp_fields(config: &Config, kernel: Option<&Kernel>) -> Value {
    match kernel {
        Some(k) => json!(k.xdp_interfaces()),
        None => json!({
            "names": [],
            "source": if config.xdp.interfaces.is_empty() { "auto" } else { "configured" },
            "why": "started with --no-kernel",
        }),
    }
}

/// Whether a kernel rule guards the provider gateway's port (only the guarded service and
/// proxyguard may connect): the one answer both `egress` and `providers` in `status` give.
pub(super) fn gateway_kernel_guarded(kernel: Option<&Kernel>) -> bool {
    kernel.is_some_and(|k| {
        k.guarded_ports()
            .iter()
            .any(|(which, _)| *which == Destination::Gateway)
    })
}

/// The lines about the egress policy and the gateway.
fn render_egress(egress: &Value, out: &mut String) {
    let Some(policy) = egress["policy"].as_str() else {
        return;
    };
    let gateway = egress["gateway"]["listen"].as_str();
    let dns = if egress["allow_dns"] == true {
        " and DNS"
    } else {
        ""
    };
    out.push_str(&format!("\negress policy: {policy}"));
    if policy == EgressPolicy::GatewayOnly.as_str() {
        match gateway {
            Some(gateway) => out.push_str(&format!(
                " (the guarded service may reach the provider gateway {gateway}{dns} only)\n"
            )),
            None => out.push_str(&format!(
                " (no provider gateway runs: the guarded service may reach nothing{})\n",
                if dns.is_empty() { "" } else { " but DNS" }
            )),
        }
    } else {
        out.push('\n');
    }
    if let Some(gateway) = gateway {
        if egress["gateway"]["kernel_guard"] == true {
            let monitor = if egress["gateway"]["mode"] == "monitor" {
                ", monitor mode: others are reported, not refused"
            } else {
                ""
            };
            out.push_str(&format!(
                "provider gateway {gateway}: only proxyguard and the guarded service may connect (kernel rule{monitor})\n"
            ));
        } else {
            out.push_str(&format!(
                "provider gateway {gateway}: ANY local process can connect to it (the kernel half or the upstream guard is off)\n"
            ));
        }
    }
}

fn render(status: &Value) -> String {
    let mut out = format!(
        "proxyguard: pid {}, up {}s, config {}\n",
        status["pid"],
        status["uptime_secs"],
        status["config"].as_str().unwrap_or("?")
    );
    out.push_str("\nattached programs:\n");
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    if programs.is_empty() {
        out.push_str("  none\n");
    }
    for p in programs {
        let adopted = if p["adopted"] == true {
            "  (adopted from pins)"
        } else if p["replaced"] == true {
            "  (replaced the pinned program of another build)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:<20} {:<16} {:<8} {}{adopted}\n",
            p["name"].as_str().unwrap_or("?"),
            p["hook"].as_str().unwrap_or("?"),
            p["mode"].as_str().unwrap_or("?"),
            p["target"].as_str().unwrap_or("?"),
        ));
    }
    let unavailable = status["unavailable"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unavailable.is_empty() {
        out.push_str("\nunavailable features:\n");
        // The environ watch's line comes below, whatever its tier.
        for f in unavailable.iter().filter(|f| f["name"] != "environ-watch") {
            out.push_str(&format!(
                "  {}: {}\n",
                f["name"].as_str().unwrap_or("?"),
                f["detail"].as_str().unwrap_or("?")
            ));
        }
    }
    if let Some(guarded) = status["guarded"].as_array().filter(|g| !g.is_empty()) {
        out.push_str("\nguarded cgroups:\n");
        for g in guarded {
            out.push_str(&format!(
                "  {} (id {})\n",
                g["path"].as_str().unwrap_or("?"),
                g["id"]
            ));
        }
    }
    if let Some(pids) = status["guarded_pids"].as_array().filter(|p| !p.is_empty()) {
        let pids: Vec<String> = pids.iter().map(Value::to_string).collect();
        out.push_str(&format!("\nguarded processes: {}\n", pids.join(", ")));
    }
    match (
        status["created_files"].as_str(),
        status["created_files_detail"].as_str(),
    ) {
        (Some(mechanism), _) => out.push_str(&format!("\ncreated-files record: {mechanism}\n")),
        (None, Some(why)) => out.push_str(&format!("\ncreated-files record: off ({why})\n")),
        (None, None) => {}
    }
    if let Some(xdp) = status["xdp"].as_object() {
        let names: Vec<&str> = xdp["names"]
            .as_array()
            .map(|n| n.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "\nxdp SYN limit on: {} ({}: {})\n",
            if names.is_empty() {
                "no interface".to_owned()
            } else {
                names.join(", ")
            },
            xdp["source"].as_str().unwrap_or("?"),
            xdp["why"].as_str().unwrap_or("?"),
        ));
        if let Some(refused) = xdp
            .get("refused")
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())
        {
            let refused: Vec<&str> = refused.iter().filter_map(Value::as_str).collect();
            out.push_str(&format!(
                "  refused the program (came up after start; see the log): {}\n",
                refused.join(", ")
            ));
        }
    }
    if let Some(tier) = status["environ_watch"].as_str() {
        out.push_str(&format!("\nenviron watch: {tier}\n"));
    }
    render_egress(&status["egress"], &mut out);
    if let Some(checks) = status["checks"].as_object().filter(|c| c["audits"] != 0) {
        let open: Vec<String> = checks["open"]
            .as_object()
            .map(|o| o.iter().map(|(k, n)| format!("{k} {n}")).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "\naudits: {} run, {} files fixed, open findings: {}\n",
            checks["audits"],
            checks["fixed"],
            if open.is_empty() {
                "none".into()
            } else {
                open.join(", ")
            }
        ));
    }
    if let Some(names) = status["providers"]["providers"]
        .as_array()
        .filter(|n| !n.is_empty())
    {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        out.push_str(&format!(
            "\nprovider gateway on {}: {}\n  {}\n",
            status["providers"]["listen"].as_str().unwrap_or("?"),
            names.join(", "),
            status["providers"]["access"].as_str().unwrap_or("?"),
        ));
    }
    let fleet = &status["fleet"];
    if fleet.is_object() {
        out.push_str(&format!(
            "\nfleet: {} as {} on {} (breaker {}, on_redis_error {}, {} expected; {} mode changes, last {} at {}); {} keys revoked fleet-wide\n",
            fleet["mode"].as_str().unwrap_or("?"),
            fleet["instance"].as_str().unwrap_or("?"),
            fleet["redis_url"].as_str().unwrap_or("?"),
            fleet["breaker"].as_str().unwrap_or("?"),
            fleet["on_redis_error"].as_str().unwrap_or("?"),
            fleet["expected_instances"],
            fleet["mode_changes"],
            fleet["why"].as_str().unwrap_or("?"),
            fleet["since"].as_str().unwrap_or("?"),
            fleet["revoked_keys"],
        ));
    }
    if let Some(counters) = status["counters"].as_object() {
        out.push_str("\ncounters:\n");
        for (family, values) in counters {
            let fields: Vec<String> = values
                .as_object()
                .map(|v| v.iter().map(|(k, n)| format!("{k} {n}")).collect())
                .unwrap_or_default();
            out.push_str(&format!("  {family:<8} {}\n", fields.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xdp_interfaces_and_why_are_shown() {
        let off = json!({ "xdp": { "names": [], "source": "auto",
            "why": "the front listener 127.0.0.1:8080 is on loopback" } });
        assert!(render(&off).contains(
            "\nxdp SYN limit on: no interface (auto: the front listener 127.0.0.1:8080 is on loopback)\n"
        ));
        let on = json!({ "xdp": { "names": ["eth0", "eth1"], "source": "configured",
            "why": "listed in [xdp] interfaces" } });
        assert!(render(&on)
            .contains("xdp SYN limit on: eth0, eth1 (configured: listed in [xdp] interfaces)"));
    }

    #[test]
    fn the_created_files_mechanism_is_shown_when_the_record_is_on() {
        let on = serde_json::json!({ "created_files": "lsm/file_open" });
        assert!(render(&on).contains("\ncreated-files record: lsm/file_open\n"));
        // Off with a reason (fix mode off, or every hook refused): the reason is shown.
        let off = serde_json::json!({ "created_files": null,
            "created_files_detail": "not attached: [watch] temp_files = \"report\" does not use it" });
        assert!(render(&off).contains(
            "\ncreated-files record: off (not attached: [watch] temp_files = \"report\" does not use it)\n"
        ));
        // No environ watch, no line.
        let none = serde_json::json!({ "created_files": null });
        assert!(!render(&none).contains("created-files record"));
    }

    #[test]
    fn the_environ_watch_tier_is_one_line_whatever_it_is() {
        let probe = serde_json::json!({
            "environ_watch": "open probe: a kprobe on environ_open sees every open",
            "unavailable": [{ "name": "bpf-lsm", "detail": "not listed" }],
        });
        let text = render(&probe);
        assert!(
            text.contains("\nenviron watch: open probe: a kprobe"),
            "{text}"
        );
        let tracepoints = serde_json::json!({
            "environ_watch": "path tracepoints: openat",
            "unavailable": [{ "name": "environ-watch", "detail": "path tracepoints: openat" }],
        });
        let text = render(&tracepoints);
        assert_eq!(text.matches("path tracepoints").count(), 1, "{text}");
    }

    #[test]
    fn an_unguarded_gateway_says_so() {
        let section = crate::providers::ProvidersSection {
            routes: vec![toml::from_str(
                "name = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\nkey_file = \"/k\"",
            )
            .unwrap()],
            ..Default::default()
        };
        let status = serde_json::json!({
            "providers": crate::providers::status_json(&section, None, false)
        });
        let text = render(&status);
        assert!(
            text.contains("provider gateway on 127.0.0.1:8089: openai"),
            "{text}"
        );
        assert!(text.contains("any local process could use it"), "{text}");
        let guarded = serde_json::json!({
            "providers": crate::providers::status_json(&section, None, true)
        });
        assert!(render(&guarded).contains("only the guarded service and proxyguard"));
    }

    #[test]
    fn the_egress_policy_and_the_gateway_guard_are_shown() {
        let guarded = json!({ "egress": {
            "policy": "gateway-only", "allow_dns": true,
            "gateway": { "listen": "127.0.0.1:8089", "kernel_guard": true, "mode": "enforce" } } });
        let text = render(&guarded);
        assert!(
            text.contains("egress policy: gateway-only (the guarded service may reach the provider gateway 127.0.0.1:8089 and DNS only)"),
            "{text}"
        );
        assert!(text.contains("only proxyguard and the guarded service may connect (kernel rule)"));
        let open = json!({ "egress": {
            "policy": "allow-list", "allow_dns": false,
            "gateway": { "listen": "127.0.0.1:8089", "kernel_guard": false } } });
        let text = render(&open);
        assert!(text.contains("egress policy: allow-list\n"), "{text}");
        assert!(text.contains("ANY local process can connect"), "{text}");
        let none =
            json!({ "egress": { "policy": "gateway-only", "allow_dns": false, "gateway": null } });
        assert!(render(&none).contains("may reach nothing)"));
    }
}
