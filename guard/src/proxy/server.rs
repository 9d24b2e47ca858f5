//! The front listener, one per worker (`crate::workers`: each worker thread runs this loop on its
//! own `SO_REUSEPORT` socket, and its connections never leave that thread): a global connection
//! cap shared by all workers, per-source caps on open connections and on
//! connections still waiting for their first head (`sources`), optional TLS, and hyper's
//! HTTP/1.1 server with a header-read deadline (slowloris) and a write-stall deadline (a client
//! that stops reading), behind the framing watch. Each connection gets a span with the client
//! address.
//!
//! A request head hyper itself refuses (a raw space in the path, a bad request line, a head over
//! the buffer) never reaches the pipeline; hyper answers 400/414/431 and ends the connection with
//! a parse error. That error is turned into an audit record here, so probing stays visible.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{watch, Semaphore},
};
use tracing::Instrument;

use super::{
    framing_watch::FramingWatch,
    metrics::{Metrics, ReasonLabels, WorkerLabels},
    pipeline::{self, Peer},
    record::Record,
    sources::{Admitted, Refusal},
    write_stall::{StallFlag, WriteStall},
    Shared,
};
use crate::workers::Acceptor;

/// Worker `worker`'s accept loop on `listener` (registered here, on the worker's own runtime).
/// Accepts until `stop` changes, then waits up to `drain` for its open connections to finish.
/// `slots` is the global connection cap, one semaphore for every worker: touched once per
/// connection, never per request.
pub async fn serve(
    listener: std::net::TcpListener,
    worker: usize,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let listener = match Acceptor::new(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, worker, "cannot register the front listener");
            return;
        }
    };
    let accepted_here = shared
        .metrics
        .worker_connections
        .get_or_create(&WorkerLabels {
            worker: worker.to_string(),
        })
        .clone();
    // Connections past the cap wait unserved in the kernel's accept queue (at most one per worker
    // accepted and waiting for a slot: `Acceptor::accept`) instead of costing memory here.
    let graceful = GracefulShutdown::new();
    loop {
        let (permit, stream, addr) = tokio::select! {
            accepted = listener.accept(&slots) => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Checked before anything is spent on the connection, so a source over its share costs
        // one accept and one close, and never delays the next source in the queue.
        let state = shared.state.load();
        let admitted = match shared.sources.admit(addr.ip(), state.source_caps) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                Metrics::count(&shared.metrics.connections_refused, refusal.reason());
                tracing::debug!(client.addr = %addr, reason = refusal.reason(), "connection refused");
                refuse(stream, refusal, state.tls.is_some());
                continue;
            }
        };
        drop(state);
        accepted_here.inc();
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let watcher = graceful.watcher();
        let span = tracing::info_span!("connection", client.addr = %addr);
        tokio::spawn(
            async move {
                let _permit = permit;
                shared.metrics.connections.inc();
                connection(stream, addr, shared.clone(), watcher, admitted).await;
                shared.metrics.connections.dec();
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing the remaining connections");
    }
}

