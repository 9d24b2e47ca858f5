//! The route allow-list and per-route methods (threat 3).
//!
//! The raw path is checked as sent, never decoded or normalized first: encoded `/ . \`, NUL and
//! control characters, `..` or `.` segments, `//` and over-long paths get 400, because the
//! upstream's permissive, decoded matching is what made them dangerous. Then only known routes
//! pass: the OpenAI-compatible ones (with or without `/v1`), `/v1/messages`, each optionally
//! under `/rollout/{id}/attempt/{id}`. The upstream's admin routes are recognised so that config
//! can open them to named keys; everything else is 404.

use http::{Method, StatusCode};

use crate::proxy::{reject::Reject, shapes::Shape};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route's name in the allow-list (`chat/completions`), or `admin`.
    pub name: &'static str,
    /// The path with ids replaced, for logs and metric labels: `/rollout/{id}/attempt/{id}/v1/models`.
    pub template: String,
    pub kind: RouteKind,
    /// The body shape the route takes (`Shape::None` for GET and admin routes).
    pub shape: Shape,
    /// The rollout and attempt the path names, on attributed routes.
    pub rollout: Option<RolloutRef>,
}

/// A rollout (and attempt) named by the path: what rollout-scoped keys are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRef {
    pub rollout: String,
    pub attempt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// An inference route and the one method it takes.
    Api(&'static Method),
    /// An upstream management route: closed unless config names the caller's key.
    Admin,
}

/// Inference routes after the optional prefixes, with their methods.
pub const API_ROUTES: &[(&str, &Method, bool)] = &[
    // (route, method, needs the /v1 prefix)
    ("chat/completions", &Method::POST, false),
    ("completions", &Method::POST, false),
    ("embeddings", &Method::POST, false),
    ("models", &Method::GET, false),
    ("responses", &Method::POST, false),
    ("moderations", &Method::POST, false),
    ("messages", &Method::POST, true),
];

/// First path segments of LiteLLM's management API and UI.
const ADMIN_PREFIXES: &[&str] = &[
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

pub fn classify(path: &str, max_bytes: usize) -> Result<Route, Reject> {
    check_syntax(path, max_bytes)?;
    let not_found = || Reject::new(StatusCode::NOT_FOUND, "unknown_route", "no such route");
    let mut rest = path.strip_prefix('/').ok_or_else(not_found)?;
    let mut template = String::new();
    let mut rollout = None;

    let segments: Vec<&str> = rest.splitn(5, '/').collect();
    if segments.len() == 5 && segments[0] == "rollout" && segments[2] == "attempt" {
        if !valid_id(segments[1]) || !valid_id(segments[3]) {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "rollout and attempt ids must match [A-Za-z0-9_-]{1,128}",
            ));
        }
        template.push_str("/rollout/{id}/attempt/{id}");
        rollout = Some(RolloutRef {
            rollout: segments[1].to_owned(),
            attempt: segments[3].to_owned(),
        });
        rest = segments[4];
    }
    let versioned = match rest.strip_prefix("v1/") {
        Some(after) => {
            template.push_str("/v1");
            rest = after;
            true
        }
        None => false,
    };
    if let Some((route, method, _)) = API_ROUTES
        .iter()
        .find(|(route, _, needs_v1)| *route == rest && (versioned || !needs_v1))
    {
        template.push('/');
        template.push_str(route);
        return Ok(Route {
            name: route,
            template,
            kind: RouteKind::Api(method),
            shape: Shape::of_route(route),
            rollout,
        });
    }
    let first = rest.split('/').next().unwrap_or_default();
    if template.is_empty() && ADMIN_PREFIXES.contains(&first) {
        return Ok(Route {
            name: "admin",
            template: format!("/{first}/*"),
            kind: RouteKind::Admin,
            shape: Shape::None,
            rollout: None,
        });
    }
    Err(not_found())
}

/// 405 when the route takes another method.
pub fn check_method(route: &Route, method: &Method) -> Result<(), Reject> {
    match route.kind {
        RouteKind::Api(allowed) if allowed != method => Err(Reject::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} takes {allowed} only", route.template),
        )),
        _ => Ok(()),
    }
}

