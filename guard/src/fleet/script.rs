//! The Redis side of a request: which counters it touches (`Windows`) and the Lua that checks
//! and counts them all in one call, atomically (Redis runs a script alone).
//!
//! Every key of one proxyguard key carries the hash tag `{NAME}`, so a key's windows live in one
//! slot. A client address prefix is its own tag (`{ip:PREFIX}`), checked in the same call: one
//! `EVALSHA` per request, not one per tag, since each call costs Redis far more than the few
//! commands inside it (the fleet bench counts them). A call that holds both tags spans two slots,
//! which one Redis server serves; on a Redis Cluster the two tags go as two calls sent together
//! (`Windows::split_address`), and what one counted is given back if the other refuses
//! (`Windows::refund_command`).
//!
//! Request rates are GCRA on Redis's own clock (`TIME`), so the hosts' clocks do not matter; the
//! day, month and minute windows are the UTC windows of the host's clock, as the local ledger's
//! are (hosts run NTP for key expiry already).
//!
//! A request's call is written straight into one `redis::Cmd` (`Windows::admit_command`): its
//! key names are formatted into the command's buffer and its numbers written there, with no
//! string or vector per key or argument (the per-request CPU the fleet bench measures).

use std::{fmt, net::IpAddr};

use redis::{Cmd, RedisWrite};

use crate::proxy::budget::{clock, policy::Policy};

