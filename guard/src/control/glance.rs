//! What `proxyguard top` shows that the metrics cannot hold: the last security events, and the
//! client addresses refused most often (an address is no metric label: the set is unbounded).
//! Every audit record passes [`observe`]; both tallies are bounded whatever the traffic.

use std::{
    collections::{HashMap, VecDeque},
    sync::{LazyLock, Mutex},
};

use serde_json::{json, Map, Value};

/// Security events kept for the snapshot.
const EVENTS: usize = 32;
/// Refused addresses tracked. When full, the least-refused one gives way to the newcomer, which
/// inherits its count (the space-saving tally): an address refused often is never lost, and a
/// newcomer's count is at most overstated by the count it took over.
const CLIENTS: usize = 256;

#[derive(Default)]
struct Glance {
    events: VecDeque<Value>,
    refused: HashMap<String, Refused>,
}

struct Refused {
    count: u64,
    /// `l7` (a refused request) or `xdp` (a dropped SYN).
    via: &'static str,
    last: String,
}

static GLANCE: LazyLock<Mutex<Glance>> = LazyLock::new(Mutex::default);

/// Notes `record` (with its `ts` and `kind`) if it is a security event. Allowed requests, the
/// bulk of the stream, return before any lock is taken.
pub fn observe(record: &Map<String, Value>) {
    let kind = record.get("kind").and_then(Value::as_str).unwrap_or("");
    let refused = match kind {
        "request" => match record.get("decision").and_then(Value::as_str) {
            Some("allow") | None => return,
            Some("deny") => record
                .get("client")
                .and_then(Value::as_str)
                .map(|c| (c, "l7")),
            // `error`: the upstream or the client failed; no refusal of the client.
            Some(_) => None,
        },
        "syn_dropped" => record
            .get("source")
            .and_then(Value::as_str)
            .map(|s| (s, "xdp")),
        "rate_spike" | "reload_failed" => None,
        _ if record.contains_key("severity") => None,
        _ => return,
    };
    let ts = record.get("ts").and_then(Value::as_str).unwrap_or("");
    let mut glance = GLANCE.lock().unwrap_or_else(|e| e.into_inner());
    if glance.events.len() == EVENTS {
        glance.events.pop_front();
    }
    glance.events.push_back(Value::Object(record.clone()));
    if let Some((client, via)) = refused {
        count_refused(&mut glance.refused, client, via, ts);
    }
}

fn count_refused(tally: &mut HashMap<String, Refused>, client: &str, via: &'static str, ts: &str) {
    if let Some(entry) = tally.get_mut(client) {
        entry.count += 1;
        entry.via = via;
        entry.last = ts.to_owned();
        return;
    }
    let mut count = 1;
    if tally.len() >= CLIENTS {
        let least = tally
            .iter()
            .min_by_key(|(_, r)| r.count)
            .map(|(client, r)| (client.clone(), r.count));
        if let Some((least, least_count)) = least {
            tally.remove(&least);
            count += least_count;
        }
    }
    tally.insert(
        client.to_owned(),
        Refused {
            count,
            via,
            last: ts.to_owned(),
        },
    );
}

/// The `top` most refused addresses (most first) and the last `events` security events (newest
/// last), as JSON for the snapshot.
pub fn snapshot(top: usize, events: usize) -> (Value, Value) {
    let glance = GLANCE.lock().unwrap_or_else(|e| e.into_inner());
    let mut refused: Vec<(&String, &Refused)> = glance.refused.iter().collect();
    refused.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
    let refused: Vec<Value> = refused
        .into_iter()
        .take(top)
        .map(|(client, r)| json!({ "client": client, "via": r.via, "count": r.count, "last": r.last }))
        .collect();
    let skip = glance.events.len().saturating_sub(events);
    let recent: Vec<Value> = glance.events.iter().skip(skip).cloned().collect();
    (Value::Array(refused), Value::Array(recent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_stays_bounded_and_keeps_the_heavy_hitter() {
        let mut tally = HashMap::new();
        for _ in 0..50 {
            count_refused(&mut tally, "10.0.0.1", "l7", "t");
        }
        for n in 0..(CLIENTS * 4) {
            count_refused(
                &mut tally,
                &format!("10.1.{}.{}", n / 250, n % 250),
                "xdp",
                "t",
            );
        }
        assert_eq!(tally.len(), CLIENTS);
        assert_eq!(tally["10.0.0.1"].count, 50);
        assert_eq!(tally["10.0.0.1"].via, "l7");
    }

    #[test]
    fn only_security_events_are_kept() {
        let record = |value: Value| match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        observe(&record(
            json!({ "ts": "t1", "kind": "request", "decision": "allow", "client": "192.0.2.9" }),
        ));
        observe(&record(json!({ "ts": "t2", "kind": "ready" })));
        observe(&record(
            json!({ "ts": "t3", "kind": "request", "decision": "deny", "reason": "bad_key", "client": "192.0.2.7" }),
        ));
        observe(&record(
            json!({ "ts": "t4", "kind": "bind_denied", "severity": "high", "port": 4000 }),
        ));
        let (refused, events) = snapshot(10, EVENTS);
        let kinds: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.ends_with(&["request", "bind_denied"]), "{kinds:?}");
        assert!(!events.to_string().contains("192.0.2.9"), "{events}");
        let refused = refused.as_array().unwrap();
        assert!(refused
            .iter()
            .any(|r| r["client"] == "192.0.2.7" && r["via"] == "l7" && r["count"] == 1));
        assert!(!refused.iter().any(|r| r["client"] == "192.0.2.9"));
    }
}
