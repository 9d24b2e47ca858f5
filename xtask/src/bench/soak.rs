//! The soak: a fresh proxyguard in front of the bench's nginx upstream, held at a steady moderate
//! rate (wrk with few connections, each pausing between requests) for ten minutes (one with
//! `--quick`), its resident memory and descriptor count sampled every 10 s. A leak shows as RSS
//! or descriptors that keep climbing after the first minute; the verdict says whether they did.
//!
//! The upstream pool's connections come and go with the load (one more is opened when a request
//! arrives just as a pooled one is being returned; idle ones close after a minute), so the
//! descriptor verdict counts those apart: everything else must stay exactly equal.

use std::{collections::HashSet, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{peers, wrk};

const CONNECTIONS: u32 = 10;
/// Each connection pauses this long between requests: at most 10 × 100 = 1,000 req/s.
const DELAY_MS: u32 = 10;
const EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub secs: u64,
    pub rss_mib: f64,
    pub fds: usize,
    /// Of `fds`, the sockets to the upstream (the pool).
    pub pool: usize,
}

impl Sample {
    /// Descriptors other than the upstream pool's.
    fn held(&self) -> usize {
        self.fds.saturating_sub(self.pool)
    }

    fn to_json(self) -> Value {
        json!({ "secs": self.secs, "rss_mib": self.rss_mib, "fds": self.fds, "upstream_pool": self.pool })
    }
}

pub struct Soak {
    pub run: wrk::Run,
    pub samples: Vec<Sample>,
}

/// Runs the soak against `upstream_port`; `script` is the bench's chat-completion Lua script.
pub fn run(
    binary: &Path,
    work: &Path,
    upstream_port: u16,
    key_hash: &str,
    script: &str,
    duration: Duration,
) -> Result<Soak> {
    let dir = work.join("soak");
    std::fs::create_dir_all(&dir)?;
    let (guard, port) = peers::proxyguard(binary, &dir, upstream_port, key_hash, "")?;
    let paced = dir.join("steady.lua");
    std::fs::write(
        &paced,
        format!("{script}function delay()\n  return {DELAY_MS}\nend\n"),
    )?;
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    println!(
        "bench: soak, {} s at up to {} req/s ({CONNECTIONS} connections, {DELAY_MS} ms apart), RSS and fds every {} s",
        duration.as_secs(),
        CONNECTIONS * 1000 / DELAY_MS,
        EVERY.as_secs()
    );
    let pid = guard.pid();
    // wrk runs a little past the last sample, so that one is still taken under load.
    let load = std::thread::spawn(move || {
        wrk::run(&url, &paced, CONNECTIONS, duration + Duration::from_secs(2))
    });
    let started = std::time::Instant::now();
    let mut samples = Vec::new();
    let mut next = EVERY;
    while !load.is_finished() && next <= duration {
        if started.elapsed() >= next {
            let secs = next.as_secs();
            samples.push(Sample {
                secs,
                rss_mib: rss_mib(pid)?,
                fds: fd_count(pid)?,
                pool: sockets_to(pid, upstream_port)?,
            });
            next += EVERY;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = load
        .join()
        .map_err(|_| anyhow::anyhow!("the soak's wrk thread panicked"))??;
    Ok(Soak { run, samples })
}

/// Current resident memory (VmRSS), in MiB.
fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("proxyguard exited during the soak")?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib / 1024.0)
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("proxyguard exited during the soak")?
        .count())
}

/// How many of `pid`'s TCP sockets have remote port `port`: its socket inodes matched against
/// its network namespace's /proc/PID/net/tcp.
fn sockets_to(pid: u32, port: u16) -> Result<usize> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .context("proxyguard exited during the soak")?
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))?;
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote = fields
                .get(2)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            remote == Some(port) && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count())
}

impl Soak {
    /// The sample everything later is judged against: the first one a tenth of the way in (after
    /// the first minute of the full soak), once pools and buffers have reached their size.
    fn reference(&self) -> Option<Sample> {
        let total = self.samples.last()?.secs;
        self.samples.iter().copied().find(|s| s.secs * 10 >= total)
    }