/// `KEYS`: the key's GCRA key if `ARGV[1] > 0`, the address's GCRA key if `ARGV[3] > 0`, then
/// per counter its key, and its previous window's after it if its weight is above 0.
/// `ARGV`: the key's rate interval in microseconds (at least 1 with a rate, 0 without) and burst,
/// the address's the same, the counter count, then per counter `limit` (-1: count only),
/// `amount`, `weight` of the previous window, `ttl` seconds.
/// Returns `{0}` when admitted (and counted), `{1, index, retry_us}` when refused for the key:
/// index 0 is its rate, `i` the `i`th counter; `{2, 0, retry_us}` when refused for the address.
/// Nothing is counted on a refusal. Every key it reads (the rates' and the checked counters') is
/// read with one `MGET`; `TIME` is read once, and only with a rate; a counter gets its `EXPIRE`
/// only when this call created it. (Each command a script runs costs Redis about as much as a
/// small call of its own: the fleet bench counts them.)
pub const ADMIT: &str = r#"
local key_interval, key_burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local ip_interval, ip_burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local reads = {}
local k = 1
local key_rate, ip_rate
if key_interval > 0 then key_rate = KEYS[k]; reads[#reads + 1] = KEYS[k]; k = k + 1 end
if ip_interval > 0 then ip_rate = KEYS[k]; reads[#reads + 1] = KEYS[k]; k = k + 1 end
-- Per counter: its key, and where its value and its previous window's are among `reads`.
local key_of, cur_at, prev_at = {}, {}, {}
for i = 1, n do
  local base = 2 + i * 4
  local checked = tonumber(ARGV[base]) >= 0
  key_of[i] = KEYS[k]
  if checked then reads[#reads + 1] = KEYS[k]; cur_at[i] = #reads end
  k = k + 1
  if tonumber(ARGV[base + 2]) > 0 then
    if checked then reads[#reads + 1] = KEYS[k]; prev_at[i] = #reads end
    k = k + 1
  end
end
local values = {}
if #reads > 0 then values = redis.call('MGET', unpack(reads)) end
local now_us
if key_rate or ip_rate then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- GCRA: the theoretical arrival time after this request, and when it would be allowed.
local function gcra(value, interval, burst)
  local tat = tonumber(value) or now_us
  if tat < now_us then tat = now_us end
  tat = tat + interval
  return tat, tat - burst * interval
end
-- The address first: a request both would refuse is the address's.
local key_tat, ip_tat
if ip_rate then
  local allow_at
  ip_tat, allow_at = gcra(values[key_rate and 2 or 1], ip_interval, ip_burst)
  if now_us < allow_at then return {2, 0, allow_at - now_us} end
end
if key_rate then
  local allow_at
  key_tat, allow_at = gcra(values[1], key_interval, key_burst)
  if now_us < allow_at then return {1, 0, allow_at - now_us} end
end
for i = 1, n do
  if cur_at[i] then
    local base = 2 + i * 4
    local cur = tonumber(values[cur_at[i]]) or 0
    local prev = 0
    if prev_at[i] then prev = tonumber(values[prev_at[i]]) or 0 end
    local amount = tonumber(ARGV[base + 1])
    if cur + prev * tonumber(ARGV[base + 2]) + amount > tonumber(ARGV[base]) then
      return {1, i, 0}
    end
  end
end
if ip_rate then
  redis.call('SET', ip_rate, string.format('%d', ip_tat), 'PX', math.floor((ip_tat - now_us) / 1000) + 1000)
end
if key_rate then
  redis.call('SET', key_rate, string.format('%d', key_tat), 'PX', math.floor((key_tat - now_us) / 1000) + 1000)
end
for i = 1, n do
  local base = 2 + i * 4
  local amount = tonumber(ARGV[base + 1])
  -- Adding 0 changes nothing (a price-less model's spend).
  if amount ~= 0 then
    local total = tonumber(redis.call('INCRBYFLOAT', key_of[i], ARGV[base + 1]))
    -- A counter this call created holds just the amount: it gets its TTL now, and only then
    -- (not one EXPIRE per request). Near-equal covers INCRBYFLOAT's rounding; a counter that
    -- held almost nothing gets its TTL again, which is harmless.
    if math.abs(total - amount) <= 1e-9 * math.max(1, math.abs(amount)) then
      redis.call('EXPIRE', key_of[i], ARGV[base + 3])
    end
  end
end
return {0}
"#;

/// `KEYS` with an `ARGV` pair each, `amount` and `ttl` seconds: each amount added to its key.
/// An amount above 0 makes a key that does not exist, with its TTL (a count-only counter is
/// first counted when an answer ends, [`Windows::deferred`]); one below 0 (a reservation given
/// back, a refund) changes only a key that still exists (after its window ended, nothing).
pub const ADJUST: &str = r#"
for i = 1, #KEYS do
  local text = ARGV[2 * i - 1]
  local amount = tonumber(text)
  if amount > 0 then
    local total = tonumber(redis.call('INCRBYFLOAT', KEYS[i], text))
    -- Near-equal, as in the admit script: this call made it.
    if math.abs(total - amount) <= 1e-9 * math.max(1, amount) then
      redis.call('EXPIRE', KEYS[i], ARGV[2 * i])
    end
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], text)
  end
end
return 0
"#;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    /// The counter's part of its Redis key, `pg:{NAME}:WHAT:WINDOW`.
    fn what(self) -> &'static str {
        match self {
            Kind::Requests => "req",
            Kind::Tokens => "tok",
            Kind::Input => "tin",
            Kind::Output => "tout",
            Kind::Tpm => "tpm",
            Kind::UsdDay => "usd",
            Kind::UsdMonth => "usdm",
        }
    }
}

/// One counter of a key: what it counts in which window (its day, month or minute number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    pub kind: Kind,
    pub number: u64,
}

impl Window {
    /// Its Redis key for key `name`.
    pub fn key(self, name: &str) -> String {
        format!("pg:{{{name}}}:{}:{}", self.kind.what(), self.number)
    }

    /// Writes its Redis key for key `name` as the next argument of `cmd`.
    fn write_key(self, cmd: &mut Cmd, name: &str) {
        key_arg(
            cmd,
            format_args!("pg:{{{name}}}:{}:{}", self.kind.what(), self.number),
        );
    }
}

/// `args` formatted straight into `cmd`'s buffer as its next argument.
fn key_arg(cmd: &mut Cmd, args: fmt::Arguments<'_>) {
    cmd.write_arg_fmt(args);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    pub window: Window,
    pub limit: Option<f64>,
    pub amount: f64,
    /// The weight of the previous window (`number - 1`) in the check: above 0 only for the
    /// minute's tokens, a sliding window.
    pub weight: f64,
    pub ttl: u64,
}

