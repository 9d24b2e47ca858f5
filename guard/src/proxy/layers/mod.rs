//! One policy per file, each a plain function (or a small struct) over parts of an
//! `http::Request`, with its own table of good and bad inputs. `pipeline.rs` composes them.

pub mod addresses;
pub mod auth;
pub mod body;
pub mod body_fields;
pub mod concurrency;
pub mod content;
pub mod fleet;
pub mod framing;
pub mod header_limits;
pub mod host;
pub mod json;
pub mod key_leak;
pub mod media;
pub mod path;
pub mod query;
pub mod rate;
pub mod reserved;
pub mod rollout;
pub mod upstream_controls;

/// Whether header `name` reads as `target` (lower-case, hyphenated) once `_` is taken for `-`, as
/// CGI/WSGI-style servers take it: `x_rollout_id` and `Content_Length` are disguised spellings.
pub fn folds_to(name: &http::HeaderName, target: &str) -> bool {
    let name = name.as_str().as_bytes();
    name.len() == target.len()
        && name.iter().zip(target.as_bytes()).all(|(&a, &b)| {
            let a = if a == b'_' { b'-' } else { a };
            a == b
        })
}

/// The headers of `headers` spelled with `_` that fold to one of `targets`: the disguised copies
/// to remove along with the real ones.
pub fn disguised_as<'a>(
    headers: &http::HeaderMap,
    targets: impl Iterator<Item = &'a str> + Clone,
) -> Vec<http::HeaderName> {
    headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .filter(|name| targets.clone().any(|target| folds_to(name, target)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderName;

    #[test]
    fn underscores_fold_into_hyphens() {
        let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        assert!(super::folds_to(&name("x_rollout_id"), "x-rollout-id"));
        assert!(super::folds_to(&name("X-Rollout_Id"), "x-rollout-id"));
        assert!(super::folds_to(&name("x-rollout-id"), "x-rollout-id"));
        assert!(!super::folds_to(&name("x-rollout-ids"), "x-rollout-id"));
        assert!(!super::folds_to(&name("xxrollout-id"), "x-rollout-id"));
    }
}
