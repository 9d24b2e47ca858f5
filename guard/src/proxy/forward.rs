//! Forwarding to the upstream: the request rewritten for it, sent on a pooled keep-alive client,
//! and its response passed back as a stream (never buffered), with failures mapped to 502/504.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{
    header, request::Parts, uri::Scheme, HeaderName, HeaderValue, Request, Response, StatusCode,
    Uri,
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};

use super::{
    hop,
    layers::{self, auth, upstream_controls},
    reject::Reject,
    response_headers::ResponseAllow,
    state::State,
    upstream_slots::{Slot, UpstreamSlots},
    upstream_surface,
};

pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
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
    if let Ok(ip) = HeaderValue::from_str(&client.ip().to_string()) {
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
    client: &UpstreamClient,
    slots: &UpstreamSlots,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    allow: &ResponseAllow,
) -> Result<(Response<Incoming>, Slot), Reject> {
    let attempt = async {
        let slot = slots.acquire().await;
        let response = client.request(request).await;
        (slot, response)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(Reject::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the upstream did not answer within {}s", timeout.as_secs()),
        )),
        Ok((_, Err(err))) => {
            tracing::warn!(error = %err, "upstream request failed");
            Err(Reject::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                "the upstream could not be reached",
            ))
        }
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
