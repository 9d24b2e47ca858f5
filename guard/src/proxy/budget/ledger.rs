//! What each key has spent, in the current windows, with what is reserved by requests in flight
//! (issue 14). One lock around a small map; every operation is a few additions.
//!
//! Admission reserves a request's estimate (its prompt and the output it may ask for) against
//! every budget of its key; the answer's end settles the reservation to the real usage. A stream
//! that runs past its reservation is charged in full, never cut: the budget then refuses the
//! next request instead. A request refused after admission releases its reservation unchanged.
//!
//! The `Book` is what `persist` writes. Reservations are not in it: after a restart nothing is
//! in flight.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{clock, policy::Policy};
use crate::proxy::{reject::Reject, usage::Usage};

/// 5-minute windows, for the spike rule.
const WINDOW: u64 = 300;
/// The trailing windows the spike rule averages over (the hour before the current window).
const TRAILING: u64 = 12;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Book {
    pub version: u32,
    pub keys: BTreeMap<String, KeyBook>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyBook {
    pub day: u64,
    pub month: u64,
    pub day_tokens: u64,
    pub day_input: u64,
    pub day_output: u64,
    pub day_requests: u64,
    pub day_usd: f64,
    pub month_usd: f64,
    pub minute: u64,
    pub minute_tokens: u64,
    pub prev_minute_tokens: u64,
    /// This month's usage by model (the pricing table's name, or `other`).
    pub models: BTreeMap<String, ModelBook>,
    /// `(window, tokens)` of the latest 5-minute windows.
    pub windows: Vec<(u64, u64)>,
    /// The window a spike was last raised in (one alert per window).
    pub spiked: u64,
    pub suspended: Option<Suspension>,
    #[serde(skip)]
    reserved: Reserved,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelBook {
    pub input: u64,
    pub output: u64,
    pub requests: u64,
    pub usd: f64,
    /// Requests whose usage was estimated.
    pub estimated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub since: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Reserved {
    tokens: u64,
    input: u64,
    output: u64,
    usd: f64,
    requests: u64,
}

impl KeyBook {
    /// Starts the windows `now` is past.
    pub fn roll(&mut self, now: u64) {
        // Within the minute last rolled to, the day and the month are the same too: the usual
        // case needs no calendar.
        if now / 60 == self.minute && self.minute != 0 {
            return;
        }
        let (day, month, minute) = (clock::day(now), clock::month(now), now / 60);
        if day != self.day {
            self.day = day;
            self.day_tokens = 0;
            self.day_input = 0;
            self.day_output = 0;
            self.day_requests = 0;
            self.day_usd = 0.0;
        }
        if month != self.month {
            self.month = month;
            self.month_usd = 0.0;
            self.models.clear();
        }
        if minute != self.minute {
            self.prev_minute_tokens = if minute == self.minute + 1 {
                self.minute_tokens
            } else {
                0
            };
            self.minute_tokens = 0;
            self.minute = minute;
        }
    }

    /// Tokens of the last 60 seconds: the previous minute weighted by how much of it is still
    /// inside them, plus this one.
    fn last_minute_tokens(&self, now: u64) -> u64 {
        let left = 60 - now % 60;
        self.prev_minute_tokens * left / 60 + self.minute_tokens
    }
}

/// The spike rule (`proxy.usage.spike`), per key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpikeRule {
    pub floor: u64,
    pub factor: f64,
    pub suspend: bool,
}

/// A spike, as `settle` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spike {
    pub tokens: u64,
    pub average: f64,
    pub suspended: bool,
}

/// What the ledger knows of the config: each key's policy (for `usage`'s "left") and the rule.
#[derive(Default)]
struct Rules {
    policies: HashMap<Arc<str>, Policy>,
    spike: Option<SpikeRule>,
}

#[derive(Default)]
pub struct Ledger {
    book: Mutex<Book>,
    rules: Mutex<Rules>,
    /// Whether `rules` has a spike rule: a settle without one takes no second lock.
    spiking: AtomicBool,
    /// Raised on every change; `persist` waits on it. The bool says a write is wanted at once
    /// (a suspension or a resume).
    pub(super) changed: (Mutex<(bool, bool)>, Condvar),
    /// Raised by a settle: a change that waits for the next periodic write, so it takes no lock.
    pub(super) dirty: AtomicBool,
}

/// A request's reservation; settling it charges the real usage, dropping it releases it.
pub struct Ticket {
    ledger: Arc<Ledger>,
    key: Arc<str>,
    /// The pricing table's name for the model, or `other`.
    pub model: Arc<str>,
    price: crate::config::proxy::Price,
    tokens: u64,
    usd: f64,
    /// The input and output parts of `tokens`.
    split: (u64, u64),
    settled: bool,
}

/// What a settled request cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub usd: f64,
    pub spike: Option<Spike>,
}

