//! A raw SYN sender at a fixed rate, from one real source address of the client namespace (never
//! a random one). hping3 cannot do this here: under `--flood` it ignores `-c`, and with `-i u…`
//! its rate follows the machine's load, so two phases would not see the same offered rate.
//!
//! Every flood is bounded twice: `count` SYNs at most, and `max_time` at most.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::netns;

/// A sender running in its own thread in the client namespace.
pub struct SynFlood {
    /// The sender thread's id, for its CPU time in /proc.
    tid: String,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl SynFlood {
    pub fn start(
        source: Ipv4Addr,
        target: Ipv4Addr,
        port: u16,
        rate: u64,
        count: u64,
        max_time: Duration,
    ) -> Result<SynFlood> {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String>>();
        let (counter, flag) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || -> Result<()> {
            let socket = (|| -> Result<(Socket, String)> {
                netns::enter(netns::CLIENT_NS)?;
                // A raw TCP socket: the kernel writes the IP header, we write the TCP header.
                let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))
                    .context("cannot open a raw socket")?;
                socket.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))?;
                // "PID/task/TID"
                let me = std::fs::read_link("/proc/thread-self")?;
                let tid = me.file_name().context("no thread id")?.to_string_lossy();
                Ok((socket, tid.into_owned()))
            })();
            let socket = match socket {
                Ok((socket, tid)) => {
                    let _ = ready_tx.send(Ok(tid));
                    socket
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(anyhow!("{err:#}")));
                    return Err(err);
                }
            };
            let to = SockAddr::from(SocketAddrV4::new(target, 0));
            let start = Instant::now();
            let mut n: u64 = 0;
            while n < count && !flag.load(Ordering::Relaxed) && start.elapsed() < max_time {
                // Send what is due by now, then sleep a little: the rate holds on average
                // and sleeps stay well above the timer's granularity.
                let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(count);
                while n < due {
                    let segment = syn(source, target, 1024 + (n % 64000) as u16, port, n as u32);
                    // A full queue drops a SYN; it still counts as offered.
                    let _ = socket.send_to(&segment, &to);
                    n += 1;
                    if n.is_multiple_of(256) {
                        counter.store(n, Ordering::Relaxed);
                    }
                }
                counter.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        });
        let tid = ready_rx
            .recv()
            .map_err(|_| anyhow!("the SYN sender died"))??;
        Ok(SynFlood {
            tid,
            sent,
            stop,
            thread: Some(thread),
        })
    }

    /// SYNs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// CPU time the sender thread has used, in ns (precise, from the scheduler). With no IRQ time
    /// accounting in this kernel it includes the softirq work run in the thread's context, which
    /// on a veth is the receive path of the SYN it just sent, and of any answer to it.
    pub fn cpu_ns(&self) -> Result<u64> {
        let path = format!("/proc/self/task/{}/schedstat", self.tid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        Ok(stat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse()?)
    }

    /// Stops the sender; returns how many SYNs it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow!("the SYN sender panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A 20-byte TCP SYN header with a valid checksum.
fn syn(source: Ipv4Addr, target: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&seq.to_be_bytes());
    h[12] = 5 << 4; // data offset: 5 words, no options
    h[13] = 0x02; // SYN
    h[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let checksum = tcp_checksum(source, target, &h);
    h[16..18].copy_from_slice(&checksum.to_be_bytes());
    h
}

/// RFC 793's checksum over the IPv4 pseudo-header and the segment.
fn tcp_checksum(source: Ipv4Addr, target: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&source.octets());
    add(&target.octets());
    add(&[0, 6]);
    add(&(segment.len() as u16).to_be_bytes());
    add(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_verifies_to_zero() {
        let (s, t) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        let h = syn(s, t, 40000, 18080, 7);
        // Summing again with the checksum in place gives 0xffff, i.e. a complement of 0.
        assert_eq!(tcp_checksum(s, t, &h), 0);
        assert_eq!(h[13], 0x02);
    }
}
