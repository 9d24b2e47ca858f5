//! The protected service: a deliberately slow Python HTTP server in the guard namespace, standing
//! in for a Python LLM proxy. A fixed pool of worker threads each takes one connection at a time
//! and spends `DELAY` on every request, so a source that completes many handshakes per second
//! starves everyone else of workers, which is the harm the XDP limit is there to prevent.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::netns;

/// Worker threads of the upstream (its whole concurrency).
pub const WORKERS: u32 = 8;
/// Time each request holds a worker.
pub const DELAY: Duration = Duration::from_millis(30);
/// The listen backlog: connections beyond the workers wait here.
const BACKLOG: u32 = 1024;

const SERVER: &str = r#"
import signal, socket, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it quietly; xtask tears down the rest
host, port, workers, delay, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port))
listener.listen(backlog)
body = b'{"id":"bench","object":"chat.completion","choices":[]}'
response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)

def worker():
    while True:
        conn, _ = listener.accept()
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if b"\r\n\r\n" in data:
                time.sleep(delay)  # the model call: the worker is busy, not the CPU
                conn.sendall(response)
        except OSError:
            pass
        finally:
            conn.close()

for _ in range(workers):
    threading.Thread(target=worker, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// The running server; killed on drop.
pub struct Upstream {
    child: Child,
}

impl Upstream {
    pub fn start(port: u16) -> Result<Upstream> {
        let mut child = netns::command_in(netns::GUARD_NS, "python3")
            .args(["-u", "-c", SERVER, netns::GUARD_ADDR])
            .arg(port.to_string())
            .arg(WORKERS.to_string())
            .arg(format!("{}", DELAY.as_secs_f64()))
            .arg(BACKLOG.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start python3 for the slow upstream")?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut upstream = Upstream { child };
        if line.trim() != "ready" {
            let status = upstream.child.try_wait()?;
            bail!("the slow upstream did not start (status {status:?})");
        }
        Ok(upstream)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
