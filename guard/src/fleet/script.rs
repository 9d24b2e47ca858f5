//! The Redis side of a request: which counters it touches (`Windows`) and the Lua that checks
//! and counts them all in one call, atomically (Redis runs a script alone).
//!
//! Every key of one proxyguard key carries the hash tag `{NAME}`, so a key's windows live in one
//! slot and a script may touch them together on Redis Cluster too. A client address prefix is
//! its own tag (`{ip:PREFIX}`), checked by a second call sent at the same time on the same
//! multiplexed connection (no second wait).
//!
//! Request rates are GCRA on Redis's own clock (`TIME`), so the hosts' clocks do not matter; the
//! day, month and minute windows are the UTC windows of the host's clock, as the local ledger's
//! are (hosts run NTP for key expiry already).

use crate::proxy::budget::{clock, policy::Policy};

/// `KEYS`: the GCRA key if `ARGV[1] > 0`, then `(current, previous)` per counter.
/// `ARGV`: interval in microseconds (at least 1 with a rate, 0 without), burst, counter count,
/// then per counter `limit` (-1: count only), `amount`, `weight` of the previous window, `ttl`
/// seconds.
/// Returns `{0}` when admitted (and counted), `{1, index, retry_us}` when refused: index 0 is
/// the rate, `i` the `i`th counter. Nothing is counted on a refusal.
pub const ADMIT: &str = r#"
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local first = 1
local new_tat, now_us
if interval > 0 then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or now_us)
  if tat < now_us then tat = now_us end
  new_tat = tat + interval
  local allow_at = new_tat - tonumber(ARGV[2]) * interval
  if now_us < allow_at then return {1, 0, allow_at - now_us} end
  first = 2
end
for i = 0, n - 1 do
  local limit = tonumber(ARGV[4 + i * 4])
  if limit >= 0 then
    local amount = tonumber(ARGV[5 + i * 4])
    local weight = tonumber(ARGV[6 + i * 4])
    local cur = tonumber(redis.call('GET', KEYS[first + 2 * i]) or '0')
    local prev = 0
    if weight > 0 then prev = tonumber(redis.call('GET', KEYS[first + 2 * i + 1]) or '0') end
    if cur + prev * weight + amount > limit then return {1, i + 1, 0} end
  end
end
if interval > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now_us) / 1000) + 1000)
end
for i = 0, n - 1 do
  local key = KEYS[first + 2 * i]
  redis.call('INCRBYFLOAT', key, ARGV[5 + i * 4])
  redis.call('EXPIRE', key, ARGV[7 + i * 4])
end
return {0}
"#;

/// `KEYS` with one `ARGV` amount each: added to the keys that still exist (a settlement after
/// its window ended changes nothing).
pub const ADJUST: &str = r#"
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], ARGV[i]) end
end
return 0
"#;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    Input,
    Output,
    Tpm,
    UsdDay,
    UsdMonth,
}

impl Kind {
    /// The reason and the words of the 429 when it refuses.
    pub fn refusal(self) -> (&'static str, &'static str) {
        match self {
            Kind::Requests => ("request_budget", "requests for today"),
            Kind::Tokens => ("token_budget", "tokens for today"),
            Kind::Input => ("token_budget", "input tokens for today"),
            Kind::Output => ("token_budget", "output tokens for today"),
            Kind::Tpm => ("token_budget", "tokens per minute"),
            Kind::UsdDay => ("spend_budget", "spend for today"),
            Kind::UsdMonth => ("spend_budget", "spend for this month"),
        }
    }

    /// Seconds until the window ends, at `now`.
    pub fn retry(self, now: u64) -> u64 {
        match self {
            Kind::Tpm => 60 - now % 60,
            Kind::UsdMonth => clock::to_next_month(now),
            _ => clock::to_next_day(now),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    pub kind: Kind,
    pub key: String,
    pub previous: String,
    pub limit: Option<f64>,
    pub amount: f64,
    pub weight: f64,
    pub ttl: u64,
}

/// A request's windows on one hash tag.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windows {
    /// `(key, interval in microseconds, burst)`.
    pub rate: Option<(String, u64, u64)>,
    pub counters: Vec<Counter>,
}

/// What a request reserves: input and output tokens and their price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reserve {
    pub input: u64,
    pub output: u64,
    pub usd: f64,
}

/// GCRA parameters of `rpm` with `burst`: the interval between requests (microseconds, never
/// 0: 0 means "no rate" to the script) and the burst.
pub fn gcra(key: String, rpm: u32, burst: u32) -> Option<(String, u64, u64)> {
    (rpm > 0).then(|| {
        let interval = (60_000_000 / u64::from(rpm)).max(1);
        (key, interval, u64::from(burst.max(1)))
    })
}

