//! The front listener: a global connection cap, optional TLS, and hyper's HTTP/1.1 server with a
//! header-read deadline (slowloris), behind the framing watch. Each connection gets a span with
//! the client address.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tracing::Instrument;

use super::{
    framing_watch::FramingWatch,
    pipeline::{self, Peer},
    Shared,
};

/// Accepts until `stop` changes, then waits up to `drain` for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    // Connections past the cap wait in the kernel's accept queue instead of costing memory here.
    let slots = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
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
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let watcher = graceful.watcher();
        let span = tracing::info_span!("connection", client.addr = %addr);
        tokio::spawn(
            async move {
                let _permit = permit;
                shared.metrics.connections.inc();
                connection(stream, addr, shared.clone(), watcher).await;
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

async fn connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    watcher: hyper_util::server::graceful::Watcher,
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
    match &state.tls {
        Some(acceptor) => {
            // The handshake gets the same deadline as a request head.
            let handshake = tokio::time::timeout(header_read, acceptor.accept(stream)).await;
            let Ok(Ok(tls)) = handshake else {
                tracing::debug!("TLS handshake failed or timed out");
                return;
            };
            let peer = Peer { addr, tls: true };
            let (io, framing) = FramingWatch::new(tls);
            let service = service_fn(move |request| {
                pipeline::handle(shared.clone(), peer, framing.take(), request)
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
        None => {
            let peer = Peer { addr, tls: false };
            let (io, framing) = FramingWatch::new(stream);
            let service = service_fn(move |request| {
                pipeline::handle(shared.clone(), peer, framing.take(), request)
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        }
    }
}
