//! The per-address request limit's table (threat 9, issue 16 point 4): GCRA per client, where a
//! client is an IPv4 address or an IPv6 prefix (`proxy.rate.ipv6_prefix`, /64 by default, as in
//! XDP: one host commonly owns a whole /64, so counting single IPv6 addresses would hand it 2^64
//! budgets). An IPv4-mapped IPv6 address counts as its IPv4 address.
//!
//! The table is bounded (`proxy.rate.max_addresses`), in shards with one lock each. A shard that
//! is full first drops its idle entries (an idle entry is the same as no entry: dropping it
//! forgets nothing). If it is still full, every entry in it is a client being limited right now,
//! and none is evicted: a new client is counted in one shared overflow bucket instead, at the
//! per-address rate. So a flood of distinct addresses can neither grow memory past the bound nor
//! reset the budget of a client already counted; while it lasts, new clients share one budget.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::{IpAddr, Ipv6Addr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

const SHARDS: usize = 64;

/// The per-address rule: `rpm` with `burst`, the IPv6 prefix length, and the table's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRule {
    pub rpm: u32,
    pub burst: u32,
    pub ipv6_prefix: u8,
    pub max_addresses: usize,
}

impl AddressRule {
    /// `None` when `rpm` is 0 (the limit is off).
    pub fn new(rpm: u32, burst: u32, ipv6_prefix: u8, max_addresses: usize) -> Option<AddressRule> {
        (rpm > 0).then_some(AddressRule {
            rpm,
            burst: burst.max(1),
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
            max_addresses: max_addresses.max(SHARDS),
        })
    }
}

/// The client `ip` counts as: itself for IPv4, its prefix of `bits` for IPv6.
pub fn client(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(bits.clamp(1, 128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

pub struct Addresses {
    rule: AddressRule,
    /// Nanoseconds between requests, and the burst's worth of them.
    interval: u64,
    tolerance: u64,
    start: Instant,
    hasher: RandomState,
    /// Each client's theoretical arrival time, in nanoseconds since `start`.
    shards: Vec<Mutex<HashMap<IpAddr, u64>>>,
    overflow: Mutex<u64>,
    /// Requests counted in the overflow bucket.
    overflowed: AtomicU64,
}

impl Addresses {
    pub fn new(rule: AddressRule) -> Addresses {
        let interval = 60_000_000_000 / u64::from(rule.rpm.max(1));
        Addresses {
            rule,
            interval,
            tolerance: interval * u64::from(rule.burst),
            start: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            overflow: Mutex::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn rule(&self) -> AddressRule {
        self.rule
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// One GCRA step on `tat`: admitted (and counted), or the wait until it would be.
    fn step(&self, tat: &mut u64, now: u64) -> Result<(), Duration> {
        let next = (*tat).max(now) + self.interval;
        if next - now > self.tolerance {
            return Err(Duration::from_nanos(next - self.tolerance - now));
        }
        *tat = next;
        Ok(())
    }

    /// Counts a request from `ip`; the wait when it is over the limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let client = client(ip, self.rule.ipv6_prefix);
        let now = self.now();
        let shard = &self.shards[self.hasher.hash_one(client) as usize % SHARDS];
        let mut table = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = table.get_mut(&client) {
            return self.step(tat, now);
        }
        let cap = self.rule.max_addresses / SHARDS;
        if table.len() >= cap {
            table.retain(|_, tat| *tat > now);
        }
        if table.len() >= cap {
            drop(table);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            let mut tat = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            return self.step(&mut tat, now);
        }
        let mut tat = 0;
        let verdict = self.step(&mut tat, now);
        table.insert(client, tat);
        verdict
    }

    /// Forgets idle clients and gives their memory back.
    pub fn prune(&self) {
        let now = self.now();
        for shard in &self.shards {
            let mut table = shard.lock().unwrap_or_else(|p| p.into_inner());
            table.retain(|_, tat| *tat > now);
            table.shrink_to_fit();
        }
    }

    /// Clients in the table now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Requests counted in the shared overflow bucket since the start.
    #[cfg(test)]
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_their_prefix() {
        let table = [
            ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff::9", 64, "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff::9", 48, "2001:db8:1::"),
            ("2001:db8::1", 128, "2001:db8::1"),
            ("::ffff:10.1.2.3", 64, "10.1.2.3"),
            ("10.1.2.3", 64, "10.1.2.3"),
        ];
        for (ip, bits, want) in table {
            let got = client(ip.parse().unwrap(), bits);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "{ip}/{bits}");
        }
    }

    #[test]
    fn rotating_addresses_inside_a_64_shares_one_budget() {
        let limiter = Addresses::new(AddressRule::new(60, 3, 64, 1000).unwrap());
        let admitted = (0..100u16)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8:7:7:{i:x}::{i:x}").parse().unwrap();
                limiter.check(ip).is_ok()
            })
            .count();
        assert_eq!(admitted, 3, "one /64, one burst");
        assert_eq!(limiter.len(), 1);
        // Another /64 is another client.
        assert!(limiter.check("2001:db8:7:8::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_flood_of_distinct_prefixes_stays_bounded_and_evicts_no_active_client() {
        let max = 64 * 16;
        // A burst of 1 at 1 rpm: a client stays "active" (its state non-trivial) for a minute.
        let limiter = Addresses::new(AddressRule::new(1, 1, 64, max).unwrap());
        let victim: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.check(victim).is_ok());
        assert!(limiter.check(victim).is_err(), "the victim is spent");
        for i in 0..50_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_u128 << 96) | (u128::from(i) << 64),
            ));
            let _ = limiter.check(ip);
        }
        assert!(
            limiter.len() <= max,
            "{} clients in a table bounded at {max}",
            limiter.len()
        );
        assert!(
            limiter.overflowed() > 0,
            "the rest went to the overflow bucket"
        );
        assert!(
            limiter.check(victim).is_err(),
            "the flood did not evict the victim's state (it would have a fresh budget)"
        );
    }
}
