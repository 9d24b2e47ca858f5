//! Memory of a streamed answer with token accounting (issue 14): streaming a 1 MB SSE answer
//! through proxyguard with accounting on must not raise its RSS by more than 1 MB.
//!
//! The upstream is a small server here that answers every request with the same stream: OpenAI
//! chat chunks of text adding up to more than 1 MiB, a finish chunk, the usage-only chunk and
//! `[DONE]`, written in 16 KiB pieces with chunked encoding. The client asks for `stream: true`
//! without `include_usage`, so the guard adds it, reads every event and removes the usage chunk
//! again (the most it does with a stream). A fresh proxyguard with accounting on, and one with it
//! off, each serve a first stream (which sets up what every later request reuses; its rise is
//! reported apart), then a few streams one after another, then a few at once; RSS is sampled
//! every few milliseconds from /proc meanwhile. The figures are VmRSS before the streams, the
//! peak sampled (and VmHWM) over them, the same with accounting off (the rise that is not
//! accounting's), and the tokens the guard counted in its audit lines, which must be the stream's
//! own usage.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{free_port, peers, KEY};
use crate::{build, cmd};

/// The usage the stream reports.
const PROMPT_TOKENS: u64 = 17;
/// At least this much text goes out in the stream.
const STREAM_BYTES: usize = 1024 * 1024 + 1;

/// The stream: its bytes, the completion tokens its usage chunk reports (one per text chunk),
/// and the length of the events a client that did not ask for usage gets.
fn stream() -> (Vec<u8>, u64, usize) {
    let mut out = Vec::with_capacity(STREAM_BYTES + 4096);
    let mut chunks = 0u64;
    let text = "The quick brown fox jumps over the lazy dog. ";
    while out.len() < STREAM_BYTES {
        out.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
            )
            .as_bytes(),
        );
        chunks += 1;
    }
    out.extend_from_slice(b"data: {\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
    let usage_event = format!(
        "data: {{\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{chunks},\"total_tokens\":{}}}}}\n\n",
        PROMPT_TOKENS + chunks
    );
    let shown = out.len() + b"data: [DONE]\n\n".len();
    out.extend_from_slice(usage_event.as_bytes());
    out.extend_from_slice(b"data: [DONE]\n\n");
    (out, chunks, shown)
}

/// The upstream: every request on every connection gets `body` as `text/event-stream`.
fn upstream(listener: TcpListener, body: Arc<Vec<u8>>) {
    for conn in listener.incoming().flatten() {
        let body = body.clone();
        thread::spawn(move || {
            let _ = serve(conn, &body);
        });
    }
}

fn serve(conn: TcpStream, body: &[u8]) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut request = vec![0; length];
        reader.read_exact(&mut request)?;
        writer.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        for piece in body.chunks(16 * 1024) {
            write!(writer, "{:x}\r\n", piece.len())?;
            writer.write_all(piece)?;
            writer.write_all(b"\r\n")?;
            writer.flush()?;
        }
        writer.write_all(b"0\r\n\r\n")?;
        writer.flush()?;
    }
}

/// One streamed chat request through the guard on `port`; the bytes of the events received.
fn client(port: u16) -> Result<usize> {
    let body = json!({"model": "bench", "stream": true,
                      "messages": [{"role": "user", "content": "Write a long story."}]})
    .to_string();
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let head_end = memchr_crlf2(&response).context("no response head")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "the stream was refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    let body = &response[head_end + 4..];
    // The guard sends the stream chunked (it removed the usage chunk, so no length is known).
    let events = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(events.len())
}

fn memchr_crlf2(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk without its size line")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&body[..line_end])?
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("a short chunk")?);
        body = body.get(size + 2..).context("a chunk without its CRLF")?;
    }
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples `pid`'s VmRSS every 2 ms while `run` goes; returns its result and the largest sample.
fn sampled<T>(pid: u32, run: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let result = run();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    Ok((result?, peak.load(Ordering::Relaxed)))
}

