//! The paced, open-loop load client (`cargo xtask pace`, which the bench runs as a process of its
//! own): requests at a fixed offered rate on N keep-alive HTTP/1.1 connections, plain or TLS, with
//! latency measured from each request's *scheduled* send time.
//!
//! Why not wrk with `delay()`: a closed-loop client waits for an answer before it sends again, so
//! a slow answer delays the requests behind it and they are never counted as slow (coordinated
//! omission); and wrk's delay only approximates a rate. Here the schedule is fixed up front:
//! request k of connection c is due at `start + (c + k·N) / rate`. A connection still busy when
//! its next request is due sends it late, and that wait is part of the request's latency, as it
//! would be for a real client at that rate.
//!
//! One thread per connection with blocking sockets keeps the timing simple; each thread's timer
//! slack is set to 1 µs so its sleeps end on time. Every latency is kept (a few hundred thousand
//! at most) and sorted, so the percentiles are exact. The report is one JSON object on stdout.
//! Besides the latency from the schedule it gives the service time alone (from the actual send)
//! and the share of requests sent 1 ms or more late, so a slow round says whether the target was
//! slow or the schedule queued; `PACE_DUMP=FILE` writes every counted request (connection, due,
//! lateness, service time) for a closer look.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// The `pace` subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// `http://HOST:PORT/PATH` or `https://...` (TLS checked against `--ca-file`).
    #[arg(long)]
    pub url: String,
    /// Requests per second offered, over all connections.
    #[arg(long)]
    pub rate: f64,
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Seconds sent on the same schedule first and not counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// `Name: value`, repeatable.
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// The request body; with one the method is POST, without GET.
    #[arg(long, default_value = "")]
    pub body: String,
    /// The method, when it is neither.
    #[arg(long)]
    pub method: Option<String>,
    /// A PEM CA to trust for https URLs.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

impl Args {
    /// The benches' load: the chat completion `BODY` posted as JSON with `auth` (an
    /// `Authorization: ...` line), the rest on the schedule given.
    pub fn chat(
        url: String,
        rate: f64,
        connections: u32,
        secs: f64,
        warmup_secs: f64,
        auth: String,
    ) -> Args {
        Args {
            url,
            rate,
            connections,
            secs,
            warmup_secs,
            headers: vec!["Content-Type: application/json".into(), auth],
            body: super::BODY.into(),
            method: None,
            ca_file: None,
        }
    }
}

/// The figures of one paced run (milliseconds for latencies).
#[derive(Debug, Clone, PartialEq)]
pub struct Paced {
    pub rate: f64,
    /// Answers counted over the measured seconds, per second.
    pub achieved_rps: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// The same percentiles of the service time alone (from the actual send to the whole
    /// answer): what the target took, without the wait of a connection behind its schedule.
    pub service_p50: f64,
    pub service_p99: f64,
    /// The share of requests sent 1 ms or more after their due time: a connection still busy
    /// with its last answer, or a thread not scheduled. Above a few percent the round measured
    /// queueing (a rate above what the target and the machine sustain) or the machine's stalls.
    pub late_share: f64,
    pub completed: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// Requests still unsent when the run gave up on a target far slower than the rate.
    pub unsent: u64,
    /// Answers over the whole run, warm-up included (for CPU per request).
    pub answered_all: u64,
}

impl Paced {
    pub fn to_json(&self) -> Value {
        json!({
            "rate": self.rate, "achieved_rps": self.achieved_rps,
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "p999_ms": self.p999,
            "max_ms": self.max, "service_p50_ms": self.service_p50,
            "service_p99_ms": self.service_p99, "late_share": self.late_share,
            "completed": self.completed, "non_2xx": self.non_2xx,
            "errors": self.errors, "unsent": self.unsent, "answered_all": self.answered_all,
        })
    }

    fn from_json(value: &Value) -> Option<Paced> {
        let f = |name: &str| value.get(name)?.as_f64();
        let n = |name: &str| value.get(name)?.as_u64();
        Some(Paced {
            rate: f("rate")?,
            achieved_rps: f("achieved_rps")?,
            p50: f("p50_ms")?,
            p90: f("p90_ms")?,
            p99: f("p99_ms")?,
            p999: f("p999_ms")?,
            max: f("max_ms")?,
            service_p50: f("service_p50_ms").unwrap_or(0.0),
            service_p99: f("service_p99_ms").unwrap_or(0.0),
            late_share: f("late_share").unwrap_or(0.0),
            completed: n("completed")?,
            non_2xx: n("non_2xx")?,
            errors: n("errors")?,
            unsent: n("unsent")?,
            answered_all: n("answered_all")?,
        })
    }
}

