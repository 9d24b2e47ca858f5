//! The Redis side of a request: which counters it touches (`Windows`) and the Lua that checks
//! and counts them all in one call, atomically (Redis runs a script alone).
//!
//! Every key of one proxyguard key carries the hash tag `{NAME}`, so a key's windows live in one
//! slot. A client address prefix is its own tag (`{ip:PREFIX}`), checked in the same call: one
//! `EVALSHA` per request, not one per tag, since each call costs Redis far more than the few
//! commands inside it (the fleet bench counts them). A call that holds both tags spans two slots,
//! which one Redis serves (the client is not a Cluster client).
//!
//! Request rates are GCRA on Redis's own clock (`TIME`), so the hosts' clocks do not matter; the
//! day, month and minute windows are the UTC windows of the host's clock, as the local ledger's
//! are (hosts run NTP for key expiry already).

use crate::proxy::budget::{clock, policy::Policy};

/// `KEYS`: the key's GCRA key if `ARGV[1] > 0`, the address's GCRA key if `ARGV[3] > 0`, then
/// `(current, previous)` per counter.
/// `ARGV`: the key's rate interval in microseconds (at least 1 with a rate, 0 without) and burst,
/// the address's the same, the counter count, then per counter `limit` (-1: count only),
/// `amount`, `weight` of the previous window, `ttl` seconds.
/// Returns `{0}` when admitted (and counted), `{1, index, retry_us}` when refused for the key:
/// index 0 is its rate, `i` the `i`th counter; `{2, 0, retry_us}` when refused for the address.
/// Nothing is counted on a refusal. `TIME` is read once, and only with a rate; a counter gets
/// its `EXPIRE` only when this call created it.
pub const ADMIT: &str = r#"
local key_interval, key_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local ip_interval, ip_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local k = 1
local key_rate, ip_rate, now_us, key_tat, ip_tat
if key_interval > 0 then key_rate = KEYS[k]; k = k + 1 end
if ip_interval > 0 then ip_rate = KEYS[k]; k = k + 1 end
if key_rate or ip_rate then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- GCRA: the theoretical arrival time after this request, and when it would be allowed.
local function gcra(key, interval, burst)
  local tat = tonumber(redis.call('GET', key) or now_us)
  if tat < now_us then tat = now_us end
  tat = tat + interval
  return tat, tat - burst * interval
end
-- The address first: a request both would refuse is the address's.
if ip_rate then
  local allow_at
  ip_tat, allow_at = gcra(ip_rate, ip_interval, ip_burst)
  if now_us < allow_at then return {2, 0, allow_at - now_us} end
end
if key_rate then
  local allow_at
  key_tat, allow_at = gcra(key_rate, key_interval, key_burst)
  if now_us < allow_at then return {1, 0, allow_at - now_us} end
end
for i = 0, n - 1 do
  local limit = tonumber(ARGV[6 + i * 4])
  if limit >= 0 then
    local amount = tonumber(ARGV[7 + i * 4])
    local weight = tonumber(ARGV[8 + i * 4])
    local cur = tonumber(redis.call('GET', KEYS[k + 2 * i]) or '0')
    local prev = 0
    if weight > 0 then prev = tonumber(redis.call('GET', KEYS[k + 2 * i + 1]) or '0') end
    if cur + prev * weight + amount > limit then return {1, i + 1, 0} end
  end
end
if ip_rate then
  redis.call('SET', ip_rate, string.format('%d', ip_tat), 'PX', math.floor((ip_tat - now_us) / 1000) + 1000)
end
if key_rate then
  redis.call('SET', key_rate, string.format('%d', key_tat), 'PX', math.floor((key_tat - now_us) / 1000) + 1000)
end
for i = 0, n - 1 do
  local amount = tonumber(ARGV[7 + i * 4])
  -- Adding 0 changes nothing (a price-less model's spend).
  if amount ~= 0 then
    local key = KEYS[k + 2 * i]
    local total = tonumber(redis.call('INCRBYFLOAT', key, ARGV[7 + i * 4]))
    -- A counter this call created holds just the amount: it gets its TTL now, and only then
    -- (not one EXPIRE per request). Near-equal covers INCRBYFLOAT's rounding; a counter that
    -- held almost nothing gets its TTL again, which is harmless.
    if math.abs(total - amount) <= 1e-9 * math.max(1, math.abs(amount)) then
      redis.call('EXPIRE', key, ARGV[9 + i * 4])
    end
  end
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

/// A request's windows: its key's, and its address's rate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windows {
    /// `(key, interval in microseconds, burst)`.
    pub rate: Option<(String, u64, u64)>,
    /// The client address prefix's rate, the same way.
    pub address: Option<(String, u64, u64)>,
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
        address: None,
        counters,
    }
}

/// The rate of a client address prefix (`rpm`, `burst`), for [`Windows::address`].
pub fn ip_rate(prefix: &str, rpm: u32, burst: u32) -> Option<(String, u64, u64)> {
    gcra(format!("pg:{{ip:{prefix}}}:rpm"), rpm, burst)
}

impl Windows {
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.address.is_none() && self.counters.is_empty()
    }

    /// `(KEYS, ARGV)` for [`ADMIT`].
    pub fn invocation(&self) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        for rate in [&self.rate, &self.address] {
            match rate {
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
            address: None,
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
        assert_eq!(&args[..5], ["1000000", "5", "0", "0", "5"]);
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
        assert_eq!(bare.invocation().1, ["0", "0", "0", "0", "0"]);
        assert!(ip_rate("2001:db8::/64", 0, 1).is_none());
        // The address's rate rides in the same call, after the key's rate.
        let with_address = Windows {
            address: ip_rate("2001:db8::/64", 120, 10),
            ..key_windows("ci", Some((60, 5)), &policy, None, NOW)
        };
        let (keys, args) = with_address.invocation();
        assert_eq!(keys, ["pg:{ci}:rpm", "pg:{ip:2001:db8::/64}:rpm"]);
        assert_eq!(args, ["1000000", "5", "500000", "10", "0"]);
    }
}
