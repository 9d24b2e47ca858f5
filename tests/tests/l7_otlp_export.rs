//! `[export] otlp_endpoint` (issue 15): audit records reach an OTLP/HTTP receiver of the test's
//! own, decoded with opentelemetry-proto's generated types (not the guard's own declarations), with
//! their fields and the resource's; and a receiver that accepts but never answers does not slow
//! requests, it shows up as counted drops.

use std::{io::BufReader, net::TcpStream};

use proxyguard_tests::{
    l7::{metric, Guard},
    otlp::{
        attribute, receiver, receiver_answering, records_once, stalled_receiver, text, Any,
        LogRecord, Posted, Received,
    },
    upstream,
};

const ROUTE: &str = "/v1/chat/completions";

fn config(endpoint_port: u16, export: &str) -> String {
    format!(
        "\n[proxy.rate]\nper_key_rpm = 0\nper_ip_rpm = 0\n\n[export]\notlp_endpoint = \"http://127.0.0.1:{endpoint_port}/v1/logs\"\n{export}\n"
    )
}

fn serve_requests(guard: &Guard, key: &str, n: usize) -> Vec<u16> {
    let addr = guard.base.trim_start_matches("http://");
    let mut conn = BufReader::new(TcpStream::connect(addr).expect("connect"));
    (0..n)
        .map(|_| upstream::request(&mut conn, key).expect("an answer"))
        .collect()
}

#[test]
fn records_reach_the_receiver_with_their_fields_and_the_resource() {
    let received = Received::default();
    let port = receiver(received.clone());
    let guard = Guard::start(
        upstream::upstream(),
        "sk-upstream-otlp",
        &["alice"],
        &config(port, "batch_size = 8\ninstance = \"pg-test-a\"\n"),
    );
    let key = guard.key("alice").to_owned();
    assert_eq!(serve_requests(&guard, &key, 3), [200, 200, 200]);
    assert_eq!(serve_requests(&guard, "sk-not-a-key", 1), [401]);

    let requests = |all: &[proxyguard_tests::otlp::LogRecord]| {
        all.iter()
            .filter(|r| r.event_name == "request")
            .cloned()
            .collect::<Vec<_>>()
    };
    let records = requests(&records_once(&received, |all| requests(all).len() >= 4));
    let exports = received.lock().unwrap().clone();
    assert_eq!(records.len(), 4, "every request exported: {exports:?}");
    for (path, content_type, _) in &exports {
        assert_eq!(path, "/v1/logs");
        assert_eq!(content_type, "application/x-protobuf");
    }

    let resource = exports[0].2.resource_logs[0]
        .resource
        .as_ref()
        .expect("a resource");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        text(attribute(&resource.attributes, "service.name")),
        Some("proxyguard")
    );
    assert_eq!(
        text(attribute(&resource.attributes, "service.instance.id")),
        Some("pg-test-a")
    );
    assert_eq!(
        text(attribute(&resource.attributes, "host.name")),
        Some(host.trim())
    );
    let scope = exports[0].2.resource_logs[0].scope_logs[0]
        .scope
        .as_ref()
        .expect("a scope");
    assert_eq!(scope.name, "proxyguard");

    let allowed: Vec<_> = records
        .iter()
        .filter(|r| attribute(&r.attributes, "status") == Some(&Any::IntValue(200)))
        .collect();
    assert_eq!(allowed.len(), 3);
    for record in &allowed {
        assert_eq!(text(attribute(&record.attributes, "route")), Some(ROUTE));
        assert_eq!(text(attribute(&record.attributes, "key")), Some("alice"));
        assert_eq!(
            text(attribute(&record.attributes, "decision")),
            Some("allow")
        );
        assert_eq!(record.severity_text, "INFO");
        assert!(record.time_unix_nano > 0 && record.observed_time_unix_nano > 0);
        let body = match record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(Any::StringValue(body)) => body.clone(),
            other => panic!("a string body, not {other:?}"),
        };
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["kind"], "request");
        assert_eq!(body["route"], ROUTE);
    }
    let refused = records
        .iter()
        .find(|r| attribute(&r.attributes, "status") == Some(&Any::IntValue(401)))
        .expect("the refused request");
    assert_eq!(refused.severity_text, "WARN");
    assert_eq!(
        text(attribute(&refused.attributes, "decision")),
        Some("deny")
    );

    // Never key material: neither the client key, the bad one, nor the upstream's.
    let everything = format!("{exports:?}");
    for secret in [key.as_str(), "sk-not-a-key", "sk-upstream-otlp"] {
        assert!(!everything.contains(secret), "{secret} was exported");
    }
    let text = guard.metrics();
    assert!(
        metric(&text, "proxyguard_otlp_exported_total") >= 4,
        "{text}"
    );
}