/// The release build of xtask, whose `pace` the bench runs: a debug build's client would add its
/// own microseconds to every latency. `build` makes it (with proxyguard's release build).
fn release_exe() -> PathBuf {
    crate::build::target_dir().join("release/xtask")
}

/// `cargo build --release` of proxyguard and of the paced client, one at a time: built together,
/// their shared dependencies' features would be unified, and proxyguard would differ from (and
/// rebuild against) the binary the rest of the bench builds on its own.
pub fn build_release() -> Result<()> {
    for package in ["proxyguard", "xtask"] {
        crate::cmd::run(crate::cmd::cargo().args(["build", "--release", "-p", package]))?;
    }
    Ok(())
}

/// Runs `xtask pace` (the release build) as its own process and reads its report.
pub fn spawn(args: &Args) -> Result<Paced> {
    let mut command = Command::new(release_exe());
    command
        .arg("pace")
        .args(["--url", &args.url])
        .args(["--rate", &format!("{:.3}", args.rate)])
        .args(["--connections", &args.connections.to_string()])
        .args(["--secs", &args.secs.to_string()])
        .args(["--warmup-secs", &args.warmup_secs.to_string()])
        .args(["--body", &args.body]);
    for header in &args.headers {
        command.args(["--header", header]);
    }
    if let Some(method) = &args.method {
        command.args(["--method", method]);
    }
    if let Some(ca) = &args.ca_file {
        command.arg("--ca-file").arg(ca);
    }
    let out = command.output().context("cannot run the paced client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the paced client failed against {}: {}{}",
            args.url,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let value: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("cannot read the paced client's report: {text}"))?;
    Paced::from_json(&value).with_context(|| format!("short paced report: {text}"))
}

/// The `pace` subcommand: runs the schedule and prints the report as JSON.
pub fn main(args: &Args) -> Result<()> {
    let report = run(args)?;
    println!("{}", serde_json::to_string(&report.to_json())?);
    Ok(())
}

/// What each connection's thread brings back.
#[derive(Default)]
struct Tally {
    /// Nanoseconds from the scheduled send to the whole answer read.
    latencies: Vec<u64>,
    /// Nanoseconds from the actual send to the whole answer read.
    service: Vec<u64>,
    /// Per counted request, for `PACE_DUMP`: connection, due (ns after the start), how late it
    /// was sent, its service time.
    trace: Vec<(u32, u64, u64, u64)>,
    completed: u64,
    non_2xx: u64,
    errors: u64,
    unsent: u64,
    answered_all: u64,
}

pub fn run(args: &Args) -> Result<Paced> {
    ensure!(
        args.rate > 0.0 && args.connections > 0,
        "the rate and connections must be positive"
    );
    let target = Arc::new(Target::new(args)?);
    let connections = args.connections as usize;
    // Every connection is open before the schedule starts: connecting is not what is measured.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(target.connect()?);
    }
    let barrier = Arc::new(Barrier::new(connections + 1));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let measured = Duration::from_secs_f64(args.secs);
    let period = connections as f64 / args.rate;
    let mut threads = Vec::with_capacity(connections);
    for (c, conn) in conns.into_iter().enumerate() {
        let (target, barrier, start_at) = (target.clone(), barrier.clone(), start_at.clone());
        let offset = c as f64 / args.rate;
        threads.push(std::thread::spawn(move || {
            // Sleeps end within a microsecond of their deadline, not the default 50 µs.
            let _ = nix::sys::prctl::set_timerslack(1_000);
            barrier.wait();
            let start = *start_at.get().expect("set before the barrier");
            connection(
                &target,
                c as u32,
                conn,
                start,
                offset,
                period,
                warmup,
                warmup + measured,
            )
        }));
    }
    // A little slack, so every thread is asleep on its first deadline when the schedule begins.
    start_at
        .set(Instant::now() + Duration::from_millis(50))
        .expect("set once");
    barrier.wait();
    let mut all = Tally::default();
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a paced connection thread panicked"))?;
        all.latencies.extend(tally.latencies);
        all.service.extend(tally.service);
        all.trace.extend(tally.trace);
        all.completed += tally.completed;
        all.non_2xx += tally.non_2xx;
        all.errors += tally.errors;
        all.unsent += tally.unsent;
        all.answered_all += tally.answered_all;
    }
    if let Some(path) = std::env::var_os("PACE_DUMP") {
        dump(Path::new(&path), &mut all.trace)?;
    }
    all.latencies.sort_unstable();
    all.service.sort_unstable();
    let ms = |q: f64| percentile(&all.latencies, q) as f64 / 1e6;
    let service_ms = |q: f64| percentile(&all.service, q) as f64 / 1e6;
    Ok(Paced {
        rate: args.rate,
        achieved_rps: all.completed as f64 / args.secs,
        p50: ms(0.50),
        p90: ms(0.90),
        p99: ms(0.99),
        p999: ms(0.999),
        max: all.latencies.last().copied().unwrap_or(0) as f64 / 1e6,
        service_p50: service_ms(0.50),
        service_p99: service_ms(0.99),
        late_share: if all.trace.is_empty() {
            0.0
        } else {
            all.trace.iter().filter(|t| t.2 >= 1_000_000).count() as f64 / all.trace.len() as f64
        },
        completed: all.completed,
        non_2xx: all.non_2xx,
        errors: all.errors,
        unsent: all.unsent,
        answered_all: all.answered_all,
    })
}

