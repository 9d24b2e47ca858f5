//! Limits shared by three proxyguards on one Redis (issue 15): a real `redis-server` on its own
//! loopback port, three `proxyguard run --no-kernel` with one config apart from their names, in
//! front of one upstream. Counts and statuses only, never durations: every request must get an
//! answer (a client read timeout would fail it), and the counts must match the mode.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use proxyguard_tests::{
    daemon::Daemon,
    l7::{free_port, new_key, LiteLlm},
    proxyguard_bin,
    redis::{self, RedisCluster, RedisServer},
    upstream::upstream,
};
use serde_json::Value;

const INSTANCES: [&str; 3] = ["host-a", "host-b", "host-c"];

/// Where the instances' Redis is.
enum Store {
    Server(RedisServer),
    Cluster(RedisCluster),
}

struct Fleet {
    _dir: tempfile::TempDir,
    store: Store,
    daemons: Vec<Daemon>,
    keys: Vec<(String, String)>,
}

/// Redis, and three instances sharing it with keys `(name, extra TOML lines)`, in front of the
/// tests' plain upstream.
fn fleet(keys: &[(&str, &str)], fleet_extra: &str) -> Option<Fleet> {
    if let Err(why) = redis::binary() {
        eprintln!("skipped: {why}");
        return None;
    }
    fleet_on(upstream(), "sk-upstream", keys, fleet_extra)
}

/// The same in front of the upstream on `upstream` whose key is `upstream_key`.
fn fleet_on(
    upstream: u16,
    upstream_key: &str,
    keys: &[(&str, &str)],
    fleet_extra: &str,
) -> Option<Fleet> {
    Some(start(Setup {
        upstream,
        upstream_key,
        keys,
        fleet_extra,
        ..Setup::default()
    }))
}

/// The same on a three-node Redis Cluster, each instance told a different node first.
fn cluster_fleet(keys: &[(&str, &str)], per_ip: (u32, u32)) -> Option<Fleet> {
    if let Err(why) = redis::binary() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some(start(Setup {
        keys,
        per_ip,
        cluster: true,
        ..Setup::default()
    }))
}

struct Setup<'a> {
    upstream: u16,
    upstream_key: &'a str,
    keys: &'a [(&'a str, &'a str)],
    /// More `[fleet]` lines.
    fleet_extra: &'a str,
    /// `[proxy.rate]`'s `per_ip_rpm` and `per_ip_burst`.
    per_ip: (u32, u32),
    cluster: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            upstream: upstream(),
            upstream_key: "sk-upstream",
            keys: &[],
            fleet_extra: "",
            per_ip: (100_000, 10_000),
            cluster: false,
        }
    }
}

