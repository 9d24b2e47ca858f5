//! `[egress]`: where the guarded service may connect and send (threat 11): the listed targets
//! (`policy = "allow-list"`), or the provider gateway alone (`policy = "gateway-only"`), with
//! DNS to its resolvers unless `allow_dns = false`.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{FieldError, Mode};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSection {
    pub enabled: bool,
    pub mode: Mode,
    /// What the guarded service may reach: the `allow` list, or the provider gateway alone.
    pub policy: EgressPolicy,
    /// Reachable targets: `CIDR[:PORT]` (`[V6CIDR]:PORT` for IPv6 with a port) or `HOST:PORT`.
    pub allow: Vec<EgressTarget>,
    /// DNS resolvers the service may query on port 53. Empty: the `nameserver`s of
    /// /etc/resolv.conf.
    pub dns: Vec<IpAddr>,
    /// Whether the service may query the `dns` resolvers on port 53.
    pub allow_dns: bool,
    /// proxyguard's own front port, which the service may reach on loopback.
    pub guard_port: u16,
    /// Host-name targets are re-resolved when their DNS answer expires, but no sooner than this.
    pub min_refresh_secs: u64,
}

impl Default for EgressSection {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            // The operator's list: a gateway exists only once providers are configured.
            policy: EgressPolicy::AllowList,
            // Nothing but DNS and proxyguard itself until the operator lists the providers.
            allow: Vec::new(),
            dns: Vec::new(),
            // Most services resolve their providers' names; a gateway-only one may not need to.
            allow_dns: true,
            guard_port: 8080,
            min_refresh_secs: 5,
        }
    }
}

/// What the guarded service may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EgressPolicy {
    /// The `allow` targets and proxyguard's own port on loopback.
    AllowList,
    /// The provider gateway's address alone: every provider request goes through proxyguard,
    /// which adds the key.
    GatewayOnly,
}

impl EgressPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressPolicy::AllowList => "allow-list",
            EgressPolicy::GatewayOnly => "gateway-only",
        }
    }
}

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EgressTarget {
    /// An address range, on one port or (`None`) any.
    Net { net: IpNet, port: Option<u16> },
    /// A host name, resolved in user space and re-resolved as its records expire.
    Host { host: String, port: u16 },
}

impl FromStr for EgressTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!("`{text}`: {why}; write CIDR[:PORT], [IPV6-CIDR]:PORT or HOST:PORT")
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("not a port (1-65535)"))
        };
        let net = |n: &str| {
            n.parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| bad("missing `]`"))?;
            let net = net(inner).map_err(|_| bad("not an IPv6 address or CIDR"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(port(p)?),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after `]`")),
            };
            return Ok(EgressTarget::Net { net, port });
        }
        if text.matches(':').count() > 1 {
            return net(text)
                .map(|net| EgressTarget::Net { net, port: None })
                .map_err(|_| bad("not an IPv6 address or CIDR"));
        }
        let (head, port_text) = match text.rsplit_once(':') {
            Some((head, p)) => (head, Some(p)),
            None => (text, None),
        };
        if let Ok(net) = net(head) {
            let port = port_text.map(port).transpose()?;
            return Ok(EgressTarget::Net { net, port });
        }
        let valid_host = !head.is_empty()
            && head.len() <= 253
            && head.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    // The resolver refuses such labels; say so here, not at every lookup.
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid_host {
            return Err(bad("not an address, CIDR or host name"));
        }
        let Some(p) = port_text else {
            return Err(bad("a host name needs a port"));
        };
        Ok(EgressTarget::Host {
            host: head.to_ascii_lowercase(),
            port: port(p)?,
        })
    }
}

impl TryFrom<String> for EgressTarget {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<EgressTarget> for String {
    fn from(target: EgressTarget) -> String {
        target.to_string()
    }
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Net {
                net: IpNet::V6(net),
                port: Some(port),
            } => write!(f, "[{net}]:{port}"),
            EgressTarget::Net {
                net,
                port: Some(port),
            } => write!(f, "{net}:{port}"),
            EgressTarget::Net { net, port: None } => write!(f, "{net}"),
            EgressTarget::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

pub fn validate(egress: &EgressSection, errors: &mut Vec<FieldError>) {
    if egress.guard_port == 0 {
        errors.push(FieldError {
            field: "egress.guard_port".into(),
            line: None,
            message: "must be proxyguard's front port (1-65535)".into(),
        });
    }
    if egress.policy == EgressPolicy::GatewayOnly && !egress.allow.is_empty() {
        errors.push(FieldError {
            field: "egress.allow".into(),
            line: None,
            message: format!(
                "{} target(s) listed, but policy = \"gateway-only\" lets the guarded service reach \
                 the provider gateway alone; remove them (`proxyguard egress deny TARGET`) or set \
                 policy = \"allow-list\"",
                egress.allow.len()
            ),
        });
    }
    if egress.min_refresh_secs == 0 || egress.min_refresh_secs > 86_400 {
        errors.push(FieldError {
            field: "egress.min_refresh_secs".into(),
            line: None,
            message: "must be between 1 and 86400".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_target_form() {
        let table: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("10.1.2.3:443", "10.1.2.3/32:443"),
            ("10.1.2.0/24:443", "10.1.2.0/24:443"),
            ("10.1.2.3/24", "10.1.2.0/24"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("[2001:db8::1]:443", "[2001:db8::1/128]:443"),
            ("[2001:db8::/32]", "2001:db8::/32"),
            ("api.openai.com:443", "api.openai.com:443"),
            ("API.Example.COM:8443", "api.example.com:8443"),
        ];
        for (input, shown) in table {
            let target: EgressTarget = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(target.to_string(), *shown, "{input}");
            assert_eq!(
                target.to_string().parse::<EgressTarget>().unwrap(),
                target,
                "{input} round trip"
            );
        }
    }

    #[test]
    fn refuses_bad_targets_with_the_fix() {
        for input in [
            "api.openai.com",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "[2001:db8::1",
            "bad host:443",
            "",
            "a..b:80",
            "[::1]x",
        ] {
            let err = input.parse::<EgressTarget>().unwrap_err();
            assert!(err.contains("CIDR[:PORT]"), "{input}: {err}");
        }
    }
}