    /// RSS growth after the reference sample, in MiB per minute (least squares).
    fn slope(&self) -> f64 {
        let Some(reference) = self.reference() else {
            return 0.0;
        };
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.secs >= reference.secs)
            .map(|s| (s.secs as f64 / 60.0, s.rss_mib))
            .collect();
        let n = points.len() as f64;
        if n < 2.0 {
            return 0.0;
        }
        let (mx, my) = (
            points.iter().map(|p| p.0).sum::<f64>() / n,
            points.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        if var == 0.0 {
            0.0
        } else {
            cov / var
        }
    }

    /// Flat: the last RSS within 10% of the reference's, and the same count of descriptors
    /// other than the upstream pool's.
    pub fn flat(&self) -> bool {
        match (self.reference(), self.samples.last()) {
            (Some(reference), Some(last)) => {
                (last.rss_mib - reference.rss_mib).abs() <= 0.1 * reference.rss_mib
                    && last.held() == reference.held()
            }
            _ => false,
        }
    }

    pub fn summary(&self) -> String {
        let (Some(first), Some(last), Some(reference)) =
            (self.samples.first(), self.samples.last(), self.reference())
        else {
            return "soak: no samples".into();
        };
        let max_rss = self.samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
        let max_fds = self.samples.iter().map(|s| s.fds).max().unwrap_or(0);
        format!(
            "soak: {:.0} req/s for {} s; RSS first {:.1}, at {} s {:.1}, last {:.1}, max {max_rss:.1} MiB, slope {:+.3} MiB/min; fds (upstream pool apart) first {}, at {} s {}, last {}; fds in all max {max_fds}: {}",
            self.run.rps,
            last.secs,
            first.rss_mib,
            reference.secs,
            reference.rss_mib,
            last.rss_mib,
            self.slope(),
            first.held(),
            reference.secs,
            reference.held(),
            last.held(),
            if self.flat() { "flat" } else { "NOT flat" }
        )
    }

    pub fn to_json(&self) -> Value {
        let samples: Vec<Value> = self.samples.iter().map(|s| s.to_json()).collect();
        let pick = |s: Option<Sample>| s.map(Sample::to_json);
        json!({
            "connections": CONNECTIONS,
            "delay_ms": DELAY_MS,
            "run": self.run.to_json(),
            "first": pick(self.samples.first().copied()),
            "reference": pick(self.reference()),
            "last": pick(self.samples.last().copied()),
            "max_rss_mib": self.samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max),
            "max_fds": self.samples.iter().map(|s| s.fds).max(),
            "rss_slope_mib_per_min": self.slope(),
            "verdict": if self.flat() { "flat" } else { "not flat" },
            "samples": samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soak(points: &[(u64, f64, usize)]) -> Soak {
        Soak {
            run: wrk::Run {
                rps: 1000.0,
                requests: 60_000,
                p50: 1.0,
                p99: 2.0,
                non_2xx: 0,
            },
            samples: points
                .iter()
                .map(|&(secs, rss_mib, fds)| Sample {
                    secs,
                    rss_mib,
                    fds,
                    pool: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn judges_against_the_sample_after_the_first_tenth() {
        // Warm-up growth in the first minute does not count.
        let mut points = vec![(10, 5.0, 20), (20, 8.0, 30), (30, 9.0, 31)];
        points.extend((4..=60).map(|i| (i * 10, 10.0, 31)));
        let flat = soak(&points);
        assert_eq!(flat.reference().unwrap().secs, 60);
        assert!(flat.flat());
        assert!(flat.slope().abs() < 1e-9);

        let mut leaking = points.clone();
        for (i, p) in leaking.iter_mut().enumerate().skip(5) {
            p.1 = 10.0 + i as f64 * 0.05;
        }
        let leaking = soak(&leaking);
        assert!(!leaking.flat(), "{}", leaking.summary());
        assert!((leaking.slope() - 0.3).abs() < 1e-6, "{}", leaking.slope());

        let mut fd_leak = points.clone();
        fd_leak.last_mut().unwrap().2 = 32;
        assert!(!soak(&fd_leak).flat());

        // One more pooled upstream connection at the end is not a leak.
        let mut churn = soak(&fd_leak);
        churn.samples.last_mut().unwrap().pool = 1;
        assert!(churn.flat(), "{}", churn.summary());
    }

    #[test]
    fn no_samples_is_not_flat() {
        assert!(!soak(&[]).flat());
        assert_eq!(soak(&[]).slope(), 0.0);
    }
}