/// GCRA parameters: the interval between requests (microseconds, never 0: 0 means "no rate" to
/// the script) and the burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval: u64,
    pub burst: u64,
}

/// A client as its rate counts it: an IPv4 address, or an IPv6 prefix (`addr` masked already)
/// of `v6_prefix` bits, written `ADDR/LEN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub addr: IpAddr,
    pub v6_prefix: u8,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V6(v6) => write!(f, "{v6}/{}", self.v6_prefix),
            v4 => write!(f, "{v4}"),
        }
    }
}

/// A request's windows: its key's, and its address's rate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Windows {
    /// The key's request rate.
    pub rate: Option<Gcra>,
    /// The client address prefix's rate.
    pub address: Option<(Client, Gcra)>,
    /// The counters with a limit: checked and counted (their reservation) when the request is
    /// admitted.
    pub counters: Vec<Counter>,
    /// The counters without a limit (counted for `proxyguard usage` only): nothing to check,
    /// so nothing is added at admission (`amount` 0); the answer's real usage is added when it
    /// ends, with the settlements. Each costs the admit call a key, four arguments and an
    /// `INCRBYFLOAT`; in a settlement batch a counter is summed over many requests.
    pub deferred: Vec<Counter>,
}

/// What a request reserves: input and output tokens and their price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reserve {
    pub input: u64,
    pub output: u64,
    pub usd: f64,
}

/// GCRA parameters of `rpm` with `burst` (`None` without a rate).
pub fn gcra(rpm: u32, burst: u32) -> Option<Gcra> {
    (rpm > 0).then(|| Gcra {
        interval: (60_000_000 / u64::from(rpm)).max(1),
        burst: u64::from(burst.max(1)),
    })
}

/// The windows of a key at `now`: its request rate (`rpm`, `burst`), and, for a metered request
/// (one that reserves, `reserve`), its budgets, as the local ledger keeps them. Requests, tokens
/// and spend per day are always counted, for `proxyguard usage`; the rest only when the key has a
/// limit on them.
pub fn key_windows(
    rate: Option<(u32, u32)>,
    policy: &Policy,
    reserve: Option<Reserve>,
    now: u64,
) -> Windows {
    let mut counters = Vec::new();
    if let Some(r) = reserve {
        let day = clock::day(now);
        let day_ttl = clock::to_next_day(now) + 3600;
        let mut push = |kind, number, limit: Option<f64>, amount: f64, weight: f64, ttl| {
            counters.push(Counter {
                window: Window { kind, number },
                limit,
                amount,
                weight,
                ttl,
            })
        };
        let tokens = (r.input + r.output) as f64;
        let limit = |l: Option<u64>| l.map(|l| l as f64);
        push(
            Kind::Requests,
            day,
            limit(policy.requests_per_day),
            1.0,
            0.0,
            day_ttl,
        );
        push(
            Kind::Tokens,
            day,
            limit(policy.tokens_per_day),
            tokens,
            0.0,
            day_ttl,
        );
        if let Some(l) = policy.input_tokens_per_day {
            push(
                Kind::Input,
                day,
                limit(Some(l)),
                r.input as f64,
                0.0,
                day_ttl,
            );
        }
        if let Some(l) = policy.output_tokens_per_day {
            push(
                Kind::Output,
                day,
                limit(Some(l)),
                r.output as f64,
                0.0,
                day_ttl,
            );
        }
        push(Kind::UsdDay, day, policy.usd_per_day, r.usd, 0.0, day_ttl);
        if let Some(l) = policy.usd_per_month {
            let ttl = clock::to_next_month(now) + 3600;
            push(Kind::UsdMonth, clock::month(now), Some(l), r.usd, 0.0, ttl);
        }
        if let Some(l) = policy.tpm {
            let weight = (60 - now % 60) as f64 / 60.0;
            push(Kind::Tpm, now / 60, limit(Some(l)), tokens, weight, 180);
        }
    }
    let (counters, mut deferred): (Vec<Counter>, Vec<Counter>) =
        counters.into_iter().partition(|c| c.limit.is_some());
    for counter in &mut deferred {
        counter.amount = 0.0;
    }
    Windows {
        rate: rate.and_then(|(rpm, burst)| gcra(rpm, burst)),
        address: None,
        counters,
        deferred,
    }
}

