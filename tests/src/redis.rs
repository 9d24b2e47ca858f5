//! A real `redis-server` (Debian's package, installed by `cargo xtask setup`) on a loopback port
//! of its own, with its own directory and an append-only file synced on every write, so a kill
//! and a start again keep what it had counted (as a production Redis with AOF does). And a real
//! Redis Cluster: three such servers with `--cluster-enabled yes`, their slots spread by
//! `redis-cli --cluster create` (the same package).

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// More arguments for `redis-server` (a Cluster node's).
    extra: Vec<String>,
    child: Option<Child>,
}

/// Where `redis-server` is, or why a test cannot run.
pub fn binary() -> Result<PathBuf, String> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            "redis-server is not installed (apt-get install redis-server; `cargo xtask setup` does)"
                .to_owned()
        })
}

impl RedisServer {
    /// Starts on `port` with its files in `dir`, and waits for its PONG.
    pub fn start(port: u16, dir: &Path) -> RedisServer {
        RedisServer::start_with(port, dir, Vec::new())
    }

    fn start_with(port: u16, dir: &Path, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port,
            dir: dir.to_owned(),
            extra,
            child: None,
        };
        server.start_again();
        server
    }

    /// Starts it (again) on the same port and files.
    pub fn start_again(&mut self) {
        let binary = binary().expect("redis-server");
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Whether it answers PING now.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// SIGKILL: Redis gone at once, as in a crash or a lost host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli` with `args`: its output, or a panic naming what failed.
pub fn cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools, a dependency of redis-server)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of three primaries on loopback, each a [`RedisServer`] with its own ports
/// (client and cluster bus) and directory; `redis-cli --cluster create` gives each a third of
/// the 16,384 slots.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the three nodes in `dir`, creates the cluster and waits until every node says
    /// `cluster_state:ok`. `port` gives a free port each time it is called.
    pub fn start(dir: &Path, mut port: impl FnMut() -> u16) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let node_dir = dir.join(format!("node{i}"));
                std::fs::create_dir_all(&node_dir).expect("node dir");
                let extra = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                ]
                .iter()
                .map(|a| a.to_string())
                .chain([port().to_string()])
                .collect();
                RedisServer::start_with(port(), &node_dir, extra)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        cli(&create);
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.nodes.iter().all(|n| {
            cli(&["-p", &n.port.to_string(), "cluster", "info"]).contains("cluster_state:ok")
        }) {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Each node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                cli(&["-p", &n.port.to_string(), "dbsize"])
                    .trim()
                    .parse()
                    .expect("DBSIZE")
            })
            .collect()
    }

    /// Which node holds `key`'s slot, from `CLUSTER NODES` (`ID HOST:PORT@BUS FLAGS ...
    /// STATE FROM-TO ...` per node).
    pub fn node_of(&self, key: &str) -> usize {
        let port = self.nodes[0].port.to_string();
        let slot: u16 = cli(&["-p", &port, "cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        let nodes = cli(&["-p", &port, "cluster", "nodes"]);
        let owner = nodes
            .lines()
            .find(|line| {
                line.split_whitespace().skip(8).any(|range| {
                    let (from, to) = range.split_once('-').unwrap_or((range, range));
                    matches!((from.parse::<u16>(), to.parse::<u16>()),
                        (Ok(from), Ok(to)) if (from..=to).contains(&slot))
                })
            })
            .expect("a node holds every slot");
        let addr = owner.split_whitespace().nth(1).expect("an address");
        let owner_port: u16 = addr
            .split(['@', ','])
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("a port");
        self.nodes
            .iter()
            .position(|n| n.port == owner_port)
            .expect("one of ours")
    }

    /// `GET key`, following the cluster's redirections (`-c`).
    pub fn get(&self, key: &str) -> String {
        let port = self.nodes[0].port.to_string();
        cli(&["-c", "-p", &port, "get", key]).trim().to_owned()
    }
}
