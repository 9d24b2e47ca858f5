//! The request pipeline: every check, in order, in one function.
//!
//! Why this order:
//! 1. Per-IP rate limit first: it is the cheapest check, and it throttles floods and key guessing
//!    before anything else spends work on them.
//! 2. Framing (smuggling) next: a request whose length is ambiguous must not be interpreted at all.
//! 3. Header limits, Host, reserved headers: syntax of the head, still without any secret work.
//! 4. Path and method: unknown and malformed routes end here; closed admin routes answer 404
//!    before auth, so they look absent to everyone.
//! 5. Auth: the first check that needs a key. Everything after it is attributed to a key name.
//!    A rollout token is held to its rollout's routes right here (403 `rollout_mismatch`), a key
//!    to its source CIDRs (403 `source_not_allowed`), and a suspended key ends here (403
//!    `key_suspended`).
//! 6. Admin gate, per-key (or, for a token, per-rollout) rate limit and concurrency: before the
//!    body, so a refused request costs no body reading.
//! 7. Body: none on GET, then size; the client's key nowhere but its auth header (headers, query
//!    and the complete buffered body); then JSON; then the route's shape (`shapes::read`: a body
//!    that is not the shape is refused, and the parser yields every text the model reads); then
//!    the content rules on those texts; then what the body asks of the upstream: control fields
//!    refused, cost fields and batch sizes capped (per key), media URLs checked (on routes whose
//!    body goes to a model; agent-lightning's events go to its store); last the model against
//!    the key's list (403 `model_not_allowed`) and, on metered routes, the request's token and
//!    spend estimate reserved against the key's budgets (429 `token_budget`, `spend_budget`,
//!    `request_budget`; `proxy::budget`). A streaming chat request gets
//!    `stream_options.include_usage` here if it lacks it.
//! 8. Forward. The client's key never leaves this function; the upstream's key is added last.
//!    The response comes back with only the headers `proxy.headers.response_allow` lets through,
//!    and is read for its usage as it streams (`record::Tracked`), which settles the reservation.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use super::{
    budget::{self, Metered},
    forward,
    layers::{
        auth, body, body_fields, fleet, framing, header_limits, host, json, key_leak, path,
        path::RouteKind, reserved, rollout,
    },
    record::{BoxError, Held, Record, Tracked},
    reject::Reject,
    shapes,
    state::State,
    Shared,
};

/// Who is on the other end of the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    pub tls: bool,
}

pub async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    ambiguous_framing: bool,
    request: Request<Incoming>,
) -> Result<Response<Tracked>, Infallible> {
    // This request finishes on these settings even if a reload swaps in new ones meanwhile.
    let state = shared.state.load_full();
    let mut record = Record::start(shared.metrics.clone(), peer.addr.ip(), request.method());
    // Filled in as the pipeline learns them: names only, never values.
    let span = tracing::info_span!(
        "request",
        route = tracing::field::Empty,
        key = tracing::field::Empty
    );
    let outcome = checked_forward(
        &shared,
        &state,
        peer,
        ambiguous_framing,
        request,
        &mut record,
    )
    .instrument(span)
    .await;
    let (response, permits, metered) = match outcome {
        Ok((response, permits, metered)) => {
            record.status = response.status().as_u16();
            (
                response.map(|body| body.map_err(BoxError::from).boxed()),
                permits,
                metered,
            )
        }
        Err(reject) => {
            record.status = reject.status.as_u16();
            record.reason = reject.reason;
            if reject.status == StatusCode::TOO_MANY_REQUESTS {
                shared
                    .alerts
                    .rate_limited(reject.reason, record.key.as_deref(), record.client);
            }
            record.decision = if reject.status.is_server_error() {
                "error"
            } else {
                "deny"
            };
            tracing::debug!(reason = reject.reason, status = record.status, route = %record.route, "refused");
            (
                reject
                    .to_response()
                    .map(|body| body.map_err(|never| match never {}).boxed()),
                Held::default(),
                None,
            )
        }
    };
    let (mut parts, inner) = response.into_parts();
    let mut tracked = Tracked::new(inner, record, permits);
    if let Some(metered) = metered {
        tracked.meter(metered, &mut parts);
    }
    Ok(Response::from_parts(parts, tracked))
}