/// Closes a refused connection without waiting for anything. On plaintext it first says why, as
/// nginx's `limit_conn` does (503, in OpenAI's error shape, so SDKs back off and retry); on TLS a
/// handshake would spend the very work the cap saves, so the close is bare.
fn refuse(stream: TcpStream, refusal: Refusal, tls: bool) {
    use std::io::{Read, Write};
    if tls {
        return;
    }
    // Off the runtime, as the plain non-blocking socket: its reads and writes are then the
    // kernel's answer at once. A freshly registered stream knows no readiness until its worker
    // next polls the reactor, and on a current-thread worker nothing else polls it meanwhile.
    let Ok(stream) = stream.into_std() else {
        return;
    };
    // Whatever already arrived is read off first: closing with unread bytes sends an RST, which
    // can make the client discard the answer before reading it.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&stream).read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let message = match refusal {
        Refusal::Connections => "too many open connections from this address",
        Refusal::PendingHeads => "too many connections from this address without a request",
    };
    let body = serde_json::json!({
        "error": { "message": message, "type": "api_error", "code": refusal.reason() }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A fresh socket's send buffer takes this whole; if not, the close alone has to do.
    let _ = (&stream).write(response.as_bytes());
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    watcher: Watcher,
    admitted: Admitted,
) {
    let state = shared.state.load_full();
    let header_read = state.header_read;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .keep_alive(true)
        // hyper's own caps sit above the configured ones, so the pipeline can name the header.
        .max_headers(state.header_limits.max_headers.saturating_mul(2).max(100))
        .max_buf_size(
            state
                .header_limits
                .max_total_bytes
                .saturating_mul(2)
                .max(16 * 1024),
        );
    // Under TLS, so the clock sees the socket itself refuse bytes.
    let stalls = shared
        .metrics
        .connections_closed
        .get_or_create(&ReasonLabels {
            reason: "client_stalled".into(),
        })
        .clone();
    let (stream, stall) = WriteStall::new(stream, state.write_stall, stalls);
    let admitted = Arc::new(admitted);
    let served = match &state.tls {
        Some(acceptor) => {
            // The handshake gets the same deadline as a request head.
            let handshake = tokio::time::timeout(header_read, acceptor.accept(stream)).await;
            let Ok(Ok(tls)) = handshake else {
                tracing::debug!("TLS handshake failed or timed out");
                return;
            };
            let peer = Peer { addr, tls: true };
            http(&builder, tls, &shared, peer, &admitted, &stall, watcher).await
        }
        None => {
            let peer = Peer { addr, tls: false };
            http(&builder, stream, &shared, peer, &admitted, &stall, watcher).await
        }
    };
    if let Err(err) = served {
        ended_with(&shared, addr, &err, stall.stalled());
    }
}

/// Serves HTTP/1.1 on `io` until the connection ends.
async fn http<I>(
    builder: &http1::Builder,
    io: I,
    shared: &Arc<Shared>,
    peer: Peer,
    admitted: &Arc<Admitted>,
    stall: &Arc<StallFlag>,
    watcher: Watcher,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, framing) = FramingWatch::new(io);
    let (shared, admitted, stall) = (shared.clone(), admitted.clone(), stall.clone());
    let service = service_fn(move |request| {
        // hyper calls the service once the head is complete.
        admitted.head_arrived();
        let handled = pipeline::handle(shared.clone(), peer, framing.take(), request);
        let stall = stall.clone();
        async move {
            let Ok(mut response) = handled.await;
            response.body_mut().watch_stall(stall);
            Ok::<_, Infallible>(response)
        }
    });
    watcher
        .watch(builder.serve_connection(TokioIo::new(io), service))
        .await
}

/// Accounts for a connection hyper ended with `err`. A stalled reader was counted when the
/// limit fired, and its request's record says `client_stalled`; a head hyper refused gets its
/// own audit record here. Nothing of the request's bytes is logged, only the kind of failure.
fn ended_with(shared: &Shared, addr: SocketAddr, err: &hyper::Error, stalled: bool) {
    let metrics = &shared.metrics;
    if stalled {
        tracing::debug!("client stopped reading; connection cut");
        return;
    }
    // The statuses hyper answers these with (`on_error` in hyper's h1 server role). hyper has
    // no public kind for its URI length limit, only this message.
    let refused = if err.is_parse_too_large() {
        let status = if err.to_string() == "URI too long" {
            414
        } else {
            431
        };
        Some((status, "head_too_large"))
    } else if err.is_parse() && !err.is_parse_version_h2() {
        Some((400, "malformed_request"))
    } else {
        None
    };
    match refused {
        Some((status, reason)) => {
            Metrics::count(&metrics.connections_closed, reason);
            tracing::debug!(reason, status, "request head refused by the HTTP parser");
            Record::unparsed(metrics.clone(), addr.ip(), status, reason).finish(0);
        }
        None => tracing::debug!(error = %err, "connection ended with an error"),
    }
}
