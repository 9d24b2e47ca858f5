//! Host-name egress targets: resolved at start, then again as their DNS records expire (never
//! sooner than a floor, never later than an hour). A failed lookup keeps the last good addresses,
//! so a DNS hiccup never cuts the service off from its provider.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{config::ResolverConfig, net::runtime::TokioRuntimeProvider, TokioResolver};
use tokio::sync::{mpsc, watch};

/// Host and port → its current addresses.
pub type Resolved = BTreeMap<(String, u16), Vec<IpAddr>>;

const CEILING: Duration = Duration::from_secs(3600);

/// Resolves `hosts` (read from `wanted`, which a reload may change) forever, sending each new
/// answer set on `out`. Ends when either channel closes.
pub async fn follow(
    mut wanted: watch::Receiver<(Vec<(String, u16)>, Duration)>,
    out: mpsc::Sender<Resolved>,
) {
    let resolver = build();
    let mut current = Resolved::new();
    loop {
        let (hosts, floor) = wanted.borrow_and_update().clone();
        let mut next = Resolved::new();
        let mut refresh = Instant::now() + CEILING;
        for (host, port) in &hosts {
            match resolver.lookup_ip(host.as_str()).await {
                Ok(answer) => {
                    refresh = refresh.min(answer.valid_until());
                    next.insert((host.clone(), *port), answer.iter().collect());
                }
                Err(err) => {
                    tracing::warn!(
                        host,
                        "cannot resolve egress target; keeping its last addresses: {err}"
                    );
                    refresh = refresh.min(Instant::now() + floor);
                    if let Some(previous) = current.get(&(host.clone(), *port)) {
                        next.insert((host.clone(), *port), previous.clone());
                    }
                }
            }
        }
        if next != current {
            current = next.clone();
            if out.send(next).await.is_err() {
                return;
            }
        }
        let wait = refresh
            .saturating_duration_since(Instant::now())
            .clamp(floor, CEILING);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = wanted.changed() => if changed.is_err() { return },
        }
    }
}

/// The system resolver (/etc/hosts, then /etc/resolv.conf); without a resolv.conf, hosts only.
fn build() -> TokioResolver {
    match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(resolver) => resolver,
        Err(err) => {
            tracing::warn!("no usable /etc/resolv.conf ({err}); egress host names resolve from /etc/hosts only");
            TokioResolver::builder_with_config(
                ResolverConfig::default(),
                TokioRuntimeProvider::default(),
            )
            .build()
            .expect("a resolver with the default config builds")
        }
    }
}

/// The `nameserver` lines of /etc/resolv.conf.
pub fn system_nameservers() -> Vec<IpAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    nameservers_in(&text)
}

fn nameservers_in(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver  2001:db8::53\noptions edns0\n";
        let found: Vec<String> = nameservers_in(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(found, ["10.0.0.2", "fe80::1", "2001:db8::53"]);
    }
}
