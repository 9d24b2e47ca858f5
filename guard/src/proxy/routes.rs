//! The route table (threat 3, issue 21): which paths the guard serves, as data. A table is the
//! profile's built-in routes (`proxy.upstream_kind`, with `proxy.azure_routes`) plus the
//! `[[proxy.routes]]` entries of the config, compiled once per load; every request is matched
//! against it after `layers::path` checked the raw bytes.
//!
//! Each route is a path template of segments: literals, typed segments (`{rid:id}` takes
//! `[A-Za-z0-9_-]{1,128}`, `{model:name}` the same and `.`, `{mode:train|val}` one of the words)
//! and a last `*` for any further segments (the upstream's admin prefixes). A route has its
//! methods, its body shape, its query allow-list, the segments naming the rollout and attempt it
//! is attributed to, and whether it is an admin route.
//!
//! Matching walks the segments of each route in turn: no regex, no allocation but the rollout
//! ids. A path whose literals fit a route but whose typed segment does not (`/rollout/a.b/...`)
//! gets 400 naming the segment; a path no route fits gets 404. Templates never overlap (the
//! compiler refuses it), so at most one route fits a path and the table's order does not matter.

use std::sync::Arc;

use http::{Method, StatusCode};

use crate::{
    config::proxy::{RouteEntry, UpstreamKind},
    proxy::{
        layers::path::{RolloutRef, Route, RouteKind},
        reject::Reject,
        shapes::Shape,
    },
};

/// More segments than any route has; longer paths fit none.
pub const MAX_SEGMENTS: usize = 16;
/// The length limit of `id` and `name` segments.
pub const MAX_ID: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `[A-Za-z0-9_-]{1,128}`.
    Id,
    /// `[A-Za-z0-9._-]{1,128}` (never `.` or `..`: the raw-path check refuses those first).
    Name,
    /// One of these words.
    OneOf(Box<[Box<str>]>),
}

impl Segment {
    fn fits(&self, text: &str) -> bool {
        match self {
            Segment::Literal(literal) => **literal == *text,
            Segment::Id => is_id(text),
            Segment::Name => is_name(text),
            Segment::OneOf(words) => words.iter().any(|word| **word == *text),
        }
    }

    /// Whether some one segment fits both (for the overlap check).
    fn meets(&self, other: &Segment) -> bool {
        use Segment::*;
        match (self, other) {
            (Literal(a), b) | (b, Literal(a)) => b.fits(a),
            (OneOf(words), b) | (b, OneOf(words)) => words.iter().any(|word| b.fits(word)),
            (Id | Name, Id | Name) => true,
        }
    }

    fn rule(&self) -> String {
        match self {
            Segment::Literal(literal) => format!("`{literal}`"),
            Segment::Id => format!("[A-Za-z0-9_-]{{1,{MAX_ID}}}"),
            Segment::Name => format!("[A-Za-z0-9._-]{{1,{MAX_ID}}}"),
            Segment::OneOf(words) => format!("one of {}", words.join(", ")),
        }
    }
}

