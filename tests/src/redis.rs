//! A real `redis-server` (Debian's package, installed by `cargo xtask setup`) on a loopback port
//! of its own, with its own directory and an append-only file synced on every write, so a kill
//! and a start again keep what it had counted (as a production Redis with AOF does).

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
        let mut server = RedisServer {
            port,
            dir: dir.to_owned(),
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
