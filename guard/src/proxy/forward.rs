//! Forwarding to the upstream: the request rewritten for it, sent on a keep-alive connection of
//! this thread's own pool, and its response passed back as a stream (never buffered), with
//! failures mapped to 502/504.
//!
//! The pool is per thread and lock-free (a `RefCell` in a thread-local): each worker
//! (`crate::workers`) is a current-thread runtime, so a request, its upstream connection and
//! that connection's task all run on the thread that accepted the client, and no request wakes
//! another thread (issue 16; docs/design-request-path.md).

use std::{
    cell::RefCell,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::uri::Authority;
use http::{
    header, request::Parts, uri::Scheme, HeaderName, HeaderValue, Request, Response, StatusCode,
    Uri,
};
use http_body_util::Full;
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{
    hop,
    layers::{self, auth, upstream_controls},
    reject::Reject,
    response_headers::ResponseAllow,
    state::State,
    upstream_slots::{Slot, UpstreamSlots},
    upstream_surface,
};

type Sender = SendRequest<Full<Bytes>>;

/// How long a new upstream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections one thread keeps; past this a finished one closes. The upstream slots cap the
/// connections in use; this only bounds the idle ones.
const MAX_POOLED: usize = 512;

/// One upstream connection of this thread: its authority (a reload may change the upstream),
/// its sender and when it was last handed out.
struct Pooled {
    authority: Authority,
    sender: Sender,
    since: Instant,
}

thread_local! {
    /// This thread's upstream connections: in use ones too (they become ready again when their
    /// response body has been read), so a checkout only takes a ready one.
    static POOL: RefCell<Vec<Pooled>> = const { RefCell::new(Vec::new()) };
}

/// A ready connection to `authority` from this thread's pool; closed and stale ones are dropped
/// on the way.
fn checkout(authority: &Authority) -> Option<Sender> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let now = Instant::now();
        pool.retain(|p| !p.sender.is_closed() && now.duration_since(p.since) < IDLE_TIMEOUT);
        let at = pool
            .iter()
            .rposition(|p| p.authority == *authority && p.sender.is_ready())?;
        Some(pool.swap_remove(at).sender)
    })
}