fn is_id(text: &str) -> bool {
    (1..=MAX_ID).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_name(text: &str) -> bool {
    (1..=MAX_ID).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_literal(text: &str) -> bool {
    !text.is_empty()
        && text != "."
        && text != ".."
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// One route, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The route's name (`chat/completions`, `admin`, a config route's `name`).
    pub name: Arc<str>,
    /// The template as written (`/rollout/{rid:id}/...`), for messages.
    pub path: Arc<str>,
    /// The template with segment names left out (`/rollout/{id}/attempt/{id}/v1/models`): the
    /// bounded label of logs and metrics, never a raw id.
    pub label: Arc<str>,
    segments: Box<[(Option<Box<str>>, Segment)]>,
    /// A last `*`: any further segments, none included.
    tail: bool,
    /// `None`: any method.
    pub methods: Option<Box<[Method]>>,
    pub shape: Shape,
    /// The query parameter names it takes.
    pub query: Box<[Box<str>]>,
    /// Indices of the rollout and attempt segments.
    rollout: Option<(usize, usize)>,
    pub admin: bool,
}

impl RouteSpec {
    /// Whether some path fits both.
    fn overlaps(&self, other: &RouteSpec) -> bool {
        let (a, b) = (&self.segments, &other.segments);
        let common = a.len().min(b.len());
        let lengths_fit = match (self.tail, other.tail) {
            (false, false) => a.len() == b.len(),
            (true, false) => b.len() >= a.len(),
            (false, true) => a.len() >= b.len(),
            (true, true) => true,
        };
        lengths_fit && (0..common).all(|i| a[i].1.meets(&b[i].1))
    }

    pub fn takes(&self, method: &Method) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(method))
    }

    pub fn methods_text(&self) -> String {
        match &self.methods {
            None => "any method".into(),
            Some(methods) => methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// How a path fits one route.
enum Fit {
    Yes,
    No,
    /// The literals fit, a typed segment does not: this segment (index).
    Typed(usize),
}

fn fit(spec: &RouteSpec, parts: &[&str]) -> Fit {
    let n = spec.segments.len();
    if parts.len() < n || (!spec.tail && parts.len() != n) {
        return Fit::No;
    }
    let mut typed = None;
    for (i, ((_, segment), part)) in spec.segments.iter().zip(parts).enumerate() {
        if segment.fits(part) {
            continue;
        }
        if matches!(segment, Segment::Literal(_)) {
            return Fit::No;
        }
        typed.get_or_insert(i);
    }
    typed.map_or(Fit::Yes, Fit::Typed)
}

/// The active routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Box<[Arc<RouteSpec>]>,
}

impl RouteTable {
    /// The profile's built-in table.
    pub fn builtin(kind: UpstreamKind, azure: bool) -> RouteTable {
        let mut routes = Vec::new();
        for def in builtin_defs(kind, azure) {
            let spec = def.compile().expect("built-in templates are valid");
            routes.push(Arc::new(spec));
        }
        RouteTable {
            routes: routes.into(),
        }
    }

    /// The profile's table plus `entries` (`proxy.routes`), every problem reported to
    /// `push(field, message)`.
    pub fn compile(
        kind: UpstreamKind,
        azure: bool,
        entries: &[RouteEntry],
        push: &mut dyn FnMut(String, String),
    ) -> Option<RouteTable> {
        let builtin = RouteTable::builtin(kind, azure);
        let mut routes: Vec<Arc<RouteSpec>> = builtin.routes.to_vec();
        let mut ok = true;
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("proxy.routes[{i}]");
            let Some(spec) = compile_entry(entry, &field, push) else {
                ok = false;
                continue;
            };
            let builtins = builtin.routes.len();
            if let Some((at, other)) = routes
                .iter()
                .enumerate()
                .find(|(_, other)| other.overlaps(&spec))
            {
                let whose = if at < builtins {
                    format!("the {} profile's route {}", kind.name(), other.path)
                } else {
                    format!(
                        "{} ({})",
                        entry_field(entries, &routes[builtins..], at - builtins),
                        other.path
                    )
                };
                push(
                    format!("{field}.path"),
                    format!(
                        "`{}` overlaps {whose}: some path would fit both; make the literal segments differ, or drop the entry if the built-in route already serves it",
                        entry.path
                    ),
                );
                ok = false;
                continue;
            }
            routes.push(Arc::new(spec));
        }
        ok.then(|| RouteTable {
            routes: routes.into(),
        })
    }

    /// The route `path` names. `path` must have passed `layers::path::check_syntax`.
    pub fn classify(&self, path: &str) -> Result<Route, Reject> {
        let not_found = || Reject::new(StatusCode::NOT_FOUND, "unknown_route", "no such route");
        let rest = path.strip_prefix('/').ok_or_else(not_found)?;
        let mut parts = [""; MAX_SEGMENTS + 1];
        let mut count = 0;
        for part in rest.split('/') {
            if count == parts.len() {
                // Longer than any template: only a tail route could fit, and those take any rest.
                break;
            }
            parts[count] = part;
            count += 1;
        }
        let parts = &parts[..count];
        let mut near = None;
        for spec in self.routes.iter() {
            match fit(spec, parts) {
                Fit::Yes => return Ok(route_of(spec, parts)),
                Fit::Typed(at) => {
                    near.get_or_insert((spec, at));
                }
                Fit::No => {}
            }
        }
        match near {
            Some((spec, at)) => {
                let (name, segment) = &spec.segments[at];
                Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "bad_path",
                    format!(
                        "path segment {} of {} must be {}",
                        name.as_deref().unwrap_or("?"),
                        spec.label,
                        segment.rule()
                    ),
                ))
            }
            None => Err(not_found()),
        }
    }

    /// The route names, each once.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for spec in self.routes.iter() {
            if !names.contains(&&*spec.name) {
                names.push(&spec.name);
            }
        }
        names
    }

    #[cfg(test)]
    pub fn routes(&self) -> impl Iterator<Item = &RouteSpec> {
        self.routes.iter().map(|spec| &**spec)
    }
}

/// `proxy.routes[k]` for the `k`-th config route accepted so far.
fn entry_field(entries: &[RouteEntry], accepted: &[Arc<RouteSpec>], k: usize) -> String {
    let path = &accepted[k].path;
    let index = entries
        .iter()
        .position(|entry| *entry.path == **path)
        .unwrap_or(k);
    format!("proxy.routes[{index}]")
}

fn route_of(spec: &Arc<RouteSpec>, parts: &[&str]) -> Route {
    Route {
        name: spec.name.clone(),
        template: spec.label.clone(),
        kind: if spec.admin {
            RouteKind::Admin
        } else {
            RouteKind::Api
        },
        shape: spec.shape,
        rollout: spec.rollout.map(|(rollout, attempt)| RolloutRef {
            rollout: parts[rollout].to_owned(),
            attempt: parts[attempt].to_owned(),
        }),
        spec: spec.clone(),
    }
}

// ---- Templates ----------------------------------------------------------------------------------

/// A route before compilation: the built-in tables are lists of these, config entries become one.
struct RouteDef<'a> {
    name: &'a str,
    path: String,
    methods: Option<Vec<Method>>,
    shape: Shape,
    query: &'a [&'a str],
    rollout: Option<(&'a str, &'a str)>,
    admin: bool,
}