#[test]
fn a_receiver_that_never_answers_costs_drops_not_requests() {
    const REQUESTS: usize = 300;
    const QUEUE: u64 = 16;
    const BATCH: u64 = 8;
    let guard = Guard::start(
        upstream::upstream(),
        "sk-upstream-otlp",
        &["alice"],
        &config(
            stalled_receiver(),
            &format!("timeout_ms = 500\nqueue = {QUEUE}\nbatch_size = {BATCH}\n"),
        ),
    );
    let key = guard.key("alice").to_owned();
    let statuses = serve_requests(&guard, &key, REQUESTS);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request served: {statuses:?}"
    );
    let text = guard.metrics();
    let dropped = metric(
        &text,
        "proxyguard_events_dropped_total{sink=\"otlp\",kind=\"request\"}",
    );
    // At most one queue and one batch in flight can still be waiting; everything else is
    // counted, and nothing counted was more than was offered.
    assert!(
        dropped >= REQUESTS as u64 - QUEUE - BATCH && dropped <= REQUESTS as u64,
        "{dropped} of {REQUESTS} request records counted as dropped:\n{text}"
    );
    assert_eq!(metric(&text, "proxyguard_otlp_exported_total"), 0, "{text}");
    // stdout is not affected: every request's line is there.
    let mut guard = guard;
    let lines = guard
        .records_until_sentinel()
        .into_iter()
        .filter(|e| e["kind"] == "request" && e["route"] == ROUTE)
        .count();
    assert_eq!(lines, REQUESTS);
}

/// The request records among `records`.
fn request_records(records: &[LogRecord]) -> usize {
    records.iter().filter(|r| r.event_name == "request").count()
}

/// 20 requests served with their records exported to a receiver that first answers `statuses`.
fn twenty_requests_exported_to(statuses: &[u16]) -> (Guard, Received, Posted) {
    let (received, posted) = (Received::default(), Posted::default());
    let port = receiver_answering(received.clone(), posted.clone(), statuses);
    let guard = Guard::start(
        upstream::upstream(),
        "sk-upstream-otlp",
        &["alice"],
        &config(port, "batch_size = 8\n"),
    );
    let key = guard.key("alice").to_owned();
    assert!(serve_requests(&guard, &key, 20).iter().all(|s| *s == 200));
    (guard, received, posted)
}

fn records_of(request: &proxyguard_tests::otlp::ExportLogsServiceRequest) -> Vec<LogRecord> {
    request
        .resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| sl.log_records.clone())
        .collect()
}

#[test]
fn a_batch_the_receiver_could_not_take_yet_is_sent_again_and_nothing_is_lost() {
    // A collector restarting, or pushing back: a 503, a 429 and a 502 (the three retries a
    // batch gets), then 200s.
    let (guard, received, posted) = twenty_requests_exported_to(&[503, 429, 502]);
    let records = records_once(&received, |all| request_records(all) >= 20);
    assert_eq!(
        request_records(&records),
        20,
        "every request's record arrived"
    );
    let statuses: Vec<u16> = posted.lock().unwrap().iter().map(|p| p.0).collect();
    assert_eq!(&statuses[..4], [503, 429, 502, 200], "{statuses:?}");
    // The batch sent four times was the same batch each time.
    let first = records_of(&posted.lock().unwrap()[0].1);
    assert!(posted.lock().unwrap()[..4]
        .iter()
        .all(|(_, p)| records_of(p) == first));
    let text = guard.metrics();
    assert_eq!(
        metric(
            &text,
            "proxyguard_events_dropped_total{sink=\"otlp\",kind=\"request\"}"
        ),
        0,
        "{text}"
    );
}

#[test]
fn a_batch_the_receiver_refuses_as_bad_is_dropped_and_counted_not_sent_again() {
    let (guard, received, posted) = twenty_requests_exported_to(&[400]);
    // Every record is posted once: what the 400 refused and what was accepted after it.
    let all_posted = || -> usize {
        posted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| request_records(&records_of(p)))
            .sum()
    };
    records_once(&received, |_| all_posted() >= 20);
    assert_eq!(all_posted(), 20, "no record posted twice");
    let refused = request_records(&records_of(&posted.lock().unwrap()[0].1));
    assert_eq!(posted.lock().unwrap()[0].0, 400);
    let text = guard.metrics();
    assert_eq!(
        metric(
            &text,
            "proxyguard_events_dropped_total{sink=\"otlp\",kind=\"request\"}"
        ),
        refused as u64,
        "{text}"
    );
}