/// The tokens the guard's audit lines counted for metered requests: (requests, in, out,
/// estimated ones), once `want` lines are there (the audit writer batches them).
fn counted(audit: &Path, want: usize) -> Result<(usize, u64, u64, usize)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(audit)?;
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["kind"] == "request" && line.get("tokens_out").is_some())
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            let sum = |field: &str| {
                lines
                    .iter()
                    .map(|l| l[field].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            let estimated = lines
                .iter()
                .filter(|l| l["tokens_estimated"] == true)
                .count();
            return Ok((lines.len(), sum("tokens_in"), sum("tokens_out"), estimated));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One fresh proxyguard (`extra` config) through `sequential` streams and then `concurrent` at
/// once: its RSS figures, and what it counted.
fn measure(
    binary: &Path,
    dir: &Path,
    upstream_port: u16,
    extra: &str,
    (sequential, concurrent): (usize, usize),
    shown: usize,
) -> Result<Value> {
    fs::create_dir_all(dir)?;
    let hash = hex::encode(Sha256::digest(KEY.as_bytes()));
    let (guard, port) = peers::proxyguard(binary, dir, upstream_port, &hash, extra)?;
    let pid = guard.pid();
    let check = |received: usize| -> Result<()> {
        if received != shown {
            bail!("the client got {received} bytes of events, not the {shown} it should see");
        }
        Ok(())
    };
    // The first request sets up what every later one reuses (the audit writer, the upstream
    // pool, the allocator's arenas): its rise is reported apart, and the streams are measured
    // from after it.
    let (fresh, _) = rss_kib(pid)?;
    let ((), peak_first) = sampled(pid, || check(client(port)?))?;
    let (before, _) = rss_kib(pid)?;
    let ((), peak_sequential) = sampled(pid, || {
        for _ in 0..sequential {
            check(client(port)?)?;
        }
        Ok(())
    })?;
    let (after_sequential, _) = rss_kib(pid)?;
    let ((), peak_concurrent) = sampled(pid, || {
        let clients: Vec<_> = (0..concurrent)
            .map(|_| thread::spawn(move || client(port)))
            .collect();
        for client in clients {
            check(
                client
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))??,
            )?;
        }
        Ok(())
    })?;
    let (after, hwm) = rss_kib(pid)?;
    let (requests, tokens_in, tokens_out, estimated) =
        counted(&dir.join("audit.jsonl"), 1 + sequential + concurrent)?;
    drop(guard);
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(json!({
        "rss_fresh_mib": mib(fresh),
        "rise_first_stream_mib": mib(peak_first.max(before).saturating_sub(fresh)),
        "rss_before_mib": mib(before),
        "peak_rss_sequential_mib": mib(peak_sequential.max(after_sequential)),
        "peak_rss_concurrent_mib": mib(peak_concurrent.max(after)),
        "rss_after_mib": mib(after),
        "vm_hwm_mib": mib(hwm),
        "rise_sequential_mib": mib(peak_sequential.max(after_sequential).saturating_sub(before)),
        "rise_concurrent_mib": mib(peak_concurrent.max(after).saturating_sub(before)),
        "metered_requests": requests,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "estimated_requests": estimated,
    }))
}

pub fn run(quick: bool) -> Result<Value> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    let binary = build::target_dir().join("release/proxyguard");
    let work = build::target_dir().join("bench/sse-rss");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;

    let (body, chunks, shown) = stream();
    let size = body.len();
    let upstream_port = free_port()?;
    let listener = TcpListener::bind(("127.0.0.1", upstream_port))?;
    let body = Arc::new(body);
    thread::spawn(move || upstream(listener, body));

    let runs = if quick { (3, 3) } else { (10, 8) };
    println!(
        "bench: a {:.2} MiB SSE answer ({chunks} text chunks), {} streams one after another, then {} at once",
        size as f64 / 1048576.0,
        runs.0,
        runs.1
    );
    let on = measure(&binary, &work.join("on"), upstream_port, "", runs, shown)?;
    let off = measure(
        &binary,
        &work.join("off"),
        upstream_port,
        "[proxy.usage]\nenabled = false",
        runs,
        size,
    )?;
    let streams = (1 + runs.0 + runs.1) as u64;
    let want = (streams * PROMPT_TOKENS, streams * chunks);
    let got = (
        on["tokens_in"].as_u64().unwrap_or(0),
        on["tokens_out"].as_u64().unwrap_or(0),
    );
    let figure = |run: &Value, name: &str| run[name].as_f64().unwrap_or(f64::NAN);
    let rise = figure(&on, "rise_sequential_mib");
    let share = rise - figure(&off, "rise_sequential_mib");
    println!(
        "SSE with accounting: RSS {:.1} MiB after a first stream (which raised it {:+.2} MiB from fresh; off {:+.2}), then {rise:+.2} MiB at peak over {} streams in turn (target <= 1; off {:+.2}), {:+.2} MiB with {} at once (off {:+.2}); accounting's share of the rise in turn {share:+.2} MiB",
        figure(&on, "rss_before_mib"),
        figure(&on, "rise_first_stream_mib"),
        figure(&off, "rise_first_stream_mib"),
        runs.0,
        figure(&off, "rise_sequential_mib"),
        figure(&on, "rise_concurrent_mib"),
        runs.1,
        figure(&off, "rise_concurrent_mib"),
    );
    println!(
        "SSE tokens counted: {} in, {} out over {streams} streams ({} estimated); the streams reported {} in, {} out",
        got.0,
        got.1,
        on["estimated_requests"],
        want.0,
        want.1
    );
    if got != want {
        println!("SSE tokens: MISMATCH (counted {got:?}, reported {want:?})");
    }
    Ok(json!({
        "stream_bytes": size,
        "text_chunks": chunks,
        "sequential_streams": runs.0,
        "concurrent_streams": runs.1,
        "accounting_on": on,
        "accounting_off": off,
        "reported_tokens": { "in": want.0, "out": want.1 },
        "counted_matches_reported": got == want,
        "rise_target_mib": 1.0,
        "rise_sequential_mib": rise,
        "accounting_share_of_rise_mib": share,
    }))
}