/// Why a template or route does not compile, with the field it is about.
#[derive(Debug, PartialEq, Eq)]
struct Problem {
    field: &'static str,
    message: String,
}

impl RouteDef<'_> {
    fn compile(&self) -> Result<RouteSpec, Problem> {
        let bad = |field, message: String| Problem { field, message };
        let (segments, tail) = parse_template(&self.path).map_err(|m| bad("path", m))?;
        let index_of = |wanted: &str, field| {
            let found = segments
                .iter()
                .position(|(name, _)| name.as_deref() == Some(wanted));
            match found {
                Some(i) if segments[i].1 == Segment::Id => Ok(i),
                Some(_) => Err(bad(field, format!("segment `{wanted}` must be of type `id` to name a rollout or attempt"))),
                None => Err(bad(field, format!("`{wanted}` names no segment of the path; write it as {{{wanted}:id}} in the path"))),
            }
        };
        let rollout = match self.rollout {
            Some((rollout, attempt)) => {
                Some((index_of(rollout, "rollout")?, index_of(attempt, "attempt")?))
            }
            None => None,
        };
        let label = label_of(&segments, tail);
        Ok(RouteSpec {
            name: self.name.into(),
            path: self.path.as_str().into(),
            label: label.into(),
            segments: segments.into(),
            tail,
            methods: self.methods.clone().map(Into::into),
            shape: self.shape,
            query: self.query.iter().map(|q| Box::from(*q)).collect(),
            rollout,
            admin: self.admin,
        })
    }
}

type Parsed = (Vec<(Option<Box<str>>, Segment)>, bool);

fn parse_template(path: &str) -> Result<Parsed, String> {
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("`{path}` must start with `/`, like \"/v1/rerank\""))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("a template has at most {MAX_SEGMENTS} segments"));
    }
    let mut segments = Vec::new();
    let mut tail = false;
    for (i, part) in parts.iter().enumerate() {
        if *part == "*" {
            if i + 1 != parts.len() || i == 0 {
                return Err("`*` may only be the last segment, after at least one other".into());
            }
            tail = true;
            continue;
        }
        if let Some(inner) = part.strip_prefix('{') {
            let inner = inner.strip_suffix('}').ok_or_else(|| {
                format!("segment `{part}` opens `{{` without closing it; write it like {{rid:id}}")
            })?;
            let (name, kind) = inner
                .split_once(':')
                .ok_or_else(|| format!("segment `{part}` needs a type, like {{{inner}:id}}"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "segment name `{name}` must be letters, digits and `_`"
                ));
            }
            if segments
                .iter()
                .any(|(other, _): &(Option<Box<str>>, Segment)| other.as_deref() == Some(name))
            {
                return Err(format!("segment name `{name}` is used twice"));
            }
            let segment = match kind {
                "id" => Segment::Id,
                "name" => Segment::Name,
                words if words.contains('|') => {
                    let words: Vec<&str> = words.split('|').collect();
                    if let Some(bad) = words.iter().find(|w| !is_literal(w)) {
                        return Err(format!(
                            "`{bad}` in segment `{part}` is not a word (letters, digits, `-`, `_`, `.`, `~`)"
                        ));
                    }
                    Segment::OneOf(words.iter().map(|w| Box::from(*w)).collect())
                }
                other => {
                    return Err(format!(
                        "unknown segment type `{other}` in `{part}`; use `id`, `name`, or words like `train|val`"
                    ))
                }
            };
            segments.push((Some(name.into()), segment));
            continue;
        }
        if !is_literal(part) {
            return Err(format!(
                "segment `{part}` is not a literal (letters, digits, `-`, `_`, `.`, `~`; no empty segment, `.` or `..`) nor a typed segment like {{rid:id}}"
            ));
        }
        segments.push((None, Segment::Literal((*part).into())));
    }
    if segments.is_empty() {
        return Err("the template names no segment".into());
    }
    Ok((segments, tail))
}

fn label_of(segments: &[(Option<Box<str>>, Segment)], tail: bool) -> String {
    let mut label = String::new();
    for (_, segment) in segments {
        label.push('/');
        match segment {
            Segment::Literal(literal) => label.push_str(literal),
            Segment::Id => label.push_str("{id}"),
            Segment::Name => label.push_str("{name}"),
            Segment::OneOf(words) => {
                label.push('{');
                label.push_str(&words.join("|"));
                label.push('}');
            }
        }
    }
    if tail {
        label.push_str("/*");
    }
    label
}

