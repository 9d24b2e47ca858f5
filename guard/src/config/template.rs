//! The commented config file that `config init` writes, and the safe way to write it.
//!
//! The template is the single source of defaults shown to operators; a test checks that it parses
//! to exactly `Config::default()`, so the file and the struct cannot drift.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

use super::ConfigError;

pub const TEMPLATE: &str = include_str!("default.toml");

#[derive(Debug, Default)]
pub struct InitOptions {
    pub force: bool,
    /// `proxy.listen`, `proxy.upstream` and `proxy.upstream_key_file`, when given.
    pub listen: Option<std::net::SocketAddr>,
    pub upstream: Option<String>,
    pub upstream_key_file: Option<std::path::PathBuf>,
    /// `guarded.unit`, when given.
    pub guarded_unit: Option<String>,
    /// `proxy.upstream_kind`, when given.
    pub upstream_kind: Option<super::proxy::UpstreamKind>,
}

/// The template with the options filled in, comments kept.
fn render(options: &InitOptions) -> String {
    let (listen, upstream, key_file) = (
        &options.listen,
        &options.upstream,
        &options.upstream_key_file,
    );
    if listen.is_none()
        && upstream.is_none()
        && key_file.is_none()
        && options.guarded_unit.is_none()
        && options.upstream_kind.is_none()
    {
        return TEMPLATE.to_owned();
    }
    let mut doc: toml_edit::DocumentMut = TEMPLATE.parse().expect("the template is valid TOML");
    if let Some(unit) = &options.guarded_unit {
        doc["guarded"]["unit"] = toml_edit::value(unit.as_str());
    }
    let proxy = &mut doc["proxy"];
    if let Some(listen) = listen {
        proxy["listen"] = toml_edit::value(listen.to_string());
    }
    if let Some(upstream) = upstream {
        proxy["upstream"] = toml_edit::value(upstream.as_str());
    }
    if let Some(kind) = options.upstream_kind {
        // The limits the template leaves commented out then follow the kind.
        proxy["upstream_kind"] = toml_edit::value(kind.name());
    }
    if let Some(path) = key_file {
        proxy["upstream_key_file"] = toml_edit::value(path.to_string_lossy().as_ref());
    }
    doc.to_string()
}

/// Writes the template to `path` with mode 0600: atomically (temp file, fsync, rename), and only
/// over an existing file when `force` is set.
pub fn write_initial(path: &Path, options: &InitOptions) -> Result<(), ConfigError> {
    if path.exists() && !options.force {
        return Err(ConfigError::Exists {
            path: path.to_owned(),
        });
    }
    write_atomic(path, render(options).as_bytes()).map_err(|cause| ConfigError::Write {
        path: path.to_owned(),
        cause,
    })
}

/// Replaces `path` with `contents` so a reader sees either the old file or the new one, never a
/// partial write, and the file is never readable by others on the way.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "config path has no file name",
        )
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// 1-based line of the first line containing `needle`.
    fn line_of(source: &str, needle: &str) -> usize {
        source
            .lines()
            .position(|l| l.contains(needle))
            .expect("needle in source")
            + 1
    }

    #[test]
    fn template_is_the_default_config() {
        let parsed = Config::parse(TEMPLATE, Path::new("default.toml")).expect("template parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn init_writes_0600_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/proxyguard.toml");
        write_initial(&path, &InitOptions::default()).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        fs::write(&path, "# edited\n").unwrap();
        let err = write_initial(&path, &InitOptions::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Exists { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "# edited\n");

        let options = InitOptions {
            force: true,
            ..InitOptions::default()
        };
        write_initial(&path, &options).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), TEMPLATE);
    }

    #[test]
    fn init_options_fill_the_proxy_section() {
        let options = InitOptions {
            listen: Some("127.0.0.1:8443".parse().unwrap()),
            upstream: Some("http://127.0.0.1:4001".into()),
            upstream_key_file: Some("/etc/proxyguard/upstream.key".into()),
            guarded_unit: Some("litellm.service".into()),
            ..InitOptions::default()
        };
        let text = render(&options);
        assert!(
            text.contains("# The authenticating L7 proxy"),
            "comments kept"
        );
        let config: Config = toml::from_str(&text).unwrap();
        assert_eq!(config.proxy.listen, options.listen.unwrap());
        assert_eq!(config.proxy.upstream, "http://127.0.0.1:4001");
        assert_eq!(config.proxy.upstream_key_file, options.upstream_key_file);
        assert_eq!(config.guarded.unit.as_deref(), Some("litellm.service"));
    }

    #[test]
    fn init_with_an_upstream_kind_gets_its_defaults() {
        use crate::config::proxy::UpstreamKind;
        for kind in UpstreamKind::ALL {
            let options = InitOptions {
                upstream_kind: Some(*kind),
                ..InitOptions::default()
            };
            let text = render(&options);
            let config = Config::parse(&text, Path::new("init.toml")).unwrap();
            assert_eq!(config.proxy.upstream_kind, *kind);
            let d = crate::config::profile::defaults(*kind);
            assert_eq!(config.proxy.rate.per_key_burst, d.per_key_burst, "{kind:?}");
            assert_eq!(
                config.proxy.limits.max_concurrent_per_key, d.max_concurrent_per_key,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let source = TEMPLATE.replacen("port = 4000", "port = 0", 1);
        let line = line_of(&source, "port = 0");
        let err = Config::parse(&source, Path::new("/etc/pg.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/pg.toml"), "{err}");
        assert!(
            err.contains(&format!("line {line}: bind.rules[0].port")),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_errors_with_a_line() {
        let source = TEMPLATE.replacen(
            "mode = \"enforce\"",
            "mode = \"enforce\"\nenforce_harder = true",
            1,
        );
        let line = line_of(&source, "enforce_harder");
        let err = Config::parse(&source, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `enforce_harder`"), "{err}");
        assert!(err.contains(&format!("line {line}:")), "{err}");
    }
}

#[cfg(test)]
mod docs {
    /// docs/configuration.md must hold the template verbatim (`cargo xtask docs` regenerates it).
    #[test]
    fn configuration_reference_is_current() {
        let page = include_str!("../../../docs/configuration.md");
        assert!(
            page.contains(super::TEMPLATE),
            "docs/configuration.md is stale: run `cargo xtask docs`"
        );
    }
}
