//! `log.level` (and `RUST_LOG`): checked by proxyguard before tracing-subscriber's filter parser
//! sees it.
//!
//! That parser panics on some hostile text: it walks `text.trim()` but slices the untrimmed
//! `text` with those indices, so leading white space before a non-ASCII letter cuts a character
//! in two (`"\tב["` kills the process; reported upstream). A panic on reload would take the daemon
//! down, so only this small grammar reaches it, already normalised:
//!
//! ```text
//! filter    = directive *("," directive)      ; spaces around each directive are allowed
//! directive = level / target "=" level
//! level     = "off" / "error" / "warn" / "info" / "debug" / "trace"   ; any ASCII case
//! target    = ident *("::" ident)             ; ident = (ALPHA / "_") *(ALPHA / DIGIT / "_")
//! ```

/// The levels an operator may write, quietest first.
pub const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// The filter in the form handed to tracing-subscriber (no spaces, lower-case levels), or why
/// `text` is refused. The message names no part of `text` beyond the directive's position.
pub fn normalise(text: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for (i, directive) in text.split(',').enumerate() {
        let directive = directive.trim_matches(' ');
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (Some(target.trim_matches(' ')), level.trim_matches(' ')),
            None => (None, directive),
        };
        let n = i + 1;
        let Some(level) = LEVELS.iter().find(|l| l.eq_ignore_ascii_case(level)) else {
            return Err(if directive.is_empty() {
                format!("directive {n} is empty; write a level such as \"info\", or \"info,proxyguard=debug\"")
            } else {
                format!(
                    "directive {n}: the level must be one of {}",
                    LEVELS.join(", ")
                )
            });
        };
        match target {
            None => out.push((*level).to_owned()),
            Some(target) if is_target(target) => out.push(format!("{target}={level}")),
            Some(_) => {
                return Err(format!(
                    "directive {n}: the target must be a module path of ASCII letters, digits and '_', like \"proxyguard\" or \"proxyguard::proxy\""
                ))
            }
        }
    }
    Ok(out.join(","))
}

fn is_target(text: &str) -> bool {
    text.split("::").all(|ident| {
        let mut chars = ident.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_levels_and_module_directives_pass_normalised() {
        let table = [
            ("info", "info"),
            ("WARN", "warn"),
            ("off", "off"),
            ("proxyguard=debug", "proxyguard=debug"),
            (
                "info, proxyguard::proxy = trace ,aya_log=warn",
                "info,proxyguard::proxy=trace,aya_log=warn",
            ),
            ("_x=error", "_x=error"),
        ];
        for (input, normal) in table {
            assert_eq!(normalise(input).as_deref(), Ok(normal), "{input:?}");
        }
    }

    #[test]
    fn everything_else_is_refused() {
        for input in [
            "\tב[",
            " é=",
            "\tinfo",
            "",
            ",",
            "info,",
            "loud",
            "proxyguard=loud",
            "proxyguard",
            "=info",
            "proxy guard=info",
            "proxy-guard=info",
            "1x=info",
            "a:::b=info",
            "a::=info",
            "ב=info",
            "[span]=info",
            "proxyguard[span]=info",
            "proxyguard[{x=1}]=info",
            "3",
            "info=debug=trace",
            "\u{0}",
        ] {
            let err = normalise(input).expect_err(input);
            assert!(err.starts_with("directive "), "{input:?}: {err}");
        }
    }

    #[test]
    fn what_passes_parses_in_tracing_subscriber_unchanged() {
        for input in ["info", "info,proxyguard=debug", "a::b_c=TRACE, warn"] {
            let normal = normalise(input).unwrap();
            let filter: tracing_subscriber::EnvFilter = normal.parse().expect("valid filter");
            assert_eq!(
                filter.to_string().split(',').count(),
                normal.split(',').count()
            );
        }
    }
}