/// `key`'s entry, made on its first request.
fn entry<'a>(book: &'a mut Book, key: &str) -> &'a mut KeyBook {
    named(&mut book.keys, key)
}

/// The value under `name`, made when missing: a lookup by `&str`, so the hot path builds no
/// `String` for a key or a model the book has (`entry()` would take an owned one every time).
fn named<'a, V: Default>(map: &'a mut BTreeMap<String, V>, name: &str) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), V::default());
    }
    map.get_mut(name).expect("inserted just above")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn suspended() -> Reject {
    Reject::new(
        StatusCode::FORBIDDEN,
        "key_suspended",
        "this key is suspended after a usage spike; `proxyguard keys resume NAME` lifts it",
    )
}

fn budget(reason: &'static str, what: &str, retry: u64) -> Reject {
    let mut reject = Reject::new(
        StatusCode::TOO_MANY_REQUESTS,
        reason,
        format!("this key's {what} is spent; retry after {retry}s"),
    );
    reject.retry_after = Some(retry.max(1));
    reject
}

impl Ledger {
    pub fn new(book: Book) -> Ledger {
        Ledger {
            book: Mutex::new(book),
            ..Ledger::default()
        }
    }

    /// The policies and the spike rule now in force (at start and on every reload).
    pub fn configure(
        &self,
        policies: impl IntoIterator<Item = (Arc<str>, Policy)>,
        spike: Option<SpikeRule>,
    ) {
        let mut rules = lock(&self.rules);
        rules.policies = policies.into_iter().collect();
        rules.spike = spike;
        self.spiking.store(spike.is_some(), Ordering::Release);
    }

    /// 403 `key_suspended` for a key a usage spike suspended.
    pub fn check_suspended(&self, key: &str) -> Result<(), Reject> {
        match lock(&self.book).keys.get(key) {
            Some(entry) if entry.suspended.is_some() => Err(suspended()),
            _ => Ok(()),
        }
    }

    /// Reserves `reserve` (input and output tokens, and their price) for a request of `key` at `now`, or refuses: 403
    /// `key_suspended`, 429 `request_budget`, `token_budget` or `spend_budget`.
    pub fn admit(
        self: &Arc<Self>,
        key: &Arc<str>,
        policy: &Policy,
        model: (Arc<str>, crate::config::proxy::Price),
        reserve: (u64, u64),
        now: u64,
    ) -> Result<Ticket, Reject> {
        let (model, price) = model;
        let usd = cost(price, reserve.0, reserve.1);
        let tokens = reserve.0 + reserve.1;
        let mut book = lock(&self.book);
        let entry = entry(&mut book, key);
        if entry.suspended.is_some() {
            return Err(suspended());
        }
        entry.roll(now);
        let reserved = entry.reserved;
        if let Some(limit) = policy.requests_per_day {
            if entry.day_requests + reserved.requests + 1 > limit {
                return Err(budget(
                    "request_budget",
                    "requests for today",
                    clock::to_next_day(now),
                ));
            }
        }
        if let Some(limit) = policy.tokens_per_day {
            if entry.day_tokens + reserved.tokens + tokens > limit {
                return Err(budget(
                    "token_budget",
                    "tokens for today",
                    clock::to_next_day(now),
                ));
            }
        }
        if let Some(limit) = policy.input_tokens_per_day {
            if entry.day_input + reserved.input + reserve.0 > limit {
                return Err(budget(
                    "token_budget",
                    "input tokens for today",
                    clock::to_next_day(now),
                ));
            }
        }
        if let Some(limit) = policy.output_tokens_per_day {
            if entry.day_output + reserved.output + reserve.1 > limit {
                return Err(budget(
                    "token_budget",
                    "output tokens for today",
                    clock::to_next_day(now),
                ));
            }
        }
        if let Some(limit) = policy.tpm {
            if entry.last_minute_tokens(now) + reserved.tokens + tokens > limit {
                return Err(budget("token_budget", "tokens per minute", 60 - now % 60));
            }
        }
        if let Some(limit) = policy.usd_per_day {
            if entry.day_usd + reserved.usd + usd > limit {
                return Err(budget(
                    "spend_budget",
                    "spend for today",
                    clock::to_next_day(now),
                ));
            }
        }
        if let Some(limit) = policy.usd_per_month {
            if entry.month_usd + reserved.usd + usd > limit {
                return Err(budget(
                    "spend_budget",
                    "spend for this month",
                    clock::to_next_month(now),
                ));
            }
        }
        entry.reserved.tokens += tokens;
        entry.reserved.input += reserve.0;
        entry.reserved.output += reserve.1;
        entry.reserved.usd += usd;
        entry.reserved.requests += 1;
        Ok(Ticket {
            ledger: self.clone(),
            key: key.clone(),
            model,
            price,
            tokens,
            usd,
            split: reserve,
            settled: false,
        })
    }