fn start(setup: Setup) -> Fleet {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis_dir = dir.path().join("redis");
    fs::create_dir(&redis_dir).expect("redis dir");
    let store = match setup.cluster {
        false => Store::Server(RedisServer::start(free_port(), &redis_dir)),
        true => Store::Cluster(RedisCluster::start(&redis_dir, free_port)),
    };
    let key_file = dir.path().join("upstream.key");
    fs::write(&key_file, format!("{}\n", setup.upstream_key)).expect("key file");
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).expect("chmod");
    let keys: Vec<(String, String, String)> = setup
        .keys
        .iter()
        .map(|(name, lines)| {
            let (key, hash) = new_key();
            (
                name.to_string(),
                key,
                format!("sha256 = \"{hash}\"\n{lines}"),
            )
        })
        .collect();
    let daemons = INSTANCES
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let redis = match &store {
                Store::Server(server) => format!("redis_url = \"{}\"", server.url()),
                // Each instance learns the cluster from another node first.
                Store::Cluster(cluster) => {
                    let mut urls = cluster.urls();
                    urls.rotate_left(i);
                    format!(
                        "redis_url = \"{}\"\ncluster = true\ncluster_seeds = {:?}",
                        urls[0],
                        &urls[1..]
                    )
                }
            };
            let (per_ip_rpm, per_ip_burst) = setup.per_ip;
            let mut config = format!(
                "[bind]\nenabled = false\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:{}\"\nupstream_key_file = \"{}\"\n\n[fleet]\n{redis}\ninstance = \"{instance}\"\nexpected_instances = 3\n# The machine running the tests is shared: 100 ms, not the default 30, keeps\n# timeouts (which count high) rare.\ntimeout_ms = 100\n{}\n\n[proxy.rate]\nper_ip_rpm = {per_ip_rpm}\nper_ip_burst = {per_ip_burst}\n",
                setup.upstream,
                key_file.display(),
                setup.fleet_extra,
            );
            for (name, _, lines) in &keys {
                config.push_str(&format!("\n[[proxy.keys]]\nname = \"{name}\"\nrpm = 100000\n{lines}\n"));
            }
            Daemon::start_with_env(&config, &["--no-kernel"], &[])
        })
        .collect();
    let fleet = Fleet {
        _dir: dir,
        store,
        daemons,
        keys: keys.into_iter().map(|(n, k, _)| (n, k)).collect(),
    };
    fleet.wait_mode("shared");
    fleet
}

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One chat completion as `key` on `daemon`: the status and the error code (empty on success).
fn chat(daemon: &Daemon, key: &str) -> (u16, String) {
    chat_with(daemon, key, BODY)
}

fn chat_with(daemon: &Daemon, key: &str, body: &str) -> (u16, String) {
    let addr = daemon.ready["proxy"]["listen"].as_str().expect("listen");
    let mut stream = TcpStream::connect(addr).expect("connect");
    // Far above timeout_ms: a request that hung on a dead Redis fails here.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("every request gets an answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

/// Waits until `pred` holds, within the harness's patience.
fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if pred() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within 30 s: {what}");
}

impl Fleet {
    /// The one Redis server (the tests that kill it run on one).
    fn redis(&mut self) -> &mut RedisServer {
        match &mut self.store {
            Store::Server(server) => server,
            Store::Cluster(_) => panic!("this fleet runs on a Redis Cluster"),
        }
    }

    fn cluster(&self) -> &RedisCluster {
        match &self.store {
            Store::Cluster(cluster) => cluster,
            Store::Server(_) => panic!("this fleet runs on one Redis server"),
        }
    }

    fn cluster_mut(&mut self) -> &mut RedisCluster {
        match &mut self.store {
            Store::Cluster(cluster) => cluster,
            Store::Server(_) => panic!("this fleet runs on one Redis server"),
        }
    }

    fn key(&self, name: &str) -> &str {
        &self.keys.iter().find(|k| k.0 == name).expect("key").1
    }

