//! The provider gateway: a second, loopback-only listener of the daemon. `http://LISTEN/NAME/REST`
//! goes to provider NAME's `base_url` + `/REST` over verified TLS, with every credential header
//! the caller sent removed and the real key added as the route's `auth` says. Bodies stream
//! both ways (SSE included); nothing is buffered. Failures are 502/504 in OpenAI's error shape.
//!
//! Thread-per-core like the proxy's front (`crate::workers`): one `SO_REUSEPORT` listener per
//! worker, and each worker keeps its own pool of connections per provider (`pool`), so a request
//! is served, forwarded and answered on the thread that accepted it, and the tail does not queue
//! behind one thread.
//!
//! Logged per request: the provider's name, method, path, status and time. Never a header
//! value, a key or a body.

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{
    header, uri::PathAndQuery, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{runtime::Handle, sync::watch, task::JoinHandle};

use super::{
    connector::{ConnectError, TlsConnector},
    pool::{self, SendError},
};
use crate::proxy::{hop, layers::auth, Reject};

type Body = Either<Incoming, Full<Bytes>>;

/// One provider, compiled.
pub struct Provider {
    pub name: String,
    pub authority: http::uri::Authority,
    /// `base_url`'s path without its trailing `/` ("" for none).
    pub base_path: String,
    pub auth_header: HeaderName,
    /// The whole header value (`Bearer KEY` or `KEY`), marked sensitive. `None` until read.
    pub key: Option<HeaderValue>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub paths: Vec<String>,
    pub methods: Vec<Method>,
    /// How each worker's pool (`pool`) connects to it.
    pub connector: TlsConnector,
}

/// The providers by name, as one reload makes them.
#[derive(Default)]
pub struct Table {
    pub providers: HashMap<String, Arc<Provider>>,
    pub response_timeout: Duration,
}

/// The running listener: one accept loop per worker.
struct Listening {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The gateway: its table (swapped on reload) and, once a provider is configured, its listener.
pub struct Gateway {
    table: Arc<ArcSwap<Table>>,
    listening: Option<Listening>,
    /// The workers that serve it (`crate::workers`).
    workers: Vec<Handle>,
}

impl Gateway {
    /// A gateway served by `workers`, listening once a provider is configured.
    pub fn new(workers: Vec<Handle>) -> Gateway {
        Gateway {
            table: Arc::default(),
            listening: None,
            workers,
        }
    }

    /// The address it listens on, once it does.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listening.as_ref().map(|l| l.addr)
    }

    /// Binds the listener if `table` has providers and none is bound yet (at start, or when a
    /// reload adds the first provider). A changed `listen` applies at the next restart.
    pub fn bind_if_needed(
        &mut self,
        listen: SocketAddr,
        max_connections: usize,
        has_providers: bool,
    ) -> Result<(), String> {
        if let Some(listening) = &self.listening {
            if listening.addr != listen && listen.port() != 0 {
                tracing::warn!(listen = %listen, "providers.listen changed; it applies at the next restart");
            }
            return Ok(());
        }
        if !has_providers {
            return Ok(());
        }
        let listeners = crate::workers::bind(listen, self.workers.len())
            .map_err(|err| format!("providers.listen: cannot listen on {listen}: {err}"))?;
        let addr = listeners[0]
            .local_addr()
            .map_err(|err| format!("providers.listen: {err}"))?;
        let (stop, stopped) = watch::channel(false);
        // One cap for the whole gateway, across its workers.
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
        let tasks = listeners
            .into_iter()
            .zip(&self.workers)
            .map(|(listener, worker)| {
                worker.spawn(serve(
                    listener,
                    self.table.clone(),
                    slots.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        self.listening = Some(Listening { addr, stop, tasks });
        Ok(())
    }

    /// Puts a new table in force; requests in flight finish on the old one.
    pub fn commit(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// Stops accepting and waits (briefly) for open requests.
    pub async fn shutdown(self) {
        if let Some(listening) = self.listening {
            let _ = listening.stop.send(true);
            for task in listening.tasks {
                let _ = task.await;
            }
        }
    }
}

/// One worker's accept loop; `listener` is registered here, on that worker's runtime.
async fn serve(
    listener: std::net::TcpListener,
    table: Arc<ArcSwap<Table>>,
    slots: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match crate::workers::Acceptor::new(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(error = %err, "cannot register the gateway listener");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    loop {
        let (permit, stream) = tokio::select! {
            accepted = listener.accept(&slots) => match accepted {
                Ok((permit, stream, _)) => (permit, stream),
                Err(err) => {
                    tracing::warn!(error = %err, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let service = service_fn(move |request| {
            let table = table.load_full();
            async move { Ok::<_, Infallible>(handle(&table, request).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .keep_alive(true);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "gateway connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway drain timed out; closing the remaining connections");
    }
}

async fn handle(table: &Table, request: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let (provider, outcome) = match route(table, &request) {
        Err(reject) => (None, Err(reject)),
        Ok((provider, uri)) => {
            let outcome = forward(table, &provider, uri, request).await;
            (Some(provider), outcome)
        }
    };
    let (response, reason) = match outcome {
        Ok(response) => (response.map(Either::Left), None),
        Err(reject) => (reject.to_response().map(Either::Right), Some(reject.reason)),
    };
    crate::audit::emit_lines(
        "provider_request",
        std::iter::once(ProviderLine {
            provider: provider.as_ref().map(|p| p.name.as_str()),
            method: method.as_str(),
            status: response.status().as_u16(),
            reason,
            upstream_ms: started.elapsed().as_millis() as u64,
        }),
    );
    response
}

/// One request's audit line, written straight into its buffer (no JSON map per request): the
/// provider's name, method, status, the refusal's reason and the time. Never a header value, a
/// key or a body.
struct ProviderLine<'a> {
    provider: Option<&'a str>,
    method: &'a str,
    status: u16,
    reason: Option<&'static str>,
    upstream_ms: u64,
}

impl crate::audit::Line for ProviderLine<'_> {
    fn visit<S: crate::audit::Sink>(&self, ts: &str, kind: &str, sink: &mut S) {
        // In byte order of the keys, as the JSON map wrote them.
        sink.str("kind", kind);
        sink.str("method", self.method);
        match self.provider {
            Some(name) => sink.str("provider", name),
            None => sink.null("provider"),
        }
        match self.reason {
            Some(reason) => sink.str("reason", reason),
            None => sink.null("reason"),
        }
        sink.u64("status", u64::from(self.status));
        sink.str("ts", ts);
        sink.u64("upstream_ms", self.upstream_ms);
    }

    fn priority(&self) -> u8 {
        crate::telemetry::priority::INFO
    }

    /// `glance` keeps only refusals of the front and kernel events, not gateway lines.
    fn noteworthy(&self) -> bool {
        false
    }
}

/// The provider a request names and the URI it goes to, or 404 (400 for a path that tries to
/// climb out of the allowed prefixes).
fn route(table: &Table, request: &Request<Incoming>) -> Result<(Arc<Provider>, Uri), Reject> {
    let not_found = |message: &str| {
        Reject::new(
            StatusCode::NOT_FOUND,
            "unknown_provider_route",
            message.to_owned(),
        )
    };
    let path = request.uri().path();
    let rest_of = path.strip_prefix('/').unwrap_or(path);
    let (name, rest) = match rest_of.find('/') {
        Some(i) => (&rest_of[..i], &rest_of[i..]),
        None => (rest_of, ""),
    };
    let Some(provider) = table.providers.get(name) else {
        return Err(not_found(
            "no provider by that name; `proxyguard providers list` shows them",
        ));
    };
    let lower = rest.to_ascii_lowercase();
    if rest
        .split('/')
        .any(|segment| segment == "." || segment == "..")
        || lower.contains("%2e")
        || lower.contains("%2f")
        || lower.contains("%5c")
        || rest.contains('\\')
    {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "dot segments and encoded separators are not forwarded",
        ));
    }
    if !provider.methods.contains(request.method()) {
        return Err(not_found("this method is not allowed for this provider"));
    }
    let allowed = provider.paths.is_empty()
        || provider.paths.iter().any(|prefix| {
            rest == prefix
                || (rest.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || rest[prefix.len()..].starts_with('/')))
        });
    if !allowed {
        return Err(not_found("this path is not allowed for this provider"));
    }
    let mut target = format!("{}{}", provider.base_path, rest);
    if target.is_empty() {
        target.push('/');
    }
    if let Some(query) = request.uri().query() {
        target.push('?');
        target.push_str(query);
    }
    let path_and_query: PathAndQuery = target.parse().map_err(|_| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the path cannot be forwarded",
        )
    })?;
    let uri = Uri::builder()
        .scheme("https")
        .authority(provider.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| {
            Reject::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "the path cannot be forwarded",
            )
        })?;
    Ok((provider.clone(), uri))
}

/// The request as the provider gets it: no hop-by-hop or credential headers from the caller, the
/// provider's Host, its fixed headers and its real key.
fn rewrite(
    provider: &Provider,
    uri: Uri,
    request: Request<Incoming>,
) -> Result<Request<Incoming>, Reject> {
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    let headers = &mut parts.headers;
    hop::strip(headers);
    auth::strip(headers, None);
    headers.remove(&provider.auth_header);
    headers.remove(header::COOKIE);
    // The caller's body is streamed on as it comes; a `100-continue` handshake is the two
    // local hops' business, not the provider's.
    headers.remove(header::EXPECT);
    for (name, value) in &provider.headers {
        headers.insert(name.clone(), value.clone());
    }
    let host = HeaderValue::from_str(provider.authority.as_str()).map_err(|_| {
        Reject::new(
            StatusCode::BAD_GATEWAY,
            "provider_config",
            "the provider's host is not a header value",
        )
    })?;
    headers.insert(header::HOST, host);
    let Some(key) = &provider.key else {
        return Err(Reject::new(
            StatusCode::BAD_GATEWAY,
            "provider_key_missing",
            "the gateway has no key for this provider (its credential was not readable at the last reload)",
        ));
    };
    headers.insert(provider.auth_header.clone(), key.clone());
    Ok(Request::from_parts(parts, body))
}

async fn forward(
    table: &Table,
    provider: &Arc<Provider>,
    uri: Uri,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, Reject> {
    let request = rewrite(provider, uri, request)?;
    let timeout = table.response_timeout;
    match tokio::time::timeout(timeout, pool::send(provider, request)).await {
        Err(_) => Err(Reject::new(
            StatusCode::GATEWAY_TIMEOUT,
            "provider_timeout",
            format!("the provider did not answer within {}s", timeout.as_secs()),
        )),
        Ok(Err(err)) => Err(failure(&provider.name, &err)),
        Ok(Ok(mut response)) => {
            hop::strip(response.headers_mut());
            Ok(response)
        }
    }
}

/// A failed send as the caller sees it: what broke, never what was sent.
fn failure(name: &str, err: &SendError) -> Reject {
    match err {
        SendError::Connect(connect) => {
            tracing::warn!(provider = name, error = %connect, "provider connection failed");
            match connect {
                ConnectError::Tls { reason, .. } => Reject::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_certificate",
                    format!("the gateway refused provider {name}'s TLS: {reason}; nothing was sent (set ca_file for a private CA)"),
                ),
                ConnectError::Timeout { .. } => Reject::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "provider_connect_timeout",
                    format!("no connection to provider {name}: {connect}"),
                ),
                _ => Reject::new(
                    StatusCode::BAD_GATEWAY,
                    "provider_unreachable",
                    format!("cannot reach provider {name}: {connect}"),
                ),
            }
        }
        SendError::Handshake(_) | SendError::Exchange(_) => {
            tracing::warn!(provider = name, error = %err, "provider request failed");
            Reject::new(
                StatusCode::BAD_GATEWAY,
                "provider_failed",
                format!("provider {name} broke off the exchange"),
            )
        }
    }
}
