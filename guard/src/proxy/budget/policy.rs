//! A key's usage policy, compiled from `[[proxy.keys]]` (issue 14): token, request and spend
//! budgets, the models it may call and the addresses it may come from. Every field is off by
//! default.

use std::net::IpAddr;

use http::StatusCode;
use ipnet::IpNet;

use crate::proxy::reject::Reject;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub tpm: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub input_tokens_per_day: Option<u64>,
    pub output_tokens_per_day: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    /// Globs over the request's `model`; empty allows every model.
    pub models: Vec<String>,
    /// Empty allows every source.
    pub from: Vec<IpNet>,
}

impl Policy {
    pub fn has_spend_budget(&self) -> bool {
        self.usd_per_day.is_some() || self.usd_per_month.is_some()
    }

    /// 403 `source_not_allowed` for a client outside the key's CIDRs.
    pub fn check_source(&self, ip: IpAddr) -> Result<(), Reject> {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.from.is_empty() || self.from.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        Err(Reject::new(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            "this key may not be used from this address",
        ))
    }

    /// 403 `model_not_allowed` for a model outside the key's list (or no model, when it has one).
    pub fn check_model(&self, model: Option<&str>) -> Result<(), Reject> {
        if self.models.is_empty() {
            return Ok(());
        }
        let allowed = model.is_some_and(|model| {
            // A comma-separated list calls every model named.
            model
                .split(',')
                .all(|one| self.models.iter().any(|glob| glob_match(glob, one.trim())))
        });
        if allowed {
            return Ok(());
        }
        Err(Reject::new(
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            "this key may not call this model",
        ))
    }
}

/// `*` matches any run of characters, `?` any one; everything else itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point: linear in practice, no recursion.
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == '?' || glob[g] == text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((star_g, star_t)) = star {
            g = star_g + 1;
            t = star_t + 1;
            star = Some((star_g, star_t + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*", "", true),
            ("mock-?pt", "mock-gpt", true),
            ("mock-?pt", "mock-gppt", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("openai/*", "openai/gpt-4o", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (glob, text, want) in cases {
            assert_eq!(glob_match(glob, text), want, "{glob} {text}");
        }
    }

    #[test]
    fn models_and_sources() {
        let policy = Policy {
            models: vec!["mock-*".into()],
            from: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Policy::default()
        };
        let model = |m: Option<&str>| {
            policy
                .check_model(m)
                .map_err(|r| (r.status.as_u16(), r.reason))
        };
        assert_eq!(model(Some("mock-gpt")), Ok(()));
        assert_eq!(model(Some("gpt-4o")), Err((403, "model_not_allowed")));
        assert_eq!(
            model(Some("mock-gpt,gpt-4o")),
            Err((403, "model_not_allowed"))
        );
        assert_eq!(model(None), Err((403, "model_not_allowed")));
        let source = |ip: &str| {
            policy
                .check_source(ip.parse().unwrap())
                .map_err(|r| r.reason)
        };
        assert_eq!(source("10.1.2.3"), Ok(()));
        assert_eq!(source("::ffff:10.1.2.3"), Ok(()));
        assert_eq!(source("::1"), Ok(()));
        assert_eq!(source("127.0.0.1"), Err("source_not_allowed"));
        assert!(Policy::default().check_model(None).is_ok());
        assert!(Policy::default()
            .check_source("1.2.3.4".parse().unwrap())
            .is_ok());
    }
}
