//! Secret-looking variable names in a process's environment (threat 7). Names only: values are
//! never read into a finding, a log line or an error.

use std::{collections::HashMap, ffi::OsString};

use super::{Finding, Severity};

/// Every variable whose name matches one of `patterns` (`*` is any run; case is ignored).
pub fn check(pid: u32, environ: &HashMap<OsString, OsString>, patterns: &[String]) -> Vec<Finding> {
    let mut names: Vec<String> = environ
        .keys()
        .map(|k| k.to_string_lossy().into_owned())
        .filter(|name| patterns.iter().any(|p| matches(p, name)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Finding {
            check: "secret_env",
            severity: Severity::Medium,
            pid,
            detail:
                "a secret in the environment can be read through /proc/<pid>/environ and leaks \
                     into child processes and crash dumps; move it to a root-only file or a \
                     systemd credential (LoadCredential=)"
                    .into(),
            subject: name,
            fixed: false,
            ownership: None,
        })
        .collect()
}

/// Glob match with `*` only, ASCII case-insensitive.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.to_ascii_uppercase();
    let name = name.to_ascii_uppercase();
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::watch::default_secret_names;

    #[test]
    fn globs() {
        assert!(matches("*_API_KEY", "OPENAI_API_KEY"));
        assert!(matches("*_api_key", "openai_api_key"));
        assert!(!matches("*_API_KEY", "OPENAI_API_KEYS"));
        assert!(matches("*_SECRET*", "AWS_SECRET_ACCESS_KEY"));
        assert!(matches("*PASSWORD*", "PGPASSWORD"));
        assert!(matches("LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY"));
        assert!(!matches("*_TOKEN", "TOKENIZERS_PARALLELISM"));
        assert!(!matches("A*B*C", "AC"));
    }

    #[test]
    fn reports_names_never_values() {
        let environ: HashMap<OsString, OsString> = [
            ("OPENAI_API_KEY", "sk-value-1"),
            ("PATH", "/usr/bin"),
            ("AZURE_CLIENT_SECRET", "value-2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let found = check(7, &environ, &default_secret_names());
        let names: Vec<&str> = found.iter().map(|f| f.subject.as_str()).collect();
        assert_eq!(names, ["AZURE_CLIENT_SECRET", "OPENAI_API_KEY"]);
        let text = format!("{found:?}");
        assert!(!text.contains("sk-value-1") && !text.contains("value-2"));
    }
}
