//! The gateway's connections to its providers: per worker thread and per provider, a pool of
//! hyper HTTP/1.1 senders over verified TLS (`connector`), lock-free in a thread-local, as the
//! proxy's front keeps its upstream connections (`proxy/forward.rs`).
//!
//! Why not hyper-util's pooled client, which the gateway used before: on a request that finds
//! every pooled connection busy, its checkout starts a new connection (a TLS handshake, on the
//! worker that every other request of that worker waits for) and keeps it even when a busy one
//! frees first; and every request crosses its pool's lock and a dispatch task. Here a checkout
//! takes a ready connection or, with none, opens one for that request, and a connection whose
//! response is still streaming stays in the pool until its body has been read.

use std::{
    cell::RefCell,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use http::{Request, Response, Uri};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use tower_service::Service;

use super::{connector::ConnectError, gateway::Provider};

type Sender = SendRequest<Incoming>;

/// An idle connection older than this is closed instead of reused: below the 60–75 s after
/// which common servers (nginx's default `keepalive_timeout` is 75 s) close idle keep-alives.
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// Connections one thread keeps per provider; past this a finished one closes. Only the idle
/// ones are bounded here: each in use serves a caller's request, which the gateway's connection
/// cap bounds.
const MAX_POOLED: usize = 512;

/// Why a request did not reach the provider, or broke off. Never holds what was sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the HTTP/1.1 handshake on a new connection failed: {0}")]
    Handshake(hyper::Error),
    #[error("the exchange broke off: {0}")]
    Exchange(hyper::Error),
}

/// One provider's connections on this thread, with when each was last handed out.
struct Pool {
    /// The provider as a reload made it: a replaced one's pool goes once no request holds it.
    owner: Weak<Provider>,
    senders: Vec<(Sender, Instant)>,
}

thread_local! {
    static POOLS: RefCell<Vec<Pool>> = const { RefCell::new(Vec::new()) };
}

/// A ready connection to `provider` from this thread's pool; closed and stale ones, and pools of
/// providers a reload replaced, are dropped on the way.
fn checkout(provider: &Arc<Provider>) -> Option<Sender> {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        pools.retain(|pool| pool.owner.strong_count() > 0);
        let pool = pools
            .iter_mut()
            .find(|pool| std::ptr::eq(pool.owner.as_ptr(), Arc::as_ptr(provider)))?;
        let now = Instant::now();
        pool.senders.retain(|(sender, since)| {
            !sender.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
        });
        // The most recently used first: the fewest connections stay warm.
        let at = pool
            .senders
            .iter()
            .rposition(|(sender, _)| sender.is_ready())?;
        Some(pool.senders.remove(at).0)
    })
}

/// Puts `sender` (whose response may still be streaming) back, for a later request once it is
/// ready again.
fn checkin(provider: &Arc<Provider>, sender: Sender) {
    POOLS.with(|pools| {
        let mut pools = pools.borrow_mut();
        let at = match pools
            .iter()
            .position(|pool| std::ptr::eq(pool.owner.as_ptr(), Arc::as_ptr(provider)))
        {
            Some(at) => at,
            None => {
                pools.push(Pool {
                    owner: Arc::downgrade(provider),
                    senders: Vec::new(),
                });
                pools.len() - 1
            }
        };
        let senders = &mut pools[at].senders;
        if senders.len() < MAX_POOLED {
            senders.push((sender, Instant::now()));
        }
    });
}

/// A new verified TLS connection to `uri`'s provider, its task spawned on this thread's runtime.
async fn connect(provider: &Provider, uri: Uri) -> Result<Sender, SendError> {
    let io = provider.connector.clone().call(uri).await?;
    let (sender, connection) = http1::handshake(io).await.map_err(SendError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "provider connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `request` (absolute URI) to `provider`, origin-form on the wire: on a pooled connection
/// if one is ready, and once more on a new one if the pooled one turned out closed before the
/// request went out.
pub async fn send(
    provider: &Arc<Provider>,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, SendError> {
    let uri = std::mem::take(request.uri_mut());
    *request.uri_mut() = uri
        .path_and_query()
        .cloned()
        .map(Uri::from)
        .unwrap_or_else(|| Uri::from_static("/"));
    if let Some(mut sender) = checkout(provider) {
        match sender.try_send_request(request).await {
            Ok(response) => {
                checkin(provider, sender);
                return Ok(response);
            }
            Err(mut failed) => match failed.take_message() {
                // Not sent: the provider had closed it. A fresh connection gets it.
                Some(unsent) => request = unsent,
                None => return Err(SendError::Exchange(failed.into_error())),
            },
        }
    }
    let mut sender = connect(provider, uri).await?;
    let response = sender
        .send_request(request)
        .await
        .map_err(SendError::Exchange)?;
    checkin(provider, sender);
    Ok(response)
}