    /// Whether `key`'s counts today, with what is reserved (a request just admitted among it),
    /// fit `policy`: the fleet's share of a key's budgets while Redis is unreachable (`[fleet]`
    /// `on_redis_error = "local"`). Refuses as `admit` does.
    pub fn within(&self, key: &str, policy: &Policy, now: u64) -> Result<(), Reject> {
        let mut book = lock(&self.book);
        let Some(entry) = book.keys.get_mut(key) else {
            return Ok(());
        };
        entry.roll(now);
        let r = entry.reserved;
        let day = clock::to_next_day(now);
        let over_u = |limit: Option<u64>, used: u64| limit.is_some_and(|l| used > l);
        let over_f = |limit: Option<f64>, used: f64| limit.is_some_and(|l| used > l);
        if over_u(policy.requests_per_day, entry.day_requests + r.requests) {
            return Err(budget("request_budget", "requests for today", day));
        }
        if over_u(policy.tokens_per_day, entry.day_tokens + r.tokens)
            || over_u(policy.input_tokens_per_day, entry.day_input + r.input)
            || over_u(policy.output_tokens_per_day, entry.day_output + r.output)
        {
            return Err(budget("token_budget", "tokens for today", day));
        }
        if over_u(policy.tpm, entry.last_minute_tokens(now) + r.tokens) {
            return Err(budget("token_budget", "tokens per minute", 60 - now % 60));
        }
        if over_f(policy.usd_per_day, entry.day_usd + r.usd) {
            return Err(budget("spend_budget", "spend for today", day));
        }
        if over_f(policy.usd_per_month, entry.month_usd + r.usd) {
            return Err(budget(
                "spend_budget",
                "spend for this month",
                clock::to_next_month(now),
            ));
        }
        Ok(())
    }

    fn release(&self, entry: &mut KeyBook, ticket: &Ticket) {
        let reserved = &mut entry.reserved;
        let (tokens, usd) = (ticket.tokens, ticket.usd);
        reserved.tokens = reserved.tokens.saturating_sub(tokens);
        reserved.input = reserved.input.saturating_sub(ticket.split.0);
        reserved.output = reserved.output.saturating_sub(ticket.split.1);
        reserved.usd = (reserved.usd - usd).max(0.0);
        reserved.requests = reserved.requests.saturating_sub(1);
    }

    /// Lifts `key`'s suspension; false when it was not suspended.
    pub fn resume(&self, key: &str) -> bool {
        let lifted = lock(&self.book)
            .keys
            .get_mut(key)
            .and_then(|entry| entry.suspended.take())
            .is_some();
        if lifted {
            self.mark(true);
        }
        lifted
    }

    /// Suspends `key` with `reason` (a suspension published by another host of the fleet);
    /// false when it already was.
    pub fn suspend(&self, key: &str, reason: &str) -> bool {
        let mut book = lock(&self.book);
        let entry = book.keys.entry(key.to_owned()).or_default();
        if entry.suspended.is_some() {
            return false;
        }
        entry.suspended = Some(Suspension {
            since: clock::rfc3339(clock::now()),
            reason: reason.to_owned(),
        });
        drop(book);
        self.mark(true);
        true
    }

    /// Each configured key and each key in the book (the rollout pseudo-key aside: it is never
    /// suspended) with whether it is suspended: the `proxyguard_key_suspended` gauge.
    pub fn suspensions(&self) -> BTreeMap<String, bool> {
        let rules = lock(&self.rules);
        let book = lock(&self.book);
        let mut out: BTreeMap<String, bool> = rules
            .policies
            .keys()
            .map(|name| (name.to_string(), false))
            .collect();
        for (name, entry) in &book.keys {
            if !name.starts_with("rollout:") {
                out.insert(name.clone(), entry.suspended.is_some());
            }
        }
        out
    }

