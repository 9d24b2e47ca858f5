//! The fleet's hook in the pipeline (`[fleet]`, issue 15): a key revoked anywhere is refused
//! here, and every request of a key is checked and counted in Redis once, after the local
//! limits and the local reservation passed (so Redis sees only what this host would admit).
//!
//! While Redis is unreachable, the mode answers: `local` adds the share limiters (every rate and
//! budget ÷ `expected_instances`, against this host's own counts for the day), `allow` nothing,
//! `deny` a 503.

use std::{net::IpAddr, sync::Arc};

use http::StatusCode;

use super::{addresses, auth::StoredKey};
use crate::{
    fleet::{
        script::{Client, Reserve},
        Fleet, Mode, Verdict,
    },
    proxy::{
        budget::{clock, policy::Policy, Ledger, Metered},
        reject::Reject,
        state::State,
    },
};

/// 401 `key_revoked` for a key revoked on any host of the fleet.
pub fn check_revoked(fleet: Option<&Arc<Fleet>>, key: &StoredKey) -> Result<(), Reject> {
    match fleet {
        Some(fleet) if fleet.revoked(&key.hash) => Err(Reject::new(
            StatusCode::UNAUTHORIZED,
            "key_revoked",
            "this key was revoked",
        )),
        _ => Ok(()),
    }
}

/// The shared limits of a request of `key` from `ip`; a metered request's reservation is
/// attached to `metered` to be settled with it.
pub async fn check(
    fleet: &Arc<Fleet>,
    state: &State,
    ledger: &Ledger,
    key: &StoredKey,
    ip: IpAddr,
    metered: &mut Option<Metered>,
) -> Result<(), Reject> {
    let mode = fleet.mode();
    let verdict = if mode == Mode::Shared {
        let reserve = metered.as_ref().map(|m| {
            let (input, output, usd) = m.ticket.reserved();
            Reserve { input, output, usd }
        });
        let client = state.per_ip.map(|rule| {
            let client = Client {
                addr: addresses::client(ip, rule.ipv6_prefix),
                v6_prefix: rule.ipv6_prefix,
            };
            (client, rule.rpm, rule.burst)
        });
        fleet
            .admit(
                &key.name,
                state.key_rate(key.rpm),
                &key.policy,
                reserve,
                client,
            )
            .await
    } else {
        Verdict::Unavailable(mode)
    };
    match verdict {
        Verdict::Shared(reservation) => {
            if let Some(metered) = metered {
                metered.fleet = reservation;
            }
            Ok(())
        }
        Verdict::Refused(reject) => Err(reject),
        Verdict::Unavailable(Mode::Deny) => Err(fleet.unavailable()),
        Verdict::Unavailable(mode) => {
            if mode == Mode::Local {
                local_share(state, ledger, key, ip, metered.is_some())?;
            }
            // Admitted apart from the fleet: its usage is added to the shared counts later.
            if let Some(metered) = metered {
                let (input, output, usd) = metered.ticket.reserved();
                metered.fleet =
                    Some(fleet.apart(&key.name, &key.policy, Reserve { input, output, usd }));
            }
            Ok(())
        }
    }
}

/// This host's share of every limit, while Redis is unreachable.
fn local_share(
    state: &State,
    ledger: &Ledger,
    key: &StoredKey,
    ip: IpAddr,
    metered: bool,
) -> Result<(), Reject> {
    let Some((instances, share)) = &state.fleet_share else {
        // One instance: its share is the whole, which the local limits held already.
        return Ok(());
    };
    share.check_ip(ip)?;
    share.check_key(&key.name)?;
    if metered {
        ledger.within(&key.name, &share_of(&key.policy, *instances), clock::now())?;
    }
    Ok(())
}

/// `policy` with every budget divided by `instances`.
pub fn share_of(policy: &Policy, instances: u32) -> Policy {
    let n = u64::from(instances.max(1));
    let part = |limit: Option<u64>| limit.map(|l| l / n);
    let part_f = |limit: Option<f64>| limit.map(|l| l / n as f64);
    Policy {
        tpm: part(policy.tpm),
        tokens_per_day: part(policy.tokens_per_day),
        input_tokens_per_day: part(policy.input_tokens_per_day),
        output_tokens_per_day: part(policy.output_tokens_per_day),
        requests_per_day: part(policy.requests_per_day),
        usd_per_day: part_f(policy.usd_per_day),
        usd_per_month: part_f(policy.usd_per_month),
        ..policy.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_every_budget() {
        let policy = Policy {
            requests_per_day: Some(50),
            tokens_per_day: Some(1000),
            usd_per_month: Some(9.0),
            models: vec!["gpt-*".into()],
            ..Policy::default()
        };
        let share = share_of(&policy, 3);
        assert_eq!(share.requests_per_day, Some(16));
        assert_eq!(share.tokens_per_day, Some(333));
        assert_eq!(share.usd_per_month, Some(3.0));
        assert_eq!(share.tpm, None);
        assert_eq!(share.models, policy.models, "only the budgets change");
    }
}
