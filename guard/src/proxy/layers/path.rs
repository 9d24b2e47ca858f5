//! The raw-path checks and the per-request route value (threat 3).
//!
//! The raw path is checked as sent, never decoded or normalized first: encoded `/ . \`, NUL and
//! control characters, `..` or `.` segments, `//` and over-long paths get 400, because the
//! upstream's permissive, decoded matching is what made them dangerous. Then only the routes of
//! the active table pass (`proxy::routes`: the profile's built-in routes and the config's
//! `[[proxy.routes]]`); the upstream's admin routes are in the table so that config can open them
//! to named keys; everything else is 404.

use std::sync::Arc;

use http::{Method, StatusCode};

use crate::proxy::{
    reject::Reject,
    routes::{RouteSpec, RouteTable},
    shapes::Shape,
};

/// The route a request names: a few `Arc` clones of its table entry and, on attributed routes,
/// the rollout ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The route's name in the table (`chat/completions`, `events`), or `admin`.
    pub name: Arc<str>,
    /// The path with ids replaced, for logs and metric labels: `/rollout/{id}/attempt/{id}/v1/models`.
    pub template: Arc<str>,
    pub kind: RouteKind,
    /// The body shape the route takes (`Shape::None` for GET and admin routes).
    pub shape: Shape,
    /// The rollout and attempt the path names, on attributed routes.
    pub rollout: Option<RolloutRef>,
    /// Its table entry: methods and query allow-list.
    pub spec: Arc<RouteSpec>,
}

/// A rollout (and attempt) named by the path: what rollout-scoped keys are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRef {
    pub rollout: String,
    pub attempt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// An inference (or agent-facing) route.
    Api,
    /// An upstream management route: closed unless config names the caller's key.
    Admin,
}

/// The raw-path checks, then the route of `table`.
pub fn classify_in(table: &RouteTable, path: &str, max_bytes: usize) -> Result<Route, Reject> {
    check_syntax(path, max_bytes)?;
    table.classify(path)
}

/// [`classify_in`] on the litellm profile's built-in table (unit tests).
#[cfg(test)]
pub fn classify(path: &str, max_bytes: usize) -> Result<Route, Reject> {
    static TABLE: std::sync::OnceLock<RouteTable> = std::sync::OnceLock::new();
    let table = TABLE
        .get_or_init(|| RouteTable::builtin(crate::config::proxy::UpstreamKind::Litellm, false));
    classify_in(table, path, max_bytes)
}

/// 405 when the route takes another method.
pub fn check_method(route: &Route, method: &Method) -> Result<(), Reject> {
    if route.spec.takes(method) {
        return Ok(());
    }
    Err(Reject::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} takes {} only",
            route.template,
            route.spec.methods_text()
        ),
    ))
}

pub fn check_syntax(path: &str, max_bytes: usize) -> Result<(), Reject> {
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
                .map(|r| r.template.to_string())
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