    fn mode(&self, daemon: &Daemon) -> String {
        daemon.cli_json(&["status"])["fleet"]["mode"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn wait_mode(&self, mode: &str) {
        for daemon in &self.daemons {
            eventually(&format!("fleet mode {mode}"), || self.mode(daemon) == mode);
        }
    }

    /// `requests` round-robin over the instances as `key`: the tally of `(status, code)`.
    fn round_robin(&self, key: &str, requests: usize) -> Vec<(u16, String)> {
        (0..requests)
            .map(|i| chat(&self.daemons[i % self.daemons.len()], key))
            .collect()
    }

    /// Today's shared requests of `key`, as `proxyguard usage` on `daemon` shows them.
    fn shared_requests(&self, daemon: &Daemon, key: &str) -> Option<u64> {
        self.shared_today(daemon, key, "requests")
    }

    fn shared_today(&self, daemon: &Daemon, key: &str, what: &str) -> Option<u64> {
        let usage = daemon.cli_json(&["usage", "--key", key]);
        usage["keys"][0]["fleet"]["today"][what].as_u64()
    }
}

fn count(answers: &[(u16, String)], status: u16, code: &str) -> usize {
    answers
        .iter()
        .filter(|(s, c)| *s == status && c == code)
        .count()
}

#[test]
fn a_day_budget_of_50_admits_50_across_three_instances() {
    let Some(fleet) = fleet(&[("shared", "requests_per_day = 50")], "") else {
        return;
    };
    let answers = fleet.round_robin(fleet.key("shared"), 150);
    let admitted = count(&answers, 200, "");
    let refused = count(&answers, 429, "request_budget");
    assert_eq!(admitted + refused, 150, "{answers:?}");
    // 50 ± 5%, not 150 (nor 3 × 50).
    assert!(
        (48..=52).contains(&admitted),
        "{admitted} admitted across the fleet"
    );
    // Every instance's `usage` shows the fleet's count. It errs high, never low: on a loaded
    // machine a call may time out after Redis ran it (counted there, and again when what was
    // admitted meanwhile is added back).
    for daemon in &fleet.daemons {
        let shared = fleet
            .shared_requests(daemon, "shared")
            .expect("fleet count");
        assert!(
            (admitted as u64..=admitted as u64 + 3).contains(&shared),
            "{shared} shared, {admitted} admitted"
        );
    }
}

#[test]
fn with_redis_killed_each_instance_holds_its_share_and_sharing_resumes_with_the_counts_added() {
    let Some(mut fleet) = fleet(&[("shared", "requests_per_day = 60")], "") else {
        return;
    };
    through_an_outage(
        &mut fleet,
        |fleet| fleet.redis().kill(),
        |fleet| fleet.redis().start_again(),
    );
}

/// Key `shared` (60 requests a day): 30 shared, then Redis gone (`down`), then back (`up`).
/// While apart each instance holds its share; when sharing resumes what each admitted apart is
/// in the shared counts.
fn through_an_outage(
    fleet: &mut Fleet,
    down: impl FnOnce(&mut Fleet),
    up: impl FnOnce(&mut Fleet),
) {
    let key = fleet.key("shared").to_owned();
    // 30 shared: 10 on each instance.
    let shared = fleet.round_robin(&key, 30);
    assert_eq!(count(&shared, 200, ""), 30, "{shared:?}");

    down(fleet);
    // Each instance's share is 60 / 3 = 20, and each has served 10 of them today.
    let apart = fleet.round_robin(&key, 90);
    assert_eq!(
        count(&apart, 200, "") + count(&apart, 429, "request_budget"),
        90,
        "no request fails beyond what `local` says: {apart:?}"
    );
    assert_eq!(
        count(&apart, 200, ""),
        30,
        "10 more on each instance, up to its share"
    );
    fleet.wait_mode("local");
    for daemon in &fleet.daemons {
        let status = daemon.cli_json(&["status"]);
        assert_eq!(status["fleet"]["breaker"], "open", "{status}");
        assert!(
            status["fleet"]["mode_changes"].as_u64() >= Some(2),
            "{status}"
        );
    }
    // The probes (one a second, each open → half-open → open) keep finding it down: two of
    // them fail, and the mode stays local (on a Cluster, a probe that skipped the dead node
    // would call it healthy).
    let changes = |daemon: &Daemon| daemon.cli_json(&["status"])["fleet"]["mode_changes"].as_u64();
    for daemon in &fleet.daemons {
        let before = changes(daemon).unwrap_or(0);
        eventually("two probes fail while Redis is down", || {
            changes(daemon) >= Some(before + 4)
        });
        assert_eq!(fleet.mode(daemon), "local");
    }

    up(fleet);
    fleet.wait_mode("shared");
    // What each instance admitted apart is added to the shared counts: 30 + 30 = 60.
    // A call that timed out after Redis had run it is counted there and owed too: the count
    // errs high, never low (60 + a few such).
    eventually("the counts admitted apart added", || {
        fleet
            .shared_requests(&fleet.daemons[0], "shared")
            .is_some_and(|n| (60..=63).contains(&n))
    });
    let after = fleet.round_robin(&key, 15);
    assert_eq!(
        count(&after, 429, "request_budget"),
        15,
        "the day's 60 are spent fleet-wide: {after:?}"
    );
}

/// Today's number (UTC days since the epoch), as the fleet's keys name it.
fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 86_400
}

#[test]
fn a_key_revoked_on_one_instance_is_refused_on_another_without_a_reload() {
    let Some(fleet) = fleet(&[("victim", ""), ("bystander", "")], "") else {
        return;
    };
    let (a, c) = (&fleet.daemons[0], &fleet.daemons[2]);
    assert_eq!(chat(c, fleet.key("victim")).0, 200);
    let revoked = a.cli_json(&["keys", "revoke", "victim"]);
    assert_eq!(revoked["revoked"], "victim", "{revoked}");
    eventually("C refuses the key revoked on A", || {
        chat(c, fleet.key("victim")) == (401, "key_revoked".into())
    });
    // Each instance learns of it on its own poll of Redis's version key: C first is no promise
    // about B.
    eventually("B refuses the key revoked on A", || {
        chat(&fleet.daemons[1], fleet.key("victim")) == (401, "key_revoked".into())
    });
    assert_eq!(
        chat(c, fleet.key("bystander")).0,
        200,
        "only the revoked key is refused"
    );
    let status = c.cli_json(&["status"]);
    assert_eq!(status["fleet"]["revoked_keys"], 1, "{status}");
}

#[test]
fn deny_refuses_and_allow_admits_while_redis_is_down() {
    for (mode, want) in [("deny", 503u16), ("allow", 200)] {
        let extra = format!("on_redis_error = \"{mode}\"");
        let Some(mut fleet) = fleet(&[("k", "requests_per_day = 3")], &extra) else {
            return;
        };
        let key = fleet.key("k").to_owned();
        fleet.redis().kill();
        let answers = fleet.round_robin(&key, 30);
        let code = if want == 503 { "fleet_unavailable" } else { "" };
        // `allow`: the fleet's limit is off, and each instance's own (3 a day) still holds.
        let expected = if want == 503 { 30 } else { 9 };
        assert_eq!(count(&answers, want, code), expected, "{mode}: {answers:?}");
        fleet.wait_mode(mode);
    }
}

#[test]
fn a_token_budget_is_shared_and_settled_to_what_litellm_reports() {
    if let Err(why) = redis::binary() {
        eprintln!("skipped: {why}");
        return;
    }
    const MASTER: &str = "sk-litellm-master-fleet";
    let litellm = LiteLlm::start(MASTER, None, &[]);
    // LiteLLM's mock reports 10 prompt and 20 completion tokens per answer; each request
    // reserves its prompt estimate plus max_tokens (20), and settles to 30.
    let Some(fleet) = fleet_on(
        litellm.port,
        MASTER,
        &[("tokens", "tokens_per_day = 300")],
        "",
    ) else {
        return;
    };
    let body =
        r#"{"model":"mock-gpt","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;
    let answers: Vec<(u16, String)> = (0..30)
        .map(|i| chat_with(&fleet.daemons[i % 3], fleet.key("tokens"), body))
        .collect();
    let admitted = count(&answers, 200, "");
    assert_eq!(
        admitted + count(&answers, 429, "token_budget"),
        30,
        "{answers:?}"
    );
    // 300 / 30 = 10 across the fleet, not 10 on each instance.
    assert!((9..=11).contains(&admitted), "{admitted}: {answers:?}");
    // Settled with the difference: the shared count is what LiteLLM reported.
    // (Erring high only if a Redis call timed out after Redis ran it.)
    let settled = 30 * admitted as u64;
    eventually("the shared tokens are the reported ones", || {
        fleet
            .shared_today(&fleet.daemons[1], "tokens", "tokens")
            .is_some_and(|tokens| (settled..=settled + 60).contains(&tokens))
    });
}

/// The fleet on a three-node Redis Cluster (each instance told a different node first). A key's
/// windows, a client address's rate and the key state are three hash tags, so three slots, and
/// (with these names) on more than one node: each request's key and address go as two calls.
#[test]
fn on_a_redis_cluster_a_day_budget_is_shared_and_a_revocation_reaches_every_instance() {
    let Some(fleet) = cluster_fleet(
        &[("shared", "requests_per_day = 50"), ("victim", "")],
        (100_000, 10_000),
    ) else {
        return;
    };
    let statuses = || -> Vec<Value> {
        fleet
            .daemons
            .iter()
            .map(|d| d.cli_json(&["status"])["fleet"].clone())
            .collect()
    };
    let before = statuses();
    let answers = fleet.round_robin(fleet.key("shared"), 150);
    let admitted = count(&answers, 200, "");
    assert_eq!(
        admitted + count(&answers, 429, "request_budget"),
        150,
        "{answers:?}"
    );
    assert!(
        (48..=52).contains(&admitted),
        "{admitted} admitted across the fleet"
    );
    // Counted in the cluster, not held by each instance's local share (which would admit about
    // as many): the day's counter is on the node of `{shared}`'s slot, and no instance left
    // shared mode during the run.
    let counted: u64 = fleet
        .cluster()
        .get(&format!("pg:{{shared}}:req:{}", today()))
        .parse()
        .expect("the day's counter in the cluster");
    assert!(
        (admitted as u64..=admitted as u64 + 3).contains(&counted),
        "{counted} counted, {admitted} admitted"
    );
    for (daemon, before) in fleet.daemons.iter().zip(&before) {
        let status = &daemon.cli_json(&["status"])["fleet"];
        assert_eq!(status["cluster"], true, "{status}");
        assert_eq!(status["mode"], "shared", "{status}");
        assert_eq!(status["mode_changes"], before["mode_changes"], "{status}");
        let shared = fleet.shared_requests(daemon, "shared");
        assert_eq!(shared, Some(counted), "usage on {}", daemon.ready["proxy"]);
    }

    // Key state (`{fleet}`, its own slot) works there too.
    let (a, c) = (&fleet.daemons[0], &fleet.daemons[2]);
    assert_eq!(chat(c, fleet.key("victim")).0, 200);
    a.cli_json(&["keys", "revoke", "victim"]);
    for daemon in &fleet.daemons[1..] {
        eventually("B and C refuse the key revoked on A", || {
            chat(daemon, fleet.key("victim")) == (401, "key_revoked".into())
        });
    }
    let per_node = fleet.cluster().keys_per_node();
    assert!(
        per_node.iter().filter(|keys| **keys > 0).count() >= 2,
        "the fleet's keys sit on more than one node: {per_node:?}"
    );
}

/// On a Cluster a request's key and address are checked in two calls, and what one counted is
/// given back when the other refuses: a refused request counts nowhere, as with one server.
#[test]
fn on_a_redis_cluster_the_address_rate_is_shared_and_a_refused_request_counts_nowhere() {
    // One address may make 15 requests (refilled one a minute) across the fleet.
    let Some(fleet) = cluster_fleet(
        &[
            ("thrifty", "requests_per_day = 5"),
            ("plenty", "requests_per_day = 1000"),
        ],
        (1, 15),
    ) else {
        return;
    };
    let thrifty = fleet.round_robin(fleet.key("thrifty"), 15);
    assert_eq!(count(&thrifty, 200, ""), 5, "{thrifty:?}");
    assert_eq!(count(&thrifty, 429, "request_budget"), 10, "{thrifty:?}");
    // The ten the key refused were given back to the address: 10 of its 15 are left.
    let plenty = fleet.round_robin(fleet.key("plenty"), 24);
    assert_eq!(count(&plenty, 200, ""), 10, "{plenty:?}");
    assert_eq!(count(&plenty, 429, "rate_ip"), 14, "{plenty:?}");
    // And the 14 the address refused were given back to the key: its day holds the 10.
    eventually("plenty's day holds only what was admitted", || {
        fleet
            .shared_requests(&fleet.daemons[0], "plenty")
            .is_some_and(|n| (10..=12).contains(&n))
    });
}

/// A Cluster node down is Redis unreachable for the requests it serves: each instance holds its
/// share, and when the node is back (its append-only file intact) the instances share again with
/// what they admitted apart added.
#[test]
fn on_a_redis_cluster_a_node_down_means_the_local_share_and_sharing_resumes() {
    let Some(mut fleet) = cluster_fleet(&[("shared", "requests_per_day = 60")], (100_000, 10_000))
    else {
        return;
    };
    // The node that holds this key's slot.
    let node = fleet
        .cluster()
        .node_of(&format!("pg:{{shared}}:req:{}", today()));
    through_an_outage(
        &mut fleet,
        |fleet| fleet.cluster_mut().nodes[node].kill(),
        |fleet| fleet.cluster_mut().nodes[node].start_again(),
    );
}

/// The demo the README's "More than one host" tells a person to run, as it says:
/// `sudo share/fleet-demo.sh`, then the spend loop and the `usage` line it prints. One budget
/// (1200 tokens a day, 30 an answer) is spent across its three instances: 40 admitted, not 120,
/// and `usage` on each shows the fleet's count.
#[test]
fn the_readme_fleet_demo_spends_one_budget_across_its_three_instances() {
    use std::{
        io::{BufRead, BufReader},
        os::unix::process::CommandExt,
        process::Stdio,
    };
    if let Err(why) = redis::binary() {
        eprintln!("skipped: {why}");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = fs::read_to_string(root.join("README.md")).expect("README");
    assert!(
        readme.contains("`sudo share/fleet-demo.sh`"),
        "the README names the demo"
    );

    struct Demo(std::process::Child);
    impl Drop for Demo {
        fn drop(&mut self) {
            // The script's trap stops Redis and the instances and removes its directory.
            let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGTERM);
            let _ = self.0.wait();
        }
    }
    let mut demo = Demo(
        Command::new("sh")
            .arg("share/fleet-demo.sh")
            .arg(proxyguard_bin())
            .current_dir(&root)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .expect("share/fleet-demo.sh"),
    );
    let mut printed = String::new();
    for line in BufReader::new(demo.0.stdout.take().expect("stdout")).lines() {
        let line = line.expect("the demo's output");
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Ctrl-C stops the demo") {
            break;
        }
    }
    let between = |from: &str, to: &str| -> String {
        let start = printed
            .find(from)
            .unwrap_or_else(|| panic!("{from:?} in {printed}"));
        let rest = &printed[start + from.len()..];
        rest[..rest
            .find(to)
            .unwrap_or_else(|| panic!("{to:?} in {printed}"))]
            .to_owned()
    };
    let spend = between("Spend it round-robin:\n", "Watch it on each");
    let out = Command::new("sh")
        .args(["-c", &spend])
        .output()
        .expect("sh");
    let statuses = String::from_utf8_lossy(&out.stdout).into_owned();
    let admitted = statuses.split_whitespace().filter(|s| *s == "200").count();
    let refused = statuses.split_whitespace().filter(|s| *s == "429").count();
    assert_eq!(admitted + refused, 60, "{statuses}");
    // 1200 tokens ÷ 30 per answer, across the three (reservations settle to what was reported).
    assert!((38..=41).contains(&admitted), "{admitted}: {statuses}");

    let watch = between("this host's own):\n", "(and b.toml");
    let usage = Command::new("sh")
        .args(["-c", watch.trim()])
        .output()
        .expect("usage");
    let usage = String::from_utf8_lossy(&usage.stdout).into_owned();
    let shared = format!("{} tokens, {admitted} requests", 30 * admitted);
    assert!(
        usage.contains("fleet today (every instance; this is host-a, shared): ")
            && usage.contains(&shared),
        "{shared:?} in\n{usage}"
    );
}
