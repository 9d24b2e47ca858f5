//! `[providers]` compiled (part of the one config compiler): the listener checked (loopback
//! only), each route's URL, name, headers, paths and methods checked, its key file and CA file
//! read, and its pooled TLS client built. Every problem names its field.

use std::{collections::HashSet, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method, Uri};

use super::{
    config::{AuthScheme, ProvidersSection},
    connector::{self, TlsConnector},
    gateway::{Provider, Table},
    key::{self, KeyRead},
};
use crate::config::FieldError;

/// The gateway as the config makes it. `unresolved` lists the key files that could not be read
/// here because they are systemd credentials outside the unit; the daemon refuses those.
pub struct GatewaySettings {
    pub table: Table,
    pub unresolved: Vec<(String, String)>,
}

impl GatewaySettings {
    pub fn has_providers(&self) -> bool {
        !self.table.providers.is_empty()
    }

    /// For the daemon: every key must be in hand.
    pub fn require_keys(&self) -> Result<(), String> {
        match self.unresolved.first() {
            None => Ok(()),
            Some((field, path)) => Err(format!(
                "{field}: {path} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set; \
                 add `LoadCredential=NAME:/path/to/key` to proxyguard's unit, or give the key file's absolute path"
            )),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
        && !name.starts_with('.')
}

pub fn compile(
    section: &ProvidersSection,
    errors: &mut Vec<FieldError>,
) -> Option<GatewaySettings> {
    let before = errors.len();
    let mut push = |field: String, message: String| {
        errors.push(FieldError {
            field,
            line: None,
            message,
        })
    };
    if !section.listen.ip().is_loopback() {
        push(
            "providers.listen".into(),
            format!(
                "{} is not a loopback address; the gateway adds provider keys to whatever reaches it, so it listens on loopback only (like \"127.0.0.1:8089\")",
                section.listen
            ),
        );
    }
    for (field, value) in [
        (
            "providers.connect_timeout_secs",
            section.connect_timeout_secs,
        ),
        (
            "providers.response_timeout_secs",
            section.response_timeout_secs,
        ),
        ("providers.max_connections", section.max_connections as u64),
    ] {
        if value == 0 {
            push(field.into(), "must be at least 1".into());
        }
    }
    let connect_timeout = Duration::from_secs(section.connect_timeout_secs.max(1));
    let mut names = HashSet::new();
    let mut table = Table {
        providers: Default::default(),
        response_timeout: Duration::from_secs(section.response_timeout_secs.max(1)),
    };
    let mut unresolved = Vec::new();
    for (i, route) in section.routes.iter().enumerate() {
        let field = |name: &str| format!("providers.routes[{i}].{name}");
        if !valid_name(&route.name) {
            push(
                field("name"),
                "use lower-case letters, digits, '-', '_' and '.' (at most 64); it is the first path segment".into(),
            );
        } else if !names.insert(route.name.as_str()) {
            push(
                field("name"),
                format!("\"{}\" names more than one provider", route.name),
            );
        }
        let base = base_url(&route.base_url)
            .map_err(|message| push(field("base_url"), message))
            .ok();
        let key = match key::read(&route.key_file) {
            Ok(KeyRead::Key(key)) => {
                let text = match route.auth {
                    AuthScheme::Bearer => format!("Bearer {key}"),
                    AuthScheme::XApiKey | AuthScheme::ApiKey => key,
                };
                HeaderValue::from_str(&text).ok().map(|mut value| {
                    value.set_sensitive(true);
                    value
                })
            }
            Ok(KeyRead::Deferred) => {
                unresolved.push((field("key_file"), route.key_file.display().to_string()));
                None
            }
            Err(message) => {
                push(field("key_file"), message);
                None
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &route.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes()).ok();
            match parsed {
                None => push(field(&format!("headers.{name}")), "not a header name".into()),
                Some(parsed)
                    if crate::proxy::hop::HOP_BY_HOP.contains(&parsed.as_str())
                        || parsed == http::header::HOST
                        || crate::proxy::layers::auth::is_credential(&parsed, None) =>
                {
                    push(
                        field(&format!("headers.{name}")),
                        "a hop-by-hop, Host or credential header cannot be fixed here; the key goes in key_file and `auth`".into(),
                    )
                }
                Some(parsed) => match HeaderValue::from_str(value) {
                    Ok(value) => headers.push((parsed, value)),
                    Err(_) => push(
                        field(&format!("headers.{name}")),
                        "the value is not a valid header value (printable ASCII, one line)".into(),
                    ),
                },
            }
        }
        let ca_file = route
            .ca_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let tls = match connector::client_config(ca_file) {
            Ok(tls) => Some(tls),
            Err(message) => {
                push(
                    field(if ca_file.is_some() {
                        "ca_file"
                    } else {
                        "base_url"
                    }),
                    message,
                );
                None
            }
        };
        for (j, prefix) in route.paths.iter().enumerate() {
            if !prefix.starts_with('/')
                || prefix.split('/').any(|s| s == "." || s == "..")
                || prefix.contains(['?', '#', '%'])
            {
                push(
                    field(&format!("paths[{j}]")),
                    format!("`{prefix}` is not a path prefix like \"/v1/chat/completions\""),
                );
            }
        }
        let mut methods = Vec::new();
        for (j, method) in route.methods.iter().enumerate() {
            match Method::from_bytes(method.as_bytes()) {
                Ok(parsed) if method.chars().all(|c| c.is_ascii_uppercase()) => {
                    methods.push(parsed)
                }
                _ => push(
                    field(&format!("methods[{j}]")),
                    format!("`{method}` is not an upper-case HTTP method like \"POST\""),
                ),
            }
        }
        if route.methods.is_empty() {
            push(
                field("methods"),
                "allow at least one method, e.g. [\"GET\", \"POST\"]".into(),
            );
        }
        if let (Some((authority, base_path)), Some(tls)) = (base, tls) {
            let provider = Provider {
                name: route.name.clone(),
                authority,
                base_path,
                auth_header: match route.auth {
                    AuthScheme::Bearer => http::header::AUTHORIZATION,
                    AuthScheme::XApiKey => HeaderName::from_static("x-api-key"),
                    AuthScheme::ApiKey => HeaderName::from_static("api-key"),
                },
                key,
                headers,
                paths: route.paths.clone(),
                methods,
                connector: TlsConnector::new(tls, connect_timeout),
            };
            table
                .providers
                .insert(route.name.clone(), Arc::new(provider));
        }
    }
    (errors.len() == before).then_some(GatewaySettings { table, unresolved })
}

/// `https://HOST[:PORT][/PATH]`: the authority and the path without its trailing `/`.
fn base_url(text: &str) -> Result<(http::uri::Authority, String), String> {
    let bad = || format!("`{text}` is not a URL like \"https://api.openai.com/v1\"");
    let uri: Uri = text.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "`{text}` is not https://; the gateway speaks only verified TLS to providers"
        ));
    }
    let authority = uri.authority().cloned().ok_or_else(bad)?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err(format!(
            "`{text}` must not carry user info; the key goes in key_file"
        ));
    }
    if uri.query().is_some() {
        return Err(format!("`{text}` must not have a query"));
    }
    let path = uri.path().trim_end_matches('/').to_owned();
    Ok((authority, path))
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, path::Path};

    use super::*;
    use crate::providers::config::ProviderRoute;

    fn route(dir: &Path, name: &str) -> ProviderRoute {
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&key, "sk-real\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        ProviderRoute {
            name: name.into(),
            base_url: "https://api.openai.com/v1/".into(),
            key_file: key,
            auth: AuthScheme::Bearer,
            headers: Default::default(),
            ca_file: None,
            paths: Vec::new(),
            methods: vec!["POST".into()],
        }
    }

    #[test]
    fn a_good_section_compiles_and_a_bad_one_names_each_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut section = ProvidersSection::default();
        section.routes.push(route(dir.path(), "openai"));
        let mut errors = Vec::new();
        let settings = compile(&section, &mut errors).expect("compiles");
        assert!(errors.is_empty(), "{errors:?}");
        let openai = &settings.table.providers["openai"];
        assert_eq!(openai.base_path, "/v1");
        assert_eq!(openai.key.as_ref().unwrap(), "Bearer sk-real");
        assert!(openai.key.as_ref().unwrap().is_sensitive());

        let mut bad = section.clone();
        bad.listen = "0.0.0.0:8089".parse().unwrap();
        let mut second = route(dir.path(), "openai");
        second.base_url = "http://api.openai.com".into();
        second.headers.insert("x-api-key".into(), "x".into());
        second.methods = vec!["post".into()];
        second.paths = vec!["v1".into()];
        second.ca_file = Some(dir.path().join("absent.pem"));
        bad.routes.push(second);
        let mut errors = Vec::new();
        assert!(compile(&bad, &mut errors).is_none());
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "providers.listen",
                "providers.routes[1].name",
                "providers.routes[1].base_url",
                "providers.routes[1].headers.x-api-key",
                "providers.routes[1].ca_file",
                "providers.routes[1].paths[0]",
                "providers.routes[1].methods[0]",
            ],
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| !e.message.contains("sk-real")));
    }
}