async fn checked_forward(
    shared: &Shared,
    state: &State,
    peer: Peer,
    ambiguous_framing: bool,
    request: Request<Incoming>,
    record: &mut Record,
) -> Result<(Response<Incoming>, Held, Option<Metered>), Reject> {
    let (parts, request_body) = request.into_parts();
    let headers = &parts.headers;

    state.rate.check_ip(peer.addr.ip())?;
    framing::check(headers, ambiguous_framing)?;
    header_limits::check(headers, &state.header_limits)?;
    host::check(headers)?;
    reserved::check(headers, &state.reserved)?;

    let route = path::classify_in(&state.routes, parts.uri.path(), state.max_path_bytes)?;
    record.route = route.template.to_string();
    record.rollout = route.rollout.clone();
    tracing::Span::current().record("route", record.route.as_str());
    let admin = route.kind == RouteKind::Admin;
    if admin && state.admin_keys.is_empty() {
        return Err(closed_route());
    }
    path::check_method(&route, &parts.method)?;

    let caller = state.keys.authenticate(headers, SystemTime::now())?;
    let key = caller.key;
    record.key = Some(caller.name.clone());
    tracing::Span::current().record("key", &*caller.name);
    if let Some(claims) = &caller.rollout {
        rollout::check_route(claims, route.rollout.as_ref())?;
    }
    key.policy.check_source(peer.addr.ip())?;
    shared.ledger.check_suspended(&key.name)?;
    fleet::check_revoked(shared.fleet.as_ref(), key)?;
    if admin && !state.admin_keys.contains(&key.name) {
        return Err(closed_route());
    }
    // A rollout token spends its rollout's budget instead of a key's.
    let permit = match &caller.rollout {
        Some(claims) => state.rollouts.admit(&claims.rollout)?,
        None => {
            state.rate.check_key(&key.name)?;
            state.concurrency.acquire(&key.name)?
        }
    };

    let limit = state.body_limit(&route.name);
    body::check_bodyless(&parts.method, headers)?;
    body::check_declared(headers, limit)?;
    let mut bytes = body::read(request_body, limit, state.body_timeout).await?;
    record.bytes_in = bytes.len() as u64;
    if let Some(presented) = auth::presented_key(headers) {
        key_leak::check(
            headers,
            parts.uri.query(),
            &bytes,
            presented,
            state.custom_key_header.as_ref(),
        )?;
    }
    super::layers::query::check(&route, parts.uri.query(), state.max_query_bytes)?;
    let mut metered = None;
    if parts.method == Method::POST && !admin {
        let value = json::check(headers, &bytes, state.max_json_depth)?;
        let reading =
            shapes::read(route.shape, &value).map_err(|bad| bad.into_reject(route.shape))?;
        state.content.check(&reading)?;
        // Events go to agent-lightning's store, not to a model: LiteLLM's control fields mean
        // nothing there, and an event's own fields (`tags`, `timeout`) are its data.
        if route.shape.asks_a_model() {
            body_fields::check(&value)?;
            body_fields::check_caps(&value, route.shape, &key.caps)?;
            state.media.check(&value)?;
        }
        let (admitted, rewritten) = budget::admit(&shared.ledger, state, key, route.shape, value)?;
        metered = admitted;
        if let Some(rewritten) = rewritten {
            bytes = rewritten.into();
        }
    }

    // The shared limits (`[fleet]`): one Redis call, after every local check passed.
    if let (Some(fleet), None) = (&shared.fleet, &caller.rollout) {
        fleet::check(
            fleet,
            state,
            &shared.ledger,
            key,
            peer.addr.ip(),
            &mut metered,
        )
        .await?;
    }

    let upstream_request = forward::rewrite(
        parts,
        bytes,
        state,
        &key.upstream_allow,
        peer.addr,
        peer.tls,
    );
    let started = Instant::now();
    let response = forward::send(
        &shared.upstream_slots,
        upstream_request,
        state.upstream_timeout,
        &state.response_allow,
    )
    .await;
    record.upstream = Some(started.elapsed());
    let (response, slot) = response?;
    Ok((response, Held::new(permit, slot), metered))
}

fn closed_route() -> Reject {
    Reject::new(StatusCode::NOT_FOUND, "unknown_route", "no such route")
}