/// One connection's share of the schedule: due times `start + offset + k·period` before `end`.
#[allow(clippy::too_many_arguments)]
fn connection(
    target: &Target,
    index: u32,
    conn: Conn,
    start: Instant,
    offset: f64,
    period: f64,
    warmup: Duration,
    end: Duration,
) -> Tally {
    let mut tally = Tally::default();
    // None after an error: the next request opens a new connection.
    let mut conn = Some(conn);
    // A target far slower than the rate would keep this thread sending long after the run:
    // past this point the rest of the schedule is counted as unsent.
    let give_up = start + end + Duration::from_secs(5);
    for k in 0u64.. {
        let due_in = Duration::from_secs_f64(offset + k as f64 * period);
        if due_in >= end {
            break;
        }
        let due = start + due_in;
        let now = Instant::now();
        if now > give_up {
            let left = ((end.as_secs_f64() - offset) / period).ceil() as u64;
            tally.unsent += left.saturating_sub(k);
            break;
        }
        if due > now {
            std::thread::sleep(due - now);
        }
        let counted = due_in >= warmup;
        let sent = Instant::now();
        let answer = match conn.take() {
            Some(c) => Ok(c),
            None => target.connect(),
        }
        .and_then(|mut c| {
            let (status, keep) = c.exchange(&target.request)?;
            Ok((status, keep.then_some(c)))
        });
        match answer {
            Ok((status, kept)) => {
                conn = kept;
                tally.answered_all += 1;
                if counted {
                    let late = sent.saturating_duration_since(due).as_nanos() as u64;
                    let service = sent.elapsed().as_nanos() as u64;
                    tally.latencies.push(late + service);
                    tally.service.push(service);
                    tally
                        .trace
                        .push((index, due_in.as_nanos() as u64, late, service));
                    tally.completed += 1;
                    if !(200..300).contains(&status) {
                        tally.non_2xx += 1;
                    }
                }
            }
            Err(_) => {
                if counted {
                    tally.errors += 1;
                }
            }
        }
    }
    tally
}

/// Writes every counted request, in order of its due time, as `connection due_ns late_ns
/// service_ns`: where a slow round's time went (a connection behind its schedule, or the target).
fn dump(path: &Path, trace: &mut [(u32, u64, u64, u64)]) -> Result<()> {
    trace.sort_unstable_by_key(|t| t.1);
    let mut out = io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    for (c, due, late, service) in trace.iter() {
        writeln!(out, "{c} {due} {late} {service}")?;
    }
    out.flush()?;
    Ok(())
}

/// The nearest-rank percentile of sorted `values` (0 when empty).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Where and what to send.
struct Target {
    /// `host:port`, to connect to.
    authority: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The whole request, head and body.
    request: Vec<u8>,
}

