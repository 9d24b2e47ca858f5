//! Running wrk and reading its report: requests per second and the latency percentiles of
//! `--latency`.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    pub rps: f64,
    /// Requests completed in the run.
    pub requests: u64,
    /// Milliseconds.
    pub p50: f64,
    pub p99: f64,
    /// Responses other than 2xx/3xx (a sign that a limit triggered).
    pub non_2xx: u64,
}

impl Run {
    pub fn to_json(self) -> Value {
        json!({ "rps": self.rps, "p50_ms": self.p50, "p99_ms": self.p99, "non_2xx": self.non_2xx })
    }
}

/// `wrk` with `connections` for `duration`, POSTing the chat body that `script` sets up.
pub fn run(url: &str, script: &Path, connections: u32, duration: Duration) -> Result<Run> {
    // 1,000 connections may need more descriptors than the soft limit: raise it to the hard one.
    let line = format!(
        "ulimit -n $(ulimit -Hn) && exec wrk -t2 -c{connections} -d{}s --latency -s {} {url}",
        duration.as_secs(),
        script.display()
    );
    let out = Command::new("sh")
        .args(["-c", &line])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{line}` failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text).with_context(|| format!("cannot read wrk's report:\n{text}"))
}

pub fn parse(report: &str) -> Option<Run> {
    let (mut rps, mut requests) = (None, None);
    let (mut p50, mut p99, mut non_2xx) = (None, None, 0);
    for line in report.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(value)) => rps = value.parse().ok(),
            (Some(count), Some("requests")) => requests = count.parse().ok(),
            (Some("50%"), Some(value)) => p50 = millis(value),
            (Some("99%"), Some(value)) => p99 = millis(value),
            (Some("Non-2xx"), _) => non_2xx = line.rsplit(' ').next()?.parse().ok()?,
            _ => {}
        }
    }
    Some(Run {
        rps: rps?,
        requests: requests?,
        p50: p50?,
        p99: p99?,
        non_2xx,
    })
}

fn millis(value: &str) -> Option<f64> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_report() {
        let report = "Running 3s test @ http://127.0.0.1:1/v1/chat/completions
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   1.10ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.10ms
  60000 requests in 3.00s, 10.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  20000.50
Transfer/sec:      3.33MB
";
        let run = parse(report).unwrap();
        assert_eq!(
            run,
            Run {
                rps: 20000.5,
                requests: 60000,
                p50: 0.85,
                p99: 2.1,
                non_2xx: 12
            }
        );
        assert!(parse("garbage").is_none());
        assert_eq!(millis("1.5s"), Some(1500.0));
    }
}