    pub(super) fn mark(&self, urgent: bool) {
        if !urgent {
            // Read first: once raised, the flag's cache line stays shared between workers.
            if !self.dirty.load(Ordering::Relaxed) {
                self.dirty.store(true, Ordering::Release);
            }
            return;
        }
        let (flags, wake) = &self.changed;
        let mut flags = lock(flags);
        flags.0 = true;
        flags.1 |= urgent;
        if urgent {
            wake.notify_all();
        }
    }

    /// A copy of the book, windows rolled to `now`, for writing.
    pub fn snapshot(&self) -> Book {
        lock(&self.book).clone()
    }

    /// `proxyguard usage`: per key (all, or `only`), what was used and what is left.
    pub fn report(&self, only: Option<&str>, now: u64) -> Value {
        let rules = lock(&self.rules);
        let mut book = lock(&self.book);
        let mut names: Vec<String> = rules.policies.keys().map(|k| k.to_string()).collect();
        names.extend(book.keys.keys().cloned());
        names.sort();
        names.dedup();
        let mut keys = Vec::new();
        for name in names.into_iter().filter(|n| only.is_none_or(|o| o == n)) {
            let policy = rules
                .policies
                .get(name.as_str())
                .cloned()
                .unwrap_or_default();
            let entry = book.keys.entry(name.clone()).or_default();
            entry.roll(now);
            keys.push(key_report(&name, entry, &policy, now));
        }
        json!({ "keys": keys })
    }
}

/// One key's row of `proxyguard usage`.
pub fn key_report(name: &str, entry: &KeyBook, policy: &Policy, now: u64) -> Value {
    let left_u = |limit: Option<u64>, used: u64| limit.map(|l| l.saturating_sub(used));
    let left_f = |limit: Option<f64>, used: f64| limit.map(|l| (l - used).max(0.0));
    let models: serde_json::Map<String, Value> = entry
        .models
        .iter()
        .map(|(model, m)| {
            (
                model.clone(),
                json!({"tokens_in": m.input, "tokens_out": m.output, "requests": m.requests,
                       "usd": m.usd, "estimated_requests": m.estimated}),
            )
        })
        .collect();
    json!({
        "name": name,
        "suspended": entry.suspended,
        "today": {"tokens": entry.day_tokens, "tokens_in": entry.day_input,
                  "tokens_out": entry.day_output, "requests": entry.day_requests, "usd": entry.day_usd},
        "month": {"usd": entry.month_usd, "models": models},
        "last_minute_tokens": entry.last_minute_tokens(now),
        "limits": {
            "tpm": policy.tpm, "tokens_per_day": policy.tokens_per_day,
            "input_tokens_per_day": policy.input_tokens_per_day,
            "output_tokens_per_day": policy.output_tokens_per_day,
            "requests_per_day": policy.requests_per_day,
            "usd_per_day": policy.usd_per_day, "usd_per_month": policy.usd_per_month,
        },
        "left": {
            "tpm": left_u(policy.tpm, entry.last_minute_tokens(now)),
            "tokens_per_day": left_u(policy.tokens_per_day, entry.day_tokens),
            "input_tokens_per_day": left_u(policy.input_tokens_per_day, entry.day_input),
            "output_tokens_per_day": left_u(policy.output_tokens_per_day, entry.day_output),
            "requests_per_day": left_u(policy.requests_per_day, entry.day_requests),
            "usd_per_day": left_f(policy.usd_per_day, entry.day_usd),
            "usd_per_month": left_f(policy.usd_per_month, entry.month_usd),
        },
    })
}

/// Dollars for `input` and `output` tokens at `price` (per million).
pub fn cost(price: crate::config::proxy::Price, input: u64, output: u64) -> f64 {
    (input as f64 * price.input + output as f64 * price.output) / 1_000_000.0
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("model", &self.model)
            .field("tokens", &self.tokens)
            .field("usd", &self.usd)
            .finish()
    }
}

impl Ticket {
    pub fn key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// What this ticket reserved: input and output tokens, and their price.
    pub fn reserved(&self) -> (u64, u64, f64) {
        (self.split.0, self.split.1, self.usd)
    }