impl Windows {
    /// Whether the admit call has nothing to check (a request with no rate and only deferred
    /// counters makes no call at admission).
    pub fn checks_nothing(&self) -> bool {
        self.rate.is_none() && self.address.is_none() && self.counters.is_empty()
    }

    /// The `EVALSHA` of [`ADMIT`] (its SHA-1 `sha`) for key `name`.
    pub fn admit_command(&self, sha: &str, name: &str) -> Cmd {
        let previous = self.counters.iter().filter(|c| c.weight > 0.0).count();
        let keys = usize::from(self.rate.is_some())
            + usize::from(self.address.is_some())
            + self.counters.len()
            + previous;
        let args = 5 + 4 * self.counters.len();
        // Names run about 30 bytes, numbers under 20.
        let mut cmd = Cmd::with_capacity(3 + keys + args, 64 + 32 * keys + 16 * args);
        cmd.arg("EVALSHA").arg(sha).arg(keys);
        if self.rate.is_some() {
            key_arg(&mut cmd, format_args!("pg:{{{name}}}:rpm"));
        }
        if let Some((client, _)) = &self.address {
            key_arg(&mut cmd, format_args!("pg:{{ip:{client}}}:rpm"));
        }
        for counter in &self.counters {
            counter.window.write_key(&mut cmd, name);
            if counter.weight > 0.0 {
                let previous = Window {
                    number: counter.window.number.saturating_sub(1),
                    ..counter.window
                };
                previous.write_key(&mut cmd, name);
            }
        }
        for rate in [self.rate, self.address.map(|(_, rate)| rate)] {
            let rate = rate.unwrap_or(Gcra {
                interval: 0,
                burst: 0,
            });
            cmd.arg(rate.interval).arg(rate.burst);
        }
        cmd.arg(self.counters.len());
        for counter in &self.counters {
            match counter.limit {
                Some(limit) => cmd.arg(limit),
                None => cmd.arg(-1),
            };
            cmd.arg(counter.amount).arg(counter.weight).arg(counter.ttl);
        }
        cmd
    }

    /// For a Redis Cluster: the key's windows and the address's rate as two calls, one per hash
    /// tag (slot); `None` when one of them is empty (then one call holds it all).
    pub fn split_address(&self) -> Option<(Windows, Windows)> {
        let address = self.address?;
        if self.rate.is_none() && self.counters.is_empty() {
            return None;
        }
        let key = Windows {
            rate: self.rate,
            address: None,
            counters: self.counters.clone(),
            deferred: Vec::new(),
        };
        let address = Windows {
            rate: None,
            address: Some(address),
            ..Windows::default()
        };
        Some((key, address))
    }

    /// The `EVALSHA` of [`ADJUST`] (its SHA-1 `sha`) that gives back what an admitted call of
    /// these windows of key `name` counted: one interval of each rate (its theoretical arrival
    /// time goes back to where this request found it) and each counter's amount.
    pub fn refund_command(&self, sha: &str, name: &str) -> Cmd {
        let counters: Vec<&Counter> = self.counters.iter().filter(|c| c.amount != 0.0).collect();
        let keys =
            usize::from(self.rate.is_some()) + usize::from(self.address.is_some()) + counters.len();
        let mut cmd = Cmd::with_capacity(3 + 3 * keys, 64 + 56 * keys);
        cmd.arg("EVALSHA").arg(sha).arg(keys);
        if self.rate.is_some() {
            key_arg(&mut cmd, format_args!("pg:{{{name}}}:rpm"));
        }
        if let Some((client, _)) = &self.address {
            key_arg(&mut cmd, format_args!("pg:{{ip:{client}}}:rpm"));
        }
        for counter in &counters {
            counter.window.write_key(&mut cmd, name);
        }
        // Each amount with a TTL of 0: a negative amount never makes a key.
        for rate in [self.rate, self.address.map(|(_, rate)| rate)]
            .into_iter()
            .flatten()
        {
            cmd.arg(-(rate.interval as i64)).arg(0);
        }
        for counter in &counters {
            cmd.arg(-counter.amount).arg(0);
        }
        cmd
    }