/// Methods a config route may name.
const METHODS: &[Method] = &[
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

fn compile_entry(
    entry: &RouteEntry,
    field: &str,
    push: &mut dyn FnMut(String, String),
) -> Option<RouteSpec> {
    let mut ok = true;
    let mut report = |sub: &str, message: String| {
        push(format!("{field}.{sub}"), message);
    };
    if entry.name.is_empty()
        || entry.name.len() > 64
        || !entry.name.bytes().all(|b| b.is_ascii_graphic())
    {
        report(
            "name",
            "must be 1 to 64 printable ASCII characters, like \"rerank\"".into(),
        );
        ok = false;
    }
    let mut methods = Some(Vec::new());
    if entry.methods.is_empty() {
        report(
            "methods",
            "names no method; list them, like [\"POST\"] (or [\"*\"] for any)".into(),
        );
        ok = false;
    }
    for (j, text) in entry.methods.iter().enumerate() {
        if text == "*" {
            methods = None;
            continue;
        }
        match METHODS.iter().find(|m| m.as_str() == text) {
            Some(method) => {
                if let Some(list) = &mut methods {
                    list.push(method.clone());
                }
            }
            None => {
                report(
                    &format!("methods[{j}]"),
                    format!("unknown method `{text}`; use GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS or `*`"),
                );
                ok = false;
            }
        }
    }
    let shape = match entry.shape.parse::<Shape>() {
        Ok(shape) => shape,
        Err(_) => {
            let names: Vec<&str> = Shape::ALL.iter().map(|s| s.name()).collect();
            report(
                "shape",
                format!(
                    "unknown body shape `{}`; use one of {}",
                    entry.shape,
                    names.join(", ")
                ),
            );
            return None;
        }
    };
    let takes_body = methods.as_ref().is_none_or(|list| {
        list.iter()
            .any(|m| matches!(*m, Method::POST | Method::PUT | Method::PATCH))
    });
    if !entry.admin && takes_body && shape == Shape::None {
        report(
            "shape",
            "a route that takes POST, PUT or PATCH needs the shape its bodies are parsed as, like \"chat\"".into(),
        );
        ok = false;
    }
    for (j, name) in entry.query.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'%' | b'#' | b'\\'));
        if !valid {
            report(
                &format!("query[{j}]"),
                format!("`{name}` is not a query parameter name (1 to 64 printable characters, none of & = % # \\)"),
            );
            ok = false;
        }
    }
    let rollout = match (&entry.rollout, &entry.attempt) {
        (Some(rollout), Some(attempt)) => Some((rollout.as_str(), attempt.as_str())),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            report(
                if entry.rollout.is_none() {
                    "rollout"
                } else {
                    "attempt"
                },
                "an attributed route names both its rollout and its attempt segment".into(),
            );
            return None;
        }
    };
    if rollout.is_some() && entry.admin {
        report(
            "admin",
            "an admin route is not attributed to a rollout; drop rollout and attempt".into(),
        );
        ok = false;
    }
    let query: Vec<&str> = entry.query.iter().map(String::as_str).collect();
    let def = RouteDef {
        name: &entry.name,
        path: entry.path.clone(),
        methods,
        shape,
        query: &query,
        rollout,
        admin: entry.admin,
    };
    match def.compile() {
        Ok(spec) => ok.then_some(spec),
        Err(problem) => {
            report(problem.field, problem.message);
            None
        }
    }
}

// ---- The built-in tables ------------------------------------------------------------------------

/// OpenAI-compatible inference routes: (name, method, shape, query, needs `/v1`).
///
/// The query lists, read from LiteLLM 1.108.7 (see `upstream_surface`): most take none, because
/// what LiteLLM reads there is control, not request: `?model=` on chat/completions, completions
/// and embeddings (fed to `resolve_inference_model` next to the body's `model`),
/// `?custom_llm_provider=`, `/models`' `team_id`, `scope`, `include_metadata`,
/// `return_wildcard_routes`, `*_model_access_groups`, `fallback_type`, `healthy_only`, and every
/// parameter at all, which `user_api_key_auth` copies into the request data its auth and routing
/// checks read (`populate_request_with_path_params`). The one kept is Anthropic's `beta` on
/// `/v1/messages`: its SDK's beta namespace (Claude Code) sends `?beta=true`, which LiteLLM's
/// `anthropic_response` does not act on.
const OPENAI_ROUTES: &[(&str, Method, Shape, &[&str], bool)] = &[
    (
        "chat/completions",
        Method::POST,
        Shape::ChatCompletions,
        &[],
        false,
    ),
    ("completions", Method::POST, Shape::Completions, &[], false),
    ("embeddings", Method::POST, Shape::Embeddings, &[], false),
    ("models", Method::GET, Shape::None, &[], false),
    ("responses", Method::POST, Shape::Responses, &[], false),
    ("moderations", Method::POST, Shape::Moderations, &[], false),
];

/// Anthropic's messages route, which LiteLLM serves under `/v1` only.
const MESSAGES: (&str, Method, Shape, &[&str], bool) = (
    "messages",
    Method::POST,
    Shape::AnthropicMessages,
    &["beta"],
    true,
);

/// First path segments of LiteLLM's management API and UI: admin routes, any tail, any method.
const LITELLM_ADMIN_PREFIXES: &[&str] = &[
    "key",
    "user",
    "team",
    "model",
    "config",
    "ui",
    "global",
    "spend",
    "customer",
    "organization",
    "budget",
    "credentials",
    "sso",
    "health",
    "routes",
    "settings",
];

/// agent-lightning 1.0.2's agent-facing base (`controller/local_reconciler.py`,
/// `AGL_OPENAI_BASE_URL`); its `routes/proxy.py` serves these two upstream paths and 404s others.
const AGL_PROXY_BASE: &str =
    "/proxy/rollout/{rid:id}/attempt/{aid:id}/mode/{mode:train|val}/openai/v1";