    /// Charges `usage` at `now` in place of the reservation.
    pub fn settle(mut self, usage: Usage, now: u64) -> Charge {
        self.settled = true;
        let usd = cost(self.price, usage.input, usage.output);
        let tokens = usage.total();
        let spike_rule = if self.ledger.spiking.load(Ordering::Acquire) {
            lock(&self.ledger.rules).spike
        } else {
            None
        };
        let mut book = lock(&self.ledger.book);
        let entry = entry(&mut book, &self.key);
        self.ledger.release(entry, &self);
        entry.roll(now);
        entry.day_tokens += tokens;
        entry.day_input += usage.input;
        entry.day_output += usage.output;
        entry.day_requests += 1;
        entry.day_usd += usd;
        entry.month_usd += usd;
        entry.minute_tokens += tokens;
        let model = named(&mut entry.models, &self.model);
        model.input += usage.input;
        model.output += usage.output;
        model.requests += 1;
        model.usd += usd;
        model.estimated += u64::from(usage.estimated);
        let spike = spike_rule.and_then(|rule| spike(entry, &self.key, rule, tokens, now));
        drop(book);
        self.ledger
            .mark(spike.as_ref().is_some_and(|spike| spike.suspended));
        Charge { usd, spike }
    }
}

/// Adds `tokens` to the key's current window and applies the rule.
fn spike(entry: &mut KeyBook, key: &str, rule: SpikeRule, tokens: u64, now: u64) -> Option<Spike> {
    let window = now / WINDOW;
    match entry.windows.last_mut() {
        Some((at, count)) if *at == window => *count += tokens,
        _ => entry.windows.push((window, tokens)),
    }
    entry.windows.retain(|(at, _)| *at + TRAILING >= window);
    let current = entry.windows.last().map_or(0, |(_, count)| *count);
    let trailing: u64 = entry
        .windows
        .iter()
        .filter(|(at, _)| *at < window)
        .map(|(_, count)| count)
        .sum();
    let average = trailing as f64 / TRAILING as f64;
    if rule.floor == 0 || current <= rule.floor || (current as f64) <= rule.factor * average {
        return None;
    }
    if entry.spiked == window {
        return None;
    }
    entry.spiked = window;
    // Rollout tokens share one name: suspending it would stop every rollout.
    let suspended = rule.suspend && !key.starts_with("rollout:");
    if suspended {
        entry.suspended = Some(Suspension {
            since: clock::rfc3339(now),
            reason: format!(
                "usage_spike: {current} tokens in 5 minutes, trailing average {average:.0}"
            ),
        });
    }
    Some(Spike {
        tokens: current,
        average,
        suspended,
    })
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            let mut book = lock(&self.ledger.book);
            if let Some(entry) = book.keys.get_mut(&*self.key) {
                self.ledger.release(entry, self);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::Price;

    const NOW: u64 = 1_796_122_800; // 2026-12-01T11:00:00Z

    fn used(input: u64, output: u64) -> Usage {
        Usage {
            input,
            output,
            estimated: false,
        }
    }

    fn free() -> (Arc<str>, Price) {
        ("other".into(), Price::default())
    }

    #[test]
    fn a_token_budget_reserves_then_settles_to_the_real_usage() {
        let ledger = Arc::new(Ledger::default());
        let key: Arc<str> = "a".into();
        let policy = Policy {
            tokens_per_day: Some(100),
            ..Policy::default()
        };
        let first = ledger.admit(&key, &policy, free(), (60, 0), NOW).unwrap();
        // 60 reserved: 50 more do not fit while the first is in flight.
        let refused = ledger
            .admit(&key, &policy, free(), (50, 0), NOW)
            .unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.reason),
            (429, "token_budget")
        );
        assert_eq!(refused.retry_after, Some(13 * 3600));
        first.settle(used(10, 20), NOW);
        // 30 used: 50 fit now, and a dropped ticket gives its reservation back.
        drop(ledger.admit(&key, &policy, free(), (50, 0), NOW).unwrap());
        let second = ledger.admit(&key, &policy, free(), (70, 0), NOW).unwrap();
        // A stream that overruns is charged in full.
        second.settle(used(10, 200), NOW);
        assert_eq!(ledger.snapshot().keys["a"].day_tokens, 240);
        assert!(ledger.admit(&key, &policy, free(), (1, 0), NOW).is_err());
        // The next UTC day starts afresh.
        assert!(ledger
            .admit(&key, &policy, free(), (100, 0), NOW + 13 * 3600)
            .is_ok());
    }

    #[test]
    fn spend_requests_and_tpm() {
        let ledger = Arc::new(Ledger::default());
        let key: Arc<str> = "a".into();
        let priced = || -> (Arc<str>, Price) {
            (
                "gpt".into(),
                Price {
                    input: 1_000_000.0,
                    output: 2_000_000.0,
                },
            )
        };
        let spend = Policy {
            usd_per_day: Some(10.0),
            ..Policy::default()
        };
        // 3 output tokens reserved: $6.
        let ticket = ledger.admit(&key, &spend, priced(), (0, 3), NOW).unwrap();
        assert_eq!(
            ledger
                .admit(&key, &spend, priced(), (0, 3), NOW)
                .unwrap_err()
                .reason,
            "spend_budget"
        );
        let charge = ticket.settle(used(2, 1), NOW);
        assert_eq!(charge.usd, 4.0);
        assert!(ledger.admit(&key, &spend, priced(), (0, 3), NOW).is_ok());
        assert_eq!(ledger.snapshot().keys["a"].models["gpt"].requests, 1);

        let other: Arc<str> = "b".into();
        let per_day = Policy {
            requests_per_day: Some(2),
            tpm: Some(100),
            ..Policy::default()
        };
        ledger
            .admit(&other, &per_day, free(), (90, 0), NOW)
            .unwrap()
            .settle(used(90, 0), NOW);
        let tpm = ledger
            .admit(&other, &per_day, free(), (20, 0), NOW + 1)
            .unwrap_err();
        assert_eq!((tpm.reason, tpm.retry_after), ("token_budget", Some(59)));
        // Half a minute into the next minute, half of the 90 still counts.
        ledger
            .admit(&other, &per_day, free(), (50, 0), NOW + 90)
            .unwrap()
            .settle(used(1, 0), NOW + 90);
        assert_eq!(
            ledger
                .admit(&other, &per_day, free(), (1, 0), NOW + 91)
                .unwrap_err()
                .reason,
            "request_budget"
        );

        // Input and output separately: the output reservation alone does not fit.
        let split = Policy {
            input_tokens_per_day: Some(100),
            output_tokens_per_day: Some(10),
            ..Policy::default()
        };
        let third: Arc<str> = "c".into();
        let ticket = ledger.admit(&third, &split, free(), (5, 8), NOW).unwrap();
        ticket.settle(used(5, 3), NOW);
        let refused = ledger
            .admit(&third, &split, free(), (5, 8), NOW)
            .unwrap_err();
        assert_eq!(refused.reason, "token_budget");
        assert!(ledger.admit(&third, &split, free(), (90, 7), NOW).is_ok());
    }

    #[test]
    fn a_spike_suspends_until_resumed() {
        let ledger = Arc::new(Ledger::default());
        ledger.configure(
            [],
            Some(SpikeRule {
                floor: 1000,
                factor: 5.0,
                suspend: true,
            }),
        );
        let key: Arc<str> = "a".into();
        let open = Policy::default();
        let mut at = NOW;
        // An hour of steady use: 120 tokens per 5 minutes, no spike.
        for _ in 0..12 {
            let charge = ledger
                .admit(&key, &open, free(), (0, 0), at)
                .unwrap()
                .settle(used(100, 20), at);
            assert_eq!(charge.spike, None);
            at += WINDOW;
        }
        // Under the floor: no spike however steep.
        let charge = ledger
            .admit(&key, &open, free(), (0, 0), at)
            .unwrap()
            .settle(used(900, 0), at);
        assert_eq!(charge.spike, None);
        let charge = ledger
            .admit(&key, &open, free(), (0, 0), at)
            .unwrap()
            .settle(used(200, 0), at);
        let spike = charge.spike.expect("1100 tokens > 1000 and > 5 x 120");
        assert!(spike.suspended && spike.tokens == 1100 && spike.average == 120.0);
        let refused = ledger.admit(&key, &open, free(), (0, 0), at).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.reason),
            (403, "key_suspended")
        );
        assert!(ledger.suspensions()["a"]);
        assert!(ledger.resume("a"));
        assert!(!ledger.resume("a"));
        assert!(!ledger.suspensions()["a"]);
        // Once per window: the rest of this window raises nothing more.
        let charge = ledger
            .admit(&key, &open, free(), (0, 0), at)
            .unwrap()
            .settle(used(5000, 0), at);
        assert_eq!(charge.spike, None);
        let rollout: Arc<str> = "rollout:*".into();
        let charge = ledger
            .admit(&rollout, &open, free(), (0, 0), at)
            .unwrap()
            .settle(used(5000, 0), at);
        assert!(
            !charge.spike.unwrap().suspended,
            "the rollout pseudo-key is never suspended"
        );
        assert!(!ledger.suspensions().contains_key("rollout:*"));
    }
}