/// Puts `sender` (whose response is still streaming) back, for the next request once it is done.
fn checkin(authority: Authority, sender: Sender) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < MAX_POOLED {
            pool.push(Pooled {
                authority,
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// A new connection to `authority`, its task spawned on this thread's runtime.
async fn connect(authority: &Authority) -> Result<Sender, ()> {
    let target = match authority.port() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "upstream connection failed");
            return Err(());
        }
        Err(_) => {
            tracing::warn!("upstream connection timed out");
            return Err(());
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| tracing::warn!(error = %err, "upstream handshake failed"))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `request` (origin-form) to `authority`: on a pooled connection if one is ready, and
/// once more on a new one if the pooled one turned out closed before the request went out.
async fn exchange(
    authority: Authority,
    mut request: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ()> {
    if let Some(mut sender) = checkout(&authority) {
        match sender.try_send_request(request).await {
            Ok(response) => {
                checkin(authority, sender);
                return Ok(response);
            }
            Err(mut failed) => match failed.take_message() {
                // Not sent: the upstream had closed it. A fresh connection gets it.
                Some(unsent) => request = unsent,
                None => {
                    tracing::warn!(error = %failed.error(), "upstream request failed");
                    return Err(());
                }
            },
        }
    }
    let mut sender = connect(&authority).await?;
    match sender.send_request(request).await {
        Ok(response) => {
            checkin(authority, sender);
            Ok(response)
        }
        Err(err) => {
            tracing::warn!(error = %err, "upstream request failed");
            Err(())
        }
    }
}

/// The request as the upstream gets it: its URI, no hop-by-hop, credential, LiteLLM control or
/// client-address headers, our forwarding headers, the upstream's own key, and the complete, validated body.
pub fn rewrite(
    mut parts: Parts,
    body: Bytes,
    state: &State,
    key_allow: &[HeaderName],
    client: SocketAddr,
    tls: bool,
) -> Request<Full<Bytes>> {
    let path = parts.uri.path_and_query().cloned();
    let mut uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(state.upstream.clone());
    if let Some(path) = path {
        uri = uri.path_and_query(path);
    }
    // Built from parts already validated (authority from config, path from the parsed request).
    parts.uri = uri.build().unwrap_or_default();
    let headers = &mut parts.headers;
    hop::strip(headers);
    auth::strip(headers, state.custom_key_header.as_ref());
    upstream_controls::strip(headers, &state.upstream_allow, key_allow);
    strip_client_ip_and_disguised_hops(headers);
    // hyper frames the buffered body with its own Content-Length; the body is already complete,
    // so a client's `Expect: 100-continue` means nothing to the upstream.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    // An authority and an IP address are always valid header values.
    if let Ok(host) = HeaderValue::from_str(state.upstream.as_str()) {
        headers.insert(header::HOST, host);
    }
    if let Some(ip) = address_value(client.ip()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), ip);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(auth) = &state.upstream_auth {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    parts.version = http::Version::HTTP_11;
    Request::from_parts(parts, Full::new(body))
}

/// `ip` as a header value, as its `Display` writes it. An IPv4 address is spelled by hand: the
/// formatter's padding support made `to_string` about 2 % of a request's instructions.
fn address_value(ip: IpAddr) -> Option<HeaderValue> {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    HeaderValue::from_bytes(&text[..len]).ok()
}

/// Every header that claims the client's address (`upstream_surface::CLIENT_IP_HEADERS`, all of
/// `x-forwarded-*`), and `X_Forwarded_For`, `Transfer_Encoding` and the like: servers that take
/// `_` for `-` would read them as the forwarding or hop-by-hop headers just removed. Only the
/// guard's own `x-forwarded-for` and `x-forwarded-proto` go up.
fn strip_client_ip_and_disguised_hops(headers: &mut http::HeaderMap) {
    let mut found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            if name.contains('_') {
                upstream_surface::is_client_ip_header(&name.replace('_', "-"))
            } else {
                upstream_surface::is_client_ip_header(name)
            }
        })
        .cloned()
        .collect();
    found.extend(layers::disguised_as(
        headers,
        hop::HOP_BY_HOP.iter().copied(),
    ));
    for name in found {
        headers.remove(name);
    }
}

/// Sends `request`; 504 when no response head arrives in time, 502 when the upstream cannot be
/// reached or breaks the protocol. The response keeps only the headers `allow` lets back.
/// Waiting for an upstream slot counts against the same timeout.
pub async fn send(
    slots: &UpstreamSlots,
    mut request: Request<Full<Bytes>>,
    timeout: Duration,
    allow: &ResponseAllow,
) -> Result<(Response<Incoming>, Slot), Reject> {
    // `rewrite` gave an absolute URI; on the wire to the upstream it is origin-form.
    let authority = request.uri().authority().cloned();
    *request.uri_mut() = request
        .uri()
        .path_and_query()
        .cloned()
        .map(Uri::from)
        .unwrap_or_else(|| Uri::from_static("/"));
    let attempt = async {
        let slot = slots.acquire().await;
        let response = match authority {
            Some(authority) => exchange(authority, request).await,
            None => Err(()),
        };
        (slot, response)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(Reject::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the upstream did not answer within {}s", timeout.as_secs()),
        )),
        Ok((_, Err(()))) => Err(Reject::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "the upstream could not be reached",
        )),
        Ok((Err(_closed), _)) => Err(Reject::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "the upstream could not be reached",
        )),
        Ok((Ok(slot), Ok(mut response))) => {
            hop::strip(response.headers_mut());
            allow.filter(response.headers_mut());
            Ok((response, slot))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_value(ip).unwrap(), ip.to_string().as_str());
        }
    }

    #[test]
    fn rewrite_table() {
        let state = State::for_tests(&ProxyConfig::default());
        let request = Request::post("http://guard.example/v1/chat/completions?x=1")
            .header("host", "guard.example")
            .header("authorization", "Bearer client-key")
            .header("x-api-key", "client-key")
            .header("x-litellm-api-key", "sk-forged")
            .header("x-goog-api-key", "sk-forged")
            .header("ocp-apim-subscription-key", "sk-forged")
            .header("api-key", "sk-forged")
            .header("x_litellm_api_key", "sk-forged")
            .header("x-forwarded-for", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .header("connection", "close, x-hop")
            .header("x-hop", "1")
            .header("expect", "100-continue")
            .header("content-length", "2")
            .header("x-kept", "1")
            .header("x_forwarded_for", "6.6.6.6")
            .header("X_Real_IP", "6.6.6.6")
            .header("keep_alive", "1")
            .header("x_kept_too", "1")
            .header("true-client-ip", "6.6.6.6")
            .header("cf-connecting-ip", "6.6.6.6")
            .header("x-forwarded-port", "1")
            .header("x_client_ip", "6.6.6.6")
            .header("x-litellm-timeout", "1")
            .header("x-litellm-spend-logs-metadata", "{}")
            .header("openai-organization", "org-x")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let client: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        let out = rewrite(parts, Bytes::from_static(b"{}"), &state, &[], client, true);
        assert_eq!(out.uri(), "http://127.0.0.1:4000/v1/chat/completions?x=1");
        let headers = out.headers();
        let expected = [
            ("host", Some("127.0.0.1:4000")),
            ("x-forwarded-for", Some("10.1.2.3")),
            ("x-forwarded-proto", Some("https")),
            ("x-kept", Some("1")),
            // No upstream key file in the default config: no Authorization at all.
            ("authorization", None),
            ("x-api-key", None),
            ("x-litellm-api-key", None),
            ("x-goog-api-key", None),
            ("ocp-apim-subscription-key", None),
            ("api-key", None),
            ("x_litellm_api_key", None),
            ("forwarded", None),
            ("connection", None),
            ("x-hop", None),
            ("expect", None),
            ("content-length", None),
            ("x_forwarded_for", None),
            ("x_real_ip", None),
            ("keep_alive", None),
            ("x_kept_too", Some("1")),
            ("true-client-ip", None),
            ("cf-connecting-ip", None),
            ("x-forwarded-port", None),
            ("x_client_ip", None),
            ("x-litellm-timeout", None),
            ("x-litellm-spend-logs-metadata", None),
            ("openai-organization", None),
        ];
        for (name, value) in expected {
            assert_eq!(
                headers.get(name).map(|v| v.to_str().unwrap()),
                value,
                "{name}"
            );
        }
    }
}
