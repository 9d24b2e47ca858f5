//! The request workers: `proxy.worker_threads` threads, each running its own current-thread
//! tokio runtime, and the `SO_REUSEPORT` listeners that feed them.
//!
//! Why: on one shared multi-thread runtime a request crossed threads (work stealing, the pooled
//! client's connection tasks, its pool lock), and each crossing is a futex wake-up. Here every
//! front listener of a worker is its own socket in one `SO_REUSEPORT` group, so the kernel
//! spreads connections over the workers, and a connection, its requests and their upstream
//! connections stay on the thread that accepted it (issue 16, docs/design-request-path.md).
//! The control plane (signals, the control socket, reloads, the admin listener) stays on the
//! daemon's own runtime.

use std::{
    io,
    net::SocketAddr,
    sync::{mpsc, Arc},
    thread::{self, JoinHandle},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    runtime::Handle,
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
};

struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The running workers; dropping this stops them (after the listeners drained: the proxy and
/// the gateway wait for their own tasks first).
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (handle_tx, handle_rx) = mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = thread::Builder::new()
                .name(format!("proxyguard-w{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = handle_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Driving this future drives every task spawned onto the handle.
                    let _ = runtime.block_on(stopped);
                    // Whatever is still open after the drain is cut here.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended at start"))??;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// Each worker's runtime, in worker order.
    pub fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// `count` listening sockets on `addr` (port 0: one port chosen for all), as std listeners to
/// be registered by the worker that serves each. More than one share the port through
/// `SO_REUSEPORT`; a plain bind goes first, so a port another process holds is still refused
/// as before (a reuseport group only forms among sockets that all set the option).
/// Call from inside a tokio runtime (the sockets pass through its reactor once).
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let probe = std::net::TcpListener::bind(addr)?;
    if count <= 1 {
        probe.set_nonblocking(true)?;
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr()?;
    drop(probe);
    (0..count)
        .map(|_| {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(1024)?.into_std()
        })
        .collect()
}

/// One worker's listener under a cap shared with the other workers.
pub struct Acceptor {
    listener: TcpListener,
}

impl Acceptor {
    /// Registers `listener` with the calling worker's runtime.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Acceptor> {
        listener.set_nonblocking(true)?;
        Ok(Acceptor {
            listener: TcpListener::from_std(listener)?,
        })
    }

    /// The next connection and its slot of `cap`. A worker waits for room, then for a
    /// connection, holding no slot meanwhile (a worker holding a slot for an empty queue would
    /// keep another worker's connection out although the cap has room), and takes the slot once
    /// the connection is accepted. Past the cap the connections wait unserved in the kernel's
    /// accept queue, except one per worker at most: a worker that saw room while idle accepts
    /// the next connection and holds it here until a slot frees. With one worker, nothing past
    /// the cap is ever accepted.
    pub async fn accept(
        &self,
        cap: &Arc<Semaphore>,
    ) -> io::Result<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
        let closed = |_| io::Error::other("the connection cap was closed");
        drop(cap.acquire().await.map_err(closed)?);
        let (stream, addr) = self.listener.accept().await?;
        let permit = cap.clone().acquire_owned().await.map_err(closed)?;
        Ok((permit, stream, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_group_shares_one_port_and_a_held_port_is_refused() {
        let group = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|l| l.local_addr().unwrap().port() == port));
        // A second daemon on the same port is refused, as with a plain bind.
        let again = bind(group[0].local_addr().unwrap(), 2);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn each_worker_runs_on_its_own_thread() {
        let workers = Workers::start(2).unwrap();
        let seen: Vec<_> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel();
                h.spawn(async move {
                    let name = thread::current().name().map(str::to_owned);
                    tx.send(name).unwrap()
                });
                rx.recv().unwrap()
            })
            .collect();
        let expected = ["proxyguard-w0", "proxyguard-w1"].map(|n| Some(n.to_owned()));
        assert_eq!(seen, expected);
    }
}