impl Target {
    fn new(args: &Args) -> Result<Target> {
        let (https, rest) = if let Some(rest) = args.url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = args.url.strip_prefix("http://") {
            (false, rest)
        } else {
            bail!("{}: only http:// and https:// URLs", args.url)
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        ensure!(
            authority.contains(':'),
            "{}: name the port in the URL",
            args.url
        );
        let method = args
            .method
            .clone()
            .unwrap_or_else(|| if args.body.is_empty() { "GET" } else { "POST" }.to_owned());
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\n");
        for header in &args.headers {
            ensure!(
                header.contains(':'),
                "--header `{header}`: use `Name: value`"
            );
            head.push_str(header);
            head.push_str("\r\n");
        }
        let has_length = args
            .headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-length:"));
        if !has_length && (!args.body.is_empty() || method == "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", args.body.len()));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(args.body.as_bytes());
        let tls = if https {
            Some(tls_config(args.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Target {
            authority: authority.to_owned(),
            tls,
            request,
        })
    }

    fn connect(&self) -> Result<Conn> {
        let tcp = TcpStream::connect(&self.authority)
            .with_context(|| format!("cannot connect to {}", self.authority))?;
        tcp.set_nodelay(true)?;
        // A hung answer is an error, not a hung benchmark.
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let host = self.authority.rsplit_once(':').map_or("", |(h, _)| h);
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .with_context(|| format!("{host} is not a server name"))?;
                let session = rustls::ClientConnection::new(config.clone(), name)?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let ca = ca_file.context("an https URL needs --ca-file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A keep-alive connection and the bytes read from it but not yet used.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    /// Sends `request` and reads the whole answer: its status, and whether the connection may
    /// carry another request.
    fn exchange(&mut self, request: &[u8]) -> Result<(u16, bool)> {
        self.stream.write_all(request)?;
        self.stream.flush()?;
        read_response(&mut self.stream, &mut self.buf)
    }
}

/// Reads one HTTP/1.1 response from `stream` (bytes already read in `buf`), leaving in `buf`
/// whatever follows it. Content-Length and chunked bodies; without either, the body runs to the
/// close and the connection is not reused.
fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<(u16, bool)> {
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        ensure!(buf.len() < 64 * 1024, "response head over 64 KiB");
        fill(stream, buf)?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("no status line")?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_end = if chunked {
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(end) = find(&buf[at..], b"\r\n") {
                    break at + end;
                }
                fill(stream, buf)?;
            };
            let size_text = std::str::from_utf8(&buf[at..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("bad chunk size")?;
            at = line_end + 2;
            if size == 0 {
                // Trailers (usually none), up to the empty line.
                loop {
                    if let Some(end) = find(&buf[at..], b"\r\n") {
                        let empty = end == 0;
                        at += end + 2;
                        if empty {
                            break;
                        }
                    } else {
                        fill(stream, buf)?;
                    }
                }
                break at;
            }
            while buf.len() < at + size + 2 {
                fill(stream, buf)?;
            }
            at += size + 2;
        }
    } else if let Some(length) = length {
        while buf.len() < head_end + length {
            fill(stream, buf)?;
        }
        head_end + length
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        head_end
    } else {
        // Read to the close.
        loop {
            let before = buf.len();
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break before;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    buf.drain(..body_end);
    Ok((status, !close && (chunked || length.is_some())))
}

fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    ensure!(n > 0, "the connection closed mid-response");
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection: its status. The bench's probes of what each guard refuses.
pub fn once(url: &str, method: &str, headers: &[String], body: &str) -> Result<u16> {
    let args = Args {
        url: url.to_owned(),
        rate: 1.0,
        connections: 1,
        secs: 0.0,
        warmup_secs: 0.0,
        headers: headers.to_vec(),
        body: body.to_owned(),
        method: Some(method.to_owned()),
        ca_file: None,
    };
    let target = Target::new(&args)?;
    let mut conn = target.connect()?;
    Ok(conn.exchange(&target.request)?.0)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn reads_length_chunked_and_keeps_what_follows() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let mut stream: &[u8] = wire;
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut stream, &mut buf).unwrap(), (200, true));
        assert_eq!(read_response(&mut stream, &mut buf).unwrap(), (401, true));
        assert_eq!(read_response(&mut stream, &mut buf).unwrap(), (200, false));
        assert!(buf.is_empty());
        let mut cut: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok";
        assert!(read_response(&mut cut, &mut Vec::new()).is_err());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 0.5), 50);
        assert_eq!(percentile(&values, 0.99), 99);
        assert_eq!(percentile(&values, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    /// A real server on loopback: the schedule's count of requests arrives, each answered once.
    #[test]
    fn sends_the_schedule() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = Vec::new();
                    loop {
                        while find(&buf, b"\r\n\r\n").is_none() {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = find(&buf, b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let args = Args {
            url: format!("http://127.0.0.1:{port}/x"),
            rate: 400.0,
            connections: 4,
            secs: 0.5,
            warmup_secs: 0.25,
            headers: vec!["X-Test: 1".into()],
            body: String::new(),
            method: None,
            ca_file: None,
        };
        let paced = run(&args).unwrap();
        // 0.5 s at 400 per second, after the warm-up.
        assert_eq!(paced.completed, 200);
        assert_eq!((paced.non_2xx, paced.errors, paced.unsent), (0, 0, 0));
        assert!(paced.p50 <= paced.p99 && paced.p99 <= paced.max);
        // Each latency is its lateness plus its service time.
        assert!(paced.service_p50 <= paced.p50 && paced.service_p99 <= paced.p99);
        assert!((0.0..=1.0).contains(&paced.late_share));
        assert_eq!(
            once(&args.url, "GET", &[], "").unwrap(),
            200,
            "one request on its own"
        );
    }
}