fn check_syntax(path: &str, max_bytes: usize) -> Result<(), Reject> {
    let bad = |message: &str| Reject::new(StatusCode::BAD_REQUEST, "bad_path", message);
    if path.len() > max_bytes {
        return Err(bad("the path is too long"));
    }
    // Spaces too: hyper never passes one, but this check must not lean on the parser before it.
    if path.bytes().any(|b| !b.is_ascii_graphic() || b == b'\\') {
        return Err(bad(
            "the path holds spaces, control characters, backslashes or non-ASCII bytes",
        ));
    }
    let lower = path.to_ascii_lowercase();
    for encoded in ["%2f", "%2e", "%5c", "%00"] {
        if lower.contains(encoded) {
            return Err(bad("the path holds an encoded '/', '.', '\\' or NUL"));
        }
    }
    if path.contains("//") {
        return Err(bad("the path holds an empty segment ('//')"));
    }
    if path
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err(bad("the path holds a '.' or '..' segment"));
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let long_id = "a".repeat(129);
        let over_long = format!("/v1/{}", "x".repeat(3000));
        let rollout_long = format!("/rollout/{long_id}/attempt/1/v1/models");
        let cases: Vec<(&str, Result<&str, u16>)> = vec![
            ("/v1/chat/completions", Ok("/v1/chat/completions")),
            ("/chat/completions", Ok("/chat/completions")),
            ("/v1/models", Ok("/v1/models")),
            ("/models", Ok("/models")),
            ("/v1/embeddings", Ok("/v1/embeddings")),
            ("/completions", Ok("/completions")),
            ("/v1/responses", Ok("/v1/responses")),
            ("/moderations", Ok("/moderations")),
            ("/v1/messages", Ok("/v1/messages")),
            (
                "/rollout/r-1/attempt/a_2/v1/chat/completions",
                Ok("/rollout/{id}/attempt/{id}/v1/chat/completions"),
            ),
            (
                "/rollout/r1/attempt/a1/models",
                Ok("/rollout/{id}/attempt/{id}/models"),
            ),
            ("/key/generate", Ok("/key/*")),
            ("/user/new", Ok("/user/*")),
            ("/messages", Err(404)),
            ("/v2/chat/completions", Err(404)),
            ("/v1/chat/completions/extra", Err(404)),
            ("/", Err(404)),
            ("/rollout/r1/attempt/a1/key/generate", Err(404)),
            ("/v1/chat%2fcompletions", Err(400)),
            ("/v1/chat%2Fcompletions", Err(400)),
            ("/v1/%2e%2e/key/generate", Err(400)),
            ("/v1/chat%5ccompletions", Err(400)),
            ("/v1/models%00", Err(400)),
            ("/v1/../key/generate", Err(400)),
            ("/v1/./models", Err(400)),
            ("//v1/models", Err(400)),
            ("/v1\\models", Err(400)),
            ("/v1/mod\tels", Err(400)),
            // Found by the `path` fuzz target: a space passed, and admin routes took any tail.
            ("/key/gener ate", Err(400)),
            ("/v1/models ", Err(400)),
            (&rollout_long, Err(400)),
            ("/rollout/a%2fb/attempt/1/v1/models", Err(400)),
            ("/rollout/a.b/attempt/1/v1/models", Err(400)),
            (&over_long, Err(400)),
        ];
        for (path, expected) in cases {
            let got = classify(path, 2048)
                .map(|r| r.template)
                .map_err(|r| r.status.as_u16());
            assert_eq!(got.as_deref().map_err(|s| *s), expected, "{path}");
        }
    }

    #[test]
    fn methods_per_route() {
        let cases = [
            ("/v1/models", Method::GET, true),
            ("/v1/models", Method::POST, false),
            ("/v1/chat/completions", Method::POST, true),
            ("/v1/chat/completions", Method::GET, false),
            ("/v1/embeddings", Method::DELETE, false),
            ("/key/generate", Method::POST, true),
        ];
        for (path, method, ok) in cases {
            let route = classify(path, 2048).unwrap();
            let got = check_method(&route, &method);
            assert_eq!(got.is_ok(), ok, "{method} {path}");
            if let Err(reject) = got {
                assert_eq!(reject.status, 405);
            }
        }
    }
}