    /// Windows that only add `amounts` (`(window, amount, ttl)`), checking nothing: what an
    /// instance admitted while Redis was unreachable, added when it answers again.
    pub fn additions(amounts: impl IntoIterator<Item = (Window, f64, u64)>) -> Windows {
        Windows {
            rate: None,
            address: None,
            deferred: Vec::new(),
            counters: amounts
                .into_iter()
                .map(|(window, amount, ttl)| Counter {
                    window,
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

    /// A command's arguments, as text.
    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    #[test]
    fn every_key_of_a_request_shares_its_hash_tag() {
        let policy = Policy {
            requests_per_day: Some(50),
            tokens_per_day: Some(1000),
            tpm: Some(100),
            usd_per_day: Some(2.0),
            usd_per_month: Some(5.0),
            ..Policy::default()
        };
        let reserve = Reserve {
            input: 10,
            output: 20,
            usd: 0.5,
        };
        let windows = key_windows(Some((60, 5)), &policy, Some(reserve), NOW);
        let cmd = args(&windows.admit_command("SHA", "ci"));
        // EVALSHA, the SHA, the key count, then the rate's key and two per counter but the
        // minute's (its previous minute too).
        assert_eq!(&cmd[..3], ["EVALSHA", "SHA", "7"]);
        let keys = &cmd[3..10];
        assert!(keys.iter().all(|k| k.starts_with("pg:{ci}:")), "{keys:?}");
        let day = clock::day(NOW);
        assert_eq!(keys[1], format!("pg:{{ci}}:req:{day}"));
        assert_eq!(
            keys[1],
            Window {
                kind: Kind::Requests,
                number: day
            }
            .key("ci")
        );
        let minute = NOW / 60;
        assert_eq!(
            &keys[5..],
            [
                format!("pg:{{ci}}:tpm:{minute}"),
                format!("pg:{{ci}}:tpm:{}", minute - 1)
            ]
        );
        assert_eq!(&cmd[10..15], ["1000000", "5", "0", "0", "5"]);
        // The requests' counter: limit, amount, weight, TTL.
        assert_eq!(cmd[15].parse::<f64>().unwrap(), 50.0);
        assert_eq!(cmd[16].parse::<f64>().unwrap(), 1.0);
        // However fast the rate, the interval is never 0 (which would mean "no rate").
        assert_eq!(gcra(u32::MAX, 1).unwrap().interval, 1);
        let kinds: Vec<Kind> = windows.counters.iter().map(|c| c.window.kind).collect();
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
        // Not metered (a GET): no budget counts it, as in the local ledger.
        let bare = key_windows(None, &policy, None, NOW);
        assert!(bare.checks_nothing() && bare.deferred.is_empty());
        assert_eq!(
            args(&bare.admit_command("SHA", "ci"))[2..],
            ["0", "0", "0", "0", "0", "0"]
        );
        assert!(gcra(0, 1).is_none());
        // The address's rate rides in the same call, after the key's rate.
        let client = Client {
            addr: "2001:db8::".parse().unwrap(),
            v6_prefix: 64,
        };
        let with_address = Windows {
            address: gcra(120, 10).map(|rate| (client, rate)),
            ..key_windows(Some((60, 5)), &policy, None, NOW)
        };
        let cmd = args(&with_address.admit_command("SHA", "ci"));
        assert_eq!(
            cmd[2..],
            [
                "2",
                "pg:{ci}:rpm",
                "pg:{ip:2001:db8::/64}:rpm",
                "1000000",
                "5",
                "500000",
                "10",
                "0"
            ]
        );
        let v4 = Client {
            addr: [192, 0, 2, 7].into(),
            v6_prefix: 64,
        };
        assert_eq!(v4.to_string(), "192.0.2.7");
    }

    #[test]
    fn a_counter_without_a_limit_is_counted_when_the_answer_ends_not_at_admission() {
        let reserve = Reserve {
            input: 10,
            output: 20,
            usd: 0.25,
        };
        let day = clock::day(NOW);
        // A day's requests limited: only that counter is in the admit call.
        let policy = Policy {
            requests_per_day: Some(50),
            ..Policy::default()
        };
        let windows = key_windows(None, &policy, Some(reserve), NOW);
        let cmd = args(&windows.admit_command("SHA", "ci"));
        assert_eq!(
            cmd[2..],
            [
                "1".to_owned(),
                format!("pg:{{ci}}:req:{day}"),
                "0".into(),
                "0".into(),
                "0".into(),
                "0".into(),
                "1".into(),
                "50.0".into(),
                "1.0".into(),
                "0.0".into(),
                (clock::to_next_day(NOW) + 3600).to_string(),
            ]
        );
        let deferred: Vec<(Kind, f64)> = windows
            .deferred
            .iter()
            .map(|c| (c.window.kind, c.amount))
            .collect();
        assert_eq!(deferred, [(Kind::Tokens, 0.0), (Kind::UsdDay, 0.0)]);
        assert!(windows.deferred.iter().all(|c| c.ttl > 3600));
        // No limit at all and no rate: nothing to check, no call at admission.
        let windows = key_windows(None, &Policy::default(), Some(reserve), NOW);
        assert!(windows.checks_nothing());
        assert_eq!(windows.deferred.len(), 3);
    }

    #[test]
    fn on_a_cluster_each_call_holds_one_hash_tag_and_a_refund_undoes_it() {
        let policy = Policy {
            requests_per_day: Some(50),
            ..Policy::default()
        };
        let reserve = Reserve {
            input: 10,
            output: 20,
            usd: 0.0,
        };
        let client = Client {
            addr: [192, 0, 2, 7].into(),
            v6_prefix: 64,
        };
        let windows = Windows {
            address: gcra(120, 10).map(|rate| (client, rate)),
            ..key_windows(Some((60, 5)), &policy, Some(reserve), NOW)
        };
        let (key, address) = windows.split_address().expect("two tags");
        let tag = |cmd: &[String]| -> Vec<String> {
            let keys: usize = cmd[2].parse().unwrap();
            cmd[3..3 + keys]
                .iter()
                .map(|k| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned())
                .collect()
        };
        let key_call = args(&key.admit_command("SHA", "ci"));
        assert!(tag(&key_call).iter().all(|t| t == "{ci}"), "{key_call:?}");
        // Its ARGV: the key's rate, no address rate, its one checked counter.
        let keys: usize = key_call[2].parse().unwrap();
        assert_eq!(
            &key_call[3 + keys..3 + keys + 5],
            ["1000000", "5", "0", "0", "1"]
        );
        let address_call = args(&address.admit_command("SHA", "ci"));
        assert_eq!(
            address_call[2..],
            ["1", "pg:{ip:192.0.2.7}:rpm", "0", "0", "500000", "10", "0"]
        );
        // Only the address, or only the key: one call holds it.
        assert!(address.split_address().is_none());
        assert!(key.split_address().is_none());
        // A refund takes one interval off the rate and each amount counted at admission off
        // its counter (the tokens and spend, without a limit, were not counted then).
        let refund = args(&key.refund_command("SHA", "ci"));
        let day = clock::day(NOW);
        assert_eq!(
            refund[2..],
            [
                "2".to_owned(),
                "pg:{ci}:rpm".into(),
                format!("pg:{{ci}}:req:{day}"),
                "-1000000".into(),
                "0".into(),
                "-1.0".into(),
                "0".into(),
            ]
        );
        let refund = args(&address.refund_command("SHA", "ci"));
        assert_eq!(refund[2..], ["1", "pg:{ip:192.0.2.7}:rpm", "-500000", "0"]);
    }
}