/// agent-lightning 1.0.2's trainer and management API (`routes/rollouts.py`, `events.py`,
/// `models.py`, `proxy.py`'s management router, `app.py`'s `/healthz`): admin routes.
/// `GET /api/rollouts/terminal` is served by `/api/rollouts/{rid:id}` (it fits an id).
const AGL_ADMIN: &[(&str, &[Method])] = &[
    ("/api/rollouts", &[Method::GET, Method::POST]),
    (
        "/api/rollouts/{rid:id}",
        &[Method::GET, Method::PATCH, Method::DELETE],
    ),
    ("/api/rollouts/{rid:id}/events", &[Method::GET]),
    ("/api/models", &[Method::POST, Method::DELETE]),
    ("/proxy/pause", &[Method::POST]),
    ("/proxy/resume", &[Method::POST]),
    ("/proxy/state", &[Method::GET]),
    ("/healthz", &[Method::GET]),
];

/// Azure OpenAI-style routes (`proxy.azure_routes`), with their `api-version` parameter.
const AZURE_ROUTES: &[(&str, Shape)] = &[
    ("chat/completions", Shape::ChatCompletions),
    ("completions", Shape::Completions),
    ("embeddings", Shape::Embeddings),
];

fn builtin_defs(kind: UpstreamKind, azure: bool) -> Vec<RouteDef<'static>> {
    let mut defs = Vec::new();
    let api = |defs: &mut Vec<RouteDef<'static>>,
               prefix: &str,
               rollout: bool,
               (name, method, shape, query, needs_v1): &(
        &'static str,
        Method,
        Shape,
        &'static [&'static str],
        bool,
    )| {
        let bases: &[&str] = if *needs_v1 { &["/v1"] } else { &["", "/v1"] };
        for base in bases {
            defs.push(RouteDef {
                name,
                path: format!("{prefix}{base}/{name}"),
                methods: Some(vec![method.clone()]),
                shape: *shape,
                query,
                rollout: rollout.then_some(("rid", "aid")),
                admin: false,
            });
        }
    };
    match kind {
        UpstreamKind::Openai => {
            for route in OPENAI_ROUTES {
                api(&mut defs, "", false, route);
            }
        }
        UpstreamKind::Litellm | UpstreamKind::AgentLightning => {
            // agent-lightning 0.3's LLMProxy is LiteLLM's app: the same table serves it.
            for (prefix, rollout) in [("", false), ("/rollout/{rid:id}/attempt/{aid:id}", true)] {
                for route in OPENAI_ROUTES.iter().chain([&MESSAGES]) {
                    api(&mut defs, prefix, rollout, route);
                }
            }
            for prefix in LITELLM_ADMIN_PREFIXES {
                defs.push(RouteDef {
                    name: "admin",
                    path: format!("/{prefix}/*"),
                    methods: None,
                    shape: Shape::None,
                    query: &[],
                    rollout: None,
                    admin: true,
                });
            }
        }
    }
    if kind == UpstreamKind::AgentLightning {
        for (name, shape) in [
            ("chat/completions", Shape::ChatCompletions),
            ("completions", Shape::Completions),
        ] {
            defs.push(RouteDef {
                name,
                path: format!("{AGL_PROXY_BASE}/{name}"),
                methods: Some(vec![Method::POST]),
                shape,
                query: &[],
                rollout: Some(("rid", "aid")),
                admin: false,
            });
        }
        defs.push(RouteDef {
            name: "events",
            path: "/api/rollouts/{rid:id}/attempt/{aid:id}/events".into(),
            methods: Some(vec![Method::POST]),
            shape: Shape::AgentEvents,
            query: &[],
            rollout: Some(("rid", "aid")),
            admin: false,
        });
        for (path, methods) in AGL_ADMIN {
            defs.push(RouteDef {
                name: "admin",
                path: (*path).into(),
                methods: Some(methods.to_vec()),
                shape: Shape::None,
                query: &[],
                rollout: None,
                admin: true,
            });
        }
    }
    if azure {
        for (name, shape) in AZURE_ROUTES {
            defs.push(RouteDef {
                name,
                path: format!("/openai/deployments/{{deployment:name}}/{name}"),
                methods: Some(vec![Method::POST]),
                shape: *shape,
                query: &["api-version"],
                rollout: None,
                admin: false,
            });
        }
    }
    defs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> RouteEntry {
        RouteEntry {
            name: "custom".into(),
            path: path.into(),
            methods: vec!["POST".into()],
            shape: "chat".into(),
            query: Vec::new(),
            rollout: None,
            attempt: None,
            admin: false,
        }
    }

    fn compile(kind: UpstreamKind, entries: &[RouteEntry]) -> Result<RouteTable, Vec<String>> {
        let mut problems = Vec::new();
        let table = RouteTable::compile(kind, false, entries, &mut |field, message| {
            problems.push(format!("{field}: {message}"))
        });
        table.ok_or(problems)
    }

    /// (path, label or status) on a table.
    fn check(table: &RouteTable, cases: &[(&str, Result<&str, u16>)]) {
        for (path, expected) in cases {
            let got = table
                .classify(path)
                .map(|r| r.template.to_string())
                .map_err(|r| r.status.as_u16());
            assert_eq!(got.as_deref().map_err(|s| *s), *expected, "{path}");
        }
    }

    #[test]
    fn builtin_tables_have_no_overlaps() {
        for kind in UpstreamKind::ALL {
            for azure in [false, true] {
                let table = RouteTable::builtin(*kind, azure);
                let routes: Vec<&RouteSpec> = table.routes().collect();
                for (i, a) in routes.iter().enumerate() {
                    for b in &routes[i + 1..] {
                        assert!(!a.overlaps(b), "{kind:?}: {} overlaps {}", a.path, b.path);
                    }
                }
            }
        }
    }

    #[test]
    fn litellm_table() {
        let table = RouteTable::builtin(UpstreamKind::Litellm, false);
        let mut cases: Vec<(String, Result<String, u16>)> = Vec::new();
        for (name, _, _, _, needs_v1) in OPENAI_ROUTES.iter().chain([&MESSAGES]) {
            for prefix in ["", "/rollout/r-1/attempt/a_2"] {
                let label = if prefix.is_empty() {
                    ""
                } else {
                    "/rollout/{id}/attempt/{id}"
                };
                cases.push((
                    format!("{prefix}/v1/{name}"),
                    Ok(format!("{label}/v1/{name}")),
                ));
                cases.push((
                    format!("{prefix}/{name}"),
                    if *needs_v1 {
                        Err(404)
                    } else {
                        Ok(format!("{label}/{name}"))
                    },
                ));
            }
        }
        for prefix in LITELLM_ADMIN_PREFIXES {
            cases.push((format!("/{prefix}/x/y"), Ok(format!("/{prefix}/*"))));
            cases.push((format!("/{prefix}"), Ok(format!("/{prefix}/*"))));
        }
        for path in [
            "/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions",
            "/api/rollouts/r1/attempt/a1/events",
            "/api/rollouts",
            "/healthz",
            "/openai/deployments/gpt-4o/chat/completions",
            "/v1/key/generate",
            "/rollout/r1/attempt/a1/key/generate",
        ] {
            cases.push((path.into(), Err(404)));
        }
        let cases: Vec<(&str, Result<&str, u16>)> = cases
            .iter()
            .map(|(p, r)| (p.as_str(), r.as_ref().map(String::as_str).map_err(|s| *s)))
            .collect();
        check(&table, &cases);
        let route = table
            .classify("/rollout/r-1/attempt/a_2/v1/chat/completions")
            .unwrap();
        assert_eq!(
            route.rollout,
            Some(RolloutRef {
                rollout: "r-1".into(),
                attempt: "a_2".into()
            })
        );
        assert_eq!(&*route.name, "chat/completions");
        assert_eq!(route.shape, Shape::ChatCompletions);
        assert!(table
            .classify("/v1/chat/completions")
            .unwrap()
            .rollout
            .is_none());
        assert_eq!(
            table.classify("/key/generate").unwrap().kind,
            RouteKind::Admin
        );
    }

    #[test]
    fn agent_lightning_table() {
        let table = RouteTable::builtin(UpstreamKind::AgentLightning, false);
        check(
            &table,
            &[
                // 0.3 (LiteLLM) routes, as on the litellm profile.
                ("/rollout/r1/attempt/a1/v1/chat/completions", Ok("/rollout/{id}/attempt/{id}/v1/chat/completions")),
                ("/v1/models", Ok("/v1/models")),
                ("/key/generate", Ok("/key/*")),
                // 1.0.
                (
                    "/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions",
                    Ok("/proxy/rollout/{id}/attempt/{id}/mode/{train|val}/openai/v1/chat/completions"),
                ),
                (
                    "/proxy/rollout/r1/attempt/0/mode/val/openai/v1/completions",
                    Ok("/proxy/rollout/{id}/attempt/{id}/mode/{train|val}/openai/v1/completions"),
                ),
                ("/api/rollouts/r1/attempt/a1/events", Ok("/api/rollouts/{id}/attempt/{id}/events")),
                ("/api/rollouts", Ok("/api/rollouts")),
                ("/api/rollouts/terminal", Ok("/api/rollouts/{id}")),
                ("/api/rollouts/r1", Ok("/api/rollouts/{id}")),
                ("/api/rollouts/r1/events", Ok("/api/rollouts/{id}/events")),
                ("/api/models", Ok("/api/models")),
                ("/proxy/pause", Ok("/proxy/pause")),
                ("/proxy/resume", Ok("/proxy/resume")),
                ("/proxy/state", Ok("/proxy/state")),
                ("/healthz", Ok("/healthz")),
                // Typed segments refuse what does not fit them.
                ("/proxy/rollout/r1/attempt/a1/mode/test/openai/v1/chat/completions", Err(400)),
                ("/proxy/rollout/r.1/attempt/a1/mode/train/openai/v1/chat/completions", Err(400)),
                ("/api/rollouts/r1/attempt/a~1/events", Err(400)),
                // Paths 1.0 itself 404s.
                ("/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/embeddings", Err(404)),
                ("/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/models", Err(404)),
                ("/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions/x", Err(404)),
                ("/api/rollouts/r1/attempt/a1/events/x", Err(404)),
                ("/api/other", Err(404)),
            ],
        );
        let chat = table
            .classify("/proxy/rollout/r1/attempt/a1/mode/train/openai/v1/chat/completions")
            .unwrap();
        assert_eq!(
            chat.rollout,
            Some(RolloutRef {
                rollout: "r1".into(),
                attempt: "a1".into()
            })
        );
        assert_eq!(
            (chat.kind, chat.shape),
            (RouteKind::Api, Shape::ChatCompletions)
        );
        let events = table.classify("/api/rollouts/r9/attempt/0/events").unwrap();
        assert_eq!(
            events.rollout,
            Some(RolloutRef {
                rollout: "r9".into(),
                attempt: "0".into()
            })
        );
        assert_eq!(
            (&*events.name, events.shape),
            ("events", Shape::AgentEvents)
        );
        for admin in [
            "/api/rollouts",
            "/api/rollouts/r1",
            "/proxy/pause",
            "/api/models",
        ] {
            let route = table.classify(admin).unwrap();
            assert_eq!(
                (route.kind, route.rollout),
                (RouteKind::Admin, None),
                "{admin}"
            );
        }
        assert!(!table
            .classify("/api/rollouts")
            .unwrap()
            .spec
            .takes(&Method::DELETE));
    }

    #[test]
    fn openai_table() {
        let table = RouteTable::builtin(UpstreamKind::Openai, false);
        check(
            &table,
            &[
                ("/v1/chat/completions", Ok("/v1/chat/completions")),
                ("/chat/completions", Ok("/chat/completions")),
                ("/v1/models", Ok("/v1/models")),
                ("/v1/embeddings", Ok("/v1/embeddings")),
                ("/v1/responses", Ok("/v1/responses")),
                ("/v1/moderations", Ok("/v1/moderations")),
                ("/v1/completions", Ok("/v1/completions")),
                ("/v1/messages", Err(404)),
                ("/rollout/r1/attempt/a1/v1/chat/completions", Err(404)),
                ("/key/generate", Err(404)),
                ("/proxy/pause", Err(404)),
                ("/openai/deployments/gpt-4o/chat/completions", Err(404)),
            ],
        );
    }

    #[test]
    fn azure_routes_are_an_option() {
        for kind in UpstreamKind::ALL {
            let table = RouteTable::builtin(*kind, true);
            check(
                &table,
                &[
                    (
                        "/openai/deployments/gpt-4.1/chat/completions",
                        Ok("/openai/deployments/{name}/chat/completions"),
                    ),
                    (
                        "/openai/deployments/d1/completions",
                        Ok("/openai/deployments/{name}/completions"),
                    ),
                    (
                        "/openai/deployments/d1/embeddings",
                        Ok("/openai/deployments/{name}/embeddings"),
                    ),
                    ("/openai/deployments/d~1/embeddings", Err(400)),
                    ("/openai/deployments/d1/models", Err(404)),
                    ("/v1/chat/completions", Ok("/v1/chat/completions")),
                ],
            );
            let route = table
                .classify("/openai/deployments/d1/chat/completions")
                .unwrap();
            assert_eq!(&*route.spec.query, [Box::from("api-version")]);
            assert_eq!(&*route.name, "chat/completions");
        }
    }

    #[test]
    fn long_and_odd_paths_never_panic() {
        let table = RouteTable::builtin(UpstreamKind::AgentLightning, true);
        let long = "/key".to_owned() + &"/x".repeat(100);
        assert_eq!(table.classify(&long).unwrap().template.as_ref(), "/key/*");
        let deep = "/v1".to_owned() + &"/x".repeat(100);
        assert_eq!(table.classify(&deep).unwrap_err().status, 404);
        for path in ["", "/", "x", "/v1/", "/v1//models"] {
            assert!(table.classify(path).is_err(), "{path:?}");
        }
    }

    #[test]
    fn config_routes_are_served() {
        let mut rerank = entry("/v1/rerank");
        rerank.name = "rerank".into();
        rerank.shape = "embeddings".into();
        rerank.query = vec!["top_n".into()];
        let mut scoped = entry("/team/{tid:id}/run/{rid:id}/attempt/{aid:id}/v1/chat/completions");
        scoped.name = "team-chat".into();
        scoped.rollout = Some("rid".into());
        scoped.attempt = Some("aid".into());
        let mut admin = entry("/internal/*");
        admin.methods = vec!["*".into()];
        admin.shape = "none".into();
        admin.admin = true;
        let table = compile(UpstreamKind::Openai, &[rerank, scoped, admin]).unwrap();
        let route = table.classify("/v1/rerank").unwrap();
        assert_eq!(
            (&*route.name, &*route.template, route.shape),
            ("rerank", "/v1/rerank", Shape::Embeddings)
        );
        assert_eq!(&*route.spec.query, [Box::from("top_n")]);
        let route = table
            .classify("/team/t1/run/r1/attempt/a1/v1/chat/completions")
            .unwrap();
        assert_eq!(
            route.rollout,
            Some(RolloutRef {
                rollout: "r1".into(),
                attempt: "a1".into()
            })
        );
        assert_eq!(
            &*route.template,
            "/team/{id}/run/{id}/attempt/{id}/v1/chat/completions"
        );
        assert_eq!(
            table.classify("/internal/a/b").unwrap().kind,
            RouteKind::Admin
        );
        assert!(table.names().contains(&"rerank"));
        // The profile's own routes stay.
        assert!(table.classify("/v1/chat/completions").is_ok());
    }

    #[test]
    fn config_route_errors() {
        let edit = |f: fn(&mut RouteEntry)| {
            let mut e = entry("/v1/rerank");
            f(&mut e);
            e
        };
        let cases: Vec<(RouteEntry, &str, &str)> = vec![
            (
                entry("v1/rerank"),
                "proxy.routes[0].path",
                "must start with `/`",
            ),
            (
                entry("/v1//rerank"),
                "proxy.routes[0].path",
                "not a literal",
            ),
            (
                entry("/v1/rerank/"),
                "proxy.routes[0].path",
                "not a literal",
            ),
            (entry("/v1/../x"), "proxy.routes[0].path", "not a literal"),
            (
                entry("/v1/{x:uuid}"),
                "proxy.routes[0].path",
                "unknown segment type `uuid`",
            ),
            (entry("/v1/{x}"), "proxy.routes[0].path", "needs a type"),
            (
                entry("/v1/{x:id"),
                "proxy.routes[0].path",
                "without closing",
            ),
            (
                entry("/v1/{x:id}/{x:id}"),
                "proxy.routes[0].path",
                "used twice",
            ),
            (entry("/v1/{m:a|b c}"), "proxy.routes[0].path", "not a word"),
            (entry("/*"), "proxy.routes[0].path", "`*` may only be"),
            (entry("/v1/*/x"), "proxy.routes[0].path", "`*` may only be"),
            (
                entry(&"/x".repeat(17)),
                "proxy.routes[0].path",
                "at most 16",
            ),
            // Overlaps with the profile's routes.
            (
                entry("/v1/chat/completions"),
                "proxy.routes[0].path",
                "overlaps the openai profile's route /v1/chat/completions",
            ),
            (entry("/v1/{any:id}"), "proxy.routes[0].path", "overlaps"),
            (
                entry("/{a:name}/models"),
                "proxy.routes[0].path",
                "overlaps",
            ),
            (entry("/v1/*"), "proxy.routes[0].path", "overlaps"),
            (
                edit(|e| e.shape = "xml".into()),
                "proxy.routes[0].shape",
                "unknown body shape `xml`",
            ),
            (
                edit(|e| e.shape = "none".into()),
                "proxy.routes[0].shape",
                "needs the shape",
            ),
            (
                edit(|e| e.methods = vec!["FETCH".into()]),
                "proxy.routes[0].methods[0]",
                "unknown method `FETCH`",
            ),
            (
                edit(|e| e.methods = vec![]),
                "proxy.routes[0].methods",
                "names no method",
            ),
            (
                edit(|e| e.name = String::new()),
                "proxy.routes[0].name",
                "1 to 64",
            ),
            (
                edit(|e| e.query = vec!["a=b".into()]),
                "proxy.routes[0].query[0]",
                "not a query parameter",
            ),
            (
                edit(|e| e.rollout = Some("rid".into())),
                "proxy.routes[0].attempt",
                "both",
            ),
            (
                edit(|e| {
                    e.rollout = Some("rid".into());
                    e.attempt = Some("aid".into());
                }),
                "proxy.routes[0].rollout",
                "names no segment",
            ),
            (
                {
                    let mut e = entry("/v1/{rid:a|b}/{aid:id}/x");
                    e.rollout = Some("rid".into());
                    e.attempt = Some("aid".into());
                    e
                },
                "proxy.routes[0].rollout",
                "must be of type `id`",
            ),
        ];
        for (bad, field, needle) in cases {
            let problems = compile(UpstreamKind::Openai, std::slice::from_ref(&bad)).unwrap_err();
            assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
            assert!(
                problems[0].starts_with(&format!("{field}: ")),
                "{bad:?}: {problems:?}"
            );
            assert!(problems[0].contains(needle), "{bad:?}: {problems:?}");
        }
        // Two config routes that overlap each other: the second is named, with the first.
        let problems = compile(
            UpstreamKind::Openai,
            &[entry("/v1/x/{a:id}"), entry("/v1/{b:id}/y")],
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("proxy.routes[1].path: "),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("proxy.routes[0] (/v1/x/{a:id})"),
            "{problems:?}"
        );
        // Routes that only look alike do not overlap.
        assert!(compile(
            UpstreamKind::Openai,
            &[entry("/v1/x/{a:id}"), entry("/v1/y/{b:id}")]
        )
        .is_ok());
        assert!(compile(
            UpstreamKind::Openai,
            &[entry("/v1/{m:a|b}/z"), entry("/v1/{n:c|d}/z")]
        )
        .is_ok());
    }
}