/// The windows of key `name` at `now`: its request rate (`rpm`, `burst`), and, for a metered
/// request (one that reserves, `reserve`), its budgets, as the local ledger keeps them. Requests,
/// tokens and spend per day are always counted, for `proxyguard usage`; the rest only when the
/// key has a limit on them.
pub fn key_windows(
    name: &str,
    rate: Option<(u32, u32)>,
    policy: &Policy,
    reserve: Option<Reserve>,
    now: u64,
) -> Windows {
    let day = clock::day(now);
    let month = clock::month(now);
    let minute = now / 60;
    let tag = |what: &str| format!("pg:{{{name}}}:{what}");
    let day_ttl = clock::to_next_day(now) + 3600;
    let mut counters = Vec::new();
    let mut push = |kind, what: String, limit: Option<f64>, amount: f64| {
        counters.push(Counter {
            kind,
            previous: what.clone(),
            key: what,
            limit,
            amount,
            weight: 0.0,
            ttl: day_ttl,
        })
    };
    if let Some(r) = reserve {
        push(
            Kind::Requests,
            tag(&format!("req:{day}")),
            policy.requests_per_day.map(|l| l as f64),
            1.0,
        );
        let tokens = (r.input + r.output) as f64;
        push(
            Kind::Tokens,
            tag(&format!("tok:{day}")),
            policy.tokens_per_day.map(|l| l as f64),
            tokens,
        );
        if let Some(limit) = policy.input_tokens_per_day {
            push(
                Kind::Input,
                tag(&format!("tin:{day}")),
                Some(limit as f64),
                r.input as f64,
            );
        }
        if let Some(limit) = policy.output_tokens_per_day {
            push(
                Kind::Output,
                tag(&format!("tout:{day}")),
                Some(limit as f64),
                r.output as f64,
            );
        }
        push(
            Kind::UsdDay,
            tag(&format!("usd:{day}")),
            policy.usd_per_day,
            r.usd,
        );
        if let Some(limit) = policy.usd_per_month {
            counters.push(Counter {
                kind: Kind::UsdMonth,
                key: tag(&format!("usdm:{month}")),
                previous: tag(&format!("usdm:{month}")),
                limit: Some(limit),
                amount: r.usd,
                weight: 0.0,
                ttl: clock::to_next_month(now) + 3600,
            });
        }
        if let Some(limit) = policy.tpm {
            counters.push(Counter {
                kind: Kind::Tpm,
                key: tag(&format!("tpm:{minute}")),
                previous: tag(&format!("tpm:{}", minute.saturating_sub(1))),
                limit: Some(limit as f64),
                amount: tokens,
                weight: (60 - now % 60) as f64 / 60.0,
                ttl: 180,
            });
        }
    }
    Windows {
        rate: rate.and_then(|(rpm, burst)| gcra(tag("rpm"), rpm, burst)),
        counters,
    }
}

/// The windows of a client address prefix (`rpm`, `burst`).
pub fn ip_windows(prefix: &str, rpm: u32, burst: u32) -> Windows {
    Windows {
        rate: gcra(format!("pg:{{ip:{prefix}}}:rpm"), rpm, burst),
        counters: Vec::new(),
    }
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.counters.is_empty()
    }

    /// `(KEYS, ARGV)` for [`ADMIT`].
    pub fn invocation(&self) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        match &self.rate {
            Some((key, interval, burst)) => {
                keys.push(key.clone());
                args.push(interval.to_string());
                args.push(burst.to_string());
            }
            None => {
                args.push("0".into());
                args.push("0".into());
            }
        }
        args.push(self.counters.len().to_string());
        for counter in &self.counters {
            keys.push(counter.key.clone());
            keys.push(counter.previous.clone());
            args.push(counter.limit.map_or("-1".into(), |l| l.to_string()));
            args.push(counter.amount.to_string());
            args.push(counter.weight.to_string());
            args.push(counter.ttl.to_string());
        }
        (keys, args)
    }

    /// The counters a settlement adjusts, with what was reserved on each and their TTL.
    pub fn reserved(&self) -> Vec<(Kind, String, f64, u64)> {
        self.counters
            .iter()
            .map(|c| (c.kind, c.key.clone(), c.amount, c.ttl))
            .collect()
    }

    /// Windows that only add `amounts` (`(key, amount, ttl)`), checking nothing: what an
    /// instance admitted while Redis was unreachable, added when it answers again.
    pub fn additions(amounts: impl IntoIterator<Item = (String, f64, u64)>) -> Windows {
        Windows {
            rate: None,
            counters: amounts
                .into_iter()
                .map(|(key, amount, ttl)| Counter {
                    kind: Kind::Requests,
                    previous: key.clone(),
                    key,
                    limit: None,
                    amount,
                    weight: 0.0,
                    ttl,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_122_830; // 2026-12-01T11:00:30Z

    #[test]
    fn every_key_of_a_request_shares_its_hash_tag() {
        let policy = Policy {
            requests_per_day: Some(50),
            tokens_per_day: Some(1000),
            tpm: Some(100),
            usd_per_month: Some(5.0),
            ..Policy::default()
        };
        let reserve = Reserve {
            input: 10,
            output: 20,
            usd: 0.5,
        };
        let windows = key_windows("ci", Some((60, 5)), &policy, Some(reserve), NOW);
        let (keys, args) = windows.invocation();
        assert!(keys.iter().all(|k| k.starts_with("pg:{ci}:")), "{keys:?}");
        assert_eq!(&args[..3], ["1000000", "5", "5"]);
        // However fast the rate, the interval is never 0 (which would mean "no rate").
        assert_eq!(gcra("k".into(), u32::MAX, 1).unwrap().1, 1);
        let kinds: Vec<Kind> = windows.counters.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::Requests,
                Kind::Tokens,
                Kind::UsdDay,
                Kind::UsdMonth,
                Kind::Tpm
            ]
        );
        let tpm = &windows.counters[4];
        assert_eq!((tpm.amount, tpm.weight), (30.0, 0.5));
        assert_ne!(tpm.key, tpm.previous);
        // Not metered (a GET): no budget counts it, as in the local ledger.
        let bare = key_windows("ci", None, &policy, None, NOW);
        assert!(bare.is_empty());
        assert_eq!(bare.invocation().1, ["0", "0", "0"]);
        assert!(ip_windows("2001:db8::/64", 0, 1).is_empty());
        assert_eq!(
            ip_windows("2001:db8::/64", 120, 10).rate.unwrap().0,
            "pg:{ip:2001:db8::/64}:rpm"
        );
    }
}
