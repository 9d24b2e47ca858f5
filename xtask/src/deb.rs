//! `cargo xtask deb`: a Debian package of the release build: the binary, the hardened unit, the
//! default config (a conffile, so an edited copy survives upgrades), shell completions, and the
//! Prometheus alert rules and Grafana dashboard under /usr/share/proxyguard.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build, cmd};

/// Every path the package must install, as `dpkg-deb -c` lists them (with a leading `./`).
pub const INSTALLED: &[&str] = &[
    "./usr/bin/proxyguard",
    "./lib/systemd/system/proxyguard.service",
    "./etc/proxyguard/proxyguard.toml",
    "./usr/share/bash-completion/completions/proxyguard",
    "./usr/share/zsh/vendor-completions/_proxyguard",
    "./usr/share/fish/vendor_completions.d/proxyguard.fish",
    "./usr/share/doc/proxyguard/README.md",
    "./usr/share/proxyguard/proxyguard.rules.yml",
    "./usr/share/proxyguard/grafana-dashboard.json",
];

/// Files of the repository's `share/` installed as they are: (source under the workspace root,
/// path in the package).
pub const SHARED: &[(&str, &str)] = &[
    (
        "share/proxyguard.rules.yml",
        "usr/share/proxyguard/proxyguard.rules.yml",
    ),
    (
        "share/grafana-dashboard.json",
        "usr/share/proxyguard/grafana-dashboard.json",
    ),
];

/// Builds the release binary and the package; returns the .deb's path.
pub fn run() -> Result<PathBuf> {
    run_with(None)
}

/// As [`run`]; with a `stamp`, the kernel object carries it (`PROXYGUARD_OBJECT_STAMP`), so it
/// differs from an unstamped build's, and the package is version `X+STAMP`, which dpkg takes for
/// an upgrade of `X`: the VM's upgrade test installs it over the plain package. A stamped build
/// has a target dir of its own (`target/stamped`), so the main build is not invalidated.
pub fn run_with(stamp: Option<&str>) -> Result<PathBuf> {
    if let Some(stamp) = stamp {
        if stamp.is_empty() || !stamp.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
            bail!("a stamp is letters, digits and dots (it goes into a Debian version): {stamp:?}");
        }
    }
    let target = match stamp {
        Some(_) => build::target_dir().join("stamped"),
        None => build::target_dir(),
    };
    // A first stamped build starts from a copy of the main release build, so only the crates the
    // stamp touches are rebuilt, not every dependency.
    let main_release = build::target_dir().join("release");
    if stamp.is_some() && !target.join("release").exists() && main_release.is_dir() {
        fs::create_dir_all(&target)?;
        cmd::run(Command::new("cp").arg("-a").arg(&main_release).arg(&target))?;
    }
    // The binary alone: release-building the test crates would only cost time.
    let mut cargo = cmd::cargo();
    cargo
        .args(["build", "--release", "-p", "proxyguard", "--target-dir"])
        .arg(&target);
    match stamp {
        Some(stamp) => cargo.env("PROXYGUARD_OBJECT_STAMP", stamp),
        None => cargo.env_remove("PROXYGUARD_OBJECT_STAMP"),
    };
    cmd::run(&mut cargo)?;
    let binary = target.join("release/proxyguard");
    let version = match stamp {
        Some(stamp) => format!("{}+{stamp}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    };
    let root = build::target_dir().join(format!("deb/root-{version}"));
    let _ = fs::remove_dir_all(&root);
    let version = version.as_str();

    install(&binary, &root.join("usr/bin/proxyguard"), 0o755)?;
    write(
        &root.join("lib/systemd/system/proxyguard.service"),
        &generate(&binary, &["systemd", "unit"])?,
        0o644,
    )?;
    // The commented defaults, exactly what `config init` writes.
    let config = root.join("etc/proxyguard/proxyguard.toml");
    fs::create_dir_all(config.parent().unwrap())?;
    fs::set_permissions(config.parent().unwrap(), fs::Permissions::from_mode(0o700))?;
    cmd::run(
        Command::new(&binary)
            .args(["config", "init", "--force", "--path"])
            .arg(&config),
    )?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/proxyguard"),
        ("zsh", "usr/share/zsh/vendor-completions/_proxyguard"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/proxyguard.fish",
        ),
    ] {
        write(
            &root.join(path),
            &generate(&binary, &["completions", shell])?,
            0o644,
        )?;
    }
    install(
        &cmd::workspace_root().join("README.md"),
        &root.join("usr/share/doc/proxyguard/README.md"),
        0o644,
    )?;
    for (source, path) in SHARED {
        install(&cmd::workspace_root().join(source), &root.join(path), 0o644)?;
    }

    let debian = root.join("DEBIAN");
    write(&debian.join("control"), &control(version), 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/proxyguard/proxyguard.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    write(&debian.join("postrm"), POSTRM, 0o755)?;

    let deb = build::target_dir().join(format!("deb/proxyguard_{version}_amd64.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    println!("deb: {}", deb.display());
    Ok(deb)
}

/// Lists the package with `dpkg-deb -c` and checks that every expected path is in it and the
/// config is private.
pub fn inspect(deb: &Path) -> Result<String> {
    let listing = cmd::output(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let missing: Vec<&str> = INSTALLED
        .iter()
        .copied()
        .filter(|path| !listing.lines().any(|line| line.ends_with(path)))
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {}", deb.display(), missing.join(", "));
    }
    let config_line = listing
        .lines()
        .find(|l| l.ends_with("./etc/proxyguard/proxyguard.toml"))
        .unwrap_or_default();
    if !config_line.starts_with("-rw-------") || !config_line.contains("root/root") {
        bail!("the packaged config must be root-owned 0600: {config_line}");
    }
    let conffiles = cmd::output(
        Command::new("dpkg-deb")
            .args(["--info"])
            .arg(deb)
            .arg("conffiles"),
    )?;
    if conffiles.trim() != "/etc/proxyguard/proxyguard.toml" {
        bail!("the config must be a conffile (kept across upgrades); conffiles says: {conffiles}");
    }
    Ok(format!(
        "{} files, config 0600 root/root",
        listing.lines().count()
    ))
}

fn generate(binary: &Path, args: &[&str]) -> Result<String> {
    cmd::output(Command::new(binary).args(args))
        .with_context(|| format!("proxyguard {}", args.join(" ")))
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::create_dir_all(path.parent().expect("path has a parent"))?;
    fs::write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(to.parent().expect("path has a parent"))?;
    fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn control(version: &str) -> String {
    format!(
        "Package: proxyguard\nVersion: {version}\nArchitecture: amd64\nMaintainer: proxyguard developers <dev@proxyguard.invalid>\n\
         Section: net\nPriority: optional\nDepends: libc6 (>= 2.36)\n\
         Description: host-level guard for LLM proxies\n proxyguard puts kernel rules (eBPF: XDP connection limits, bind rules, an egress\n allow-list, environ-read detection) and an authenticating L7 proxy in front of an\n LLM proxy such as LiteLLM.\n"
    )
}

/// On configure: reload the units, drop a purge stash left by an earlier removal, and on an
/// upgrade (`$2` is the version configured before) restart the running service on the new
/// binary. The new daemon replaces the pinned programs in place, so enforcement never lapses; a
/// stopped service stays stopped (`try-restart`), and a first install starts nothing
/// (`systemctl enable --now proxyguard` is the operator's call).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    rm -rf /var/lib/proxyguard/purge
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        if [ -n "$2" ]; then
            systemctl try-restart proxyguard.service || true
        fi
    fi
fi
"#;

/// Stops the service on removal, never on upgrade (`$1` is `upgrade` then: the daemon keeps
/// running until postinst restarts it on the new binary). Pinned kernel state stays after a
/// removal, so removing the package never silently drops enforcement; the binary and the config
/// are kept aside in `/var/lib/proxyguard/purge` for a later purge.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop proxyguard.service || true
    fi
    mkdir -p -m 0700 /var/lib/proxyguard/purge
    cp /usr/bin/proxyguard /var/lib/proxyguard/purge/proxyguard
    if [ -f /etc/proxyguard/proxyguard.toml ]; then
        cp -p /etc/proxyguard/proxyguard.toml /var/lib/proxyguard/purge/proxyguard.toml
    fi
fi
"#;

/// On purge: `proxyguard run --detach-kernel` with the config the daemon ran on (from the stash:
/// dpkg has removed the binary and the conffile by now), which detaches the kernel programs and
/// removes their pins; then the stash and the unit's enablement go.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = purge ]; then
    stash=/var/lib/proxyguard/purge
    if [ -x "$stash/proxyguard" ]; then
        config="$stash/proxyguard.toml"
        [ -f "$config" ] || config=/etc/proxyguard/proxyguard.toml
        "$stash/proxyguard" run --detach-kernel --config "$config" >/dev/null ||
            echo "proxyguard: the kernel programs were not detached; remove the pin directory (default /sys/fs/bpf/proxyguard) by hand" >&2
    fi
    rm -rf "$stash"
    rmdir /var/lib/proxyguard 2>/dev/null || true
    rm -f /etc/systemd/system/multi-user.target.wants/proxyguard.service
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintainer_scripts_are_valid_sh() {
        for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
            let out = Command::new("sh")
                .args(["-n", "-c", script])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn the_shared_files_exist_and_are_listed() {
        for (source, path) in SHARED {
            assert!(
                cmd::workspace_root().join(source).is_file(),
                "{source} is missing from the repository"
            );
            assert!(
                INSTALLED.contains(&format!("./{path}").as_str()),
                "{path} is installed but not in INSTALLED, so `inspect` would not check it"
            );
        }
        let shared = INSTALLED
            .iter()
            .filter(|p| p.starts_with("./usr/share/proxyguard/"))
            .count();
        assert_eq!(
            shared,
            SHARED.len(),
            "every /usr/share/proxyguard file comes from SHARED"
        );
    }

    #[test]
    fn an_upgrade_restarts_and_only_a_purge_detaches() {
        // prerm stops the service for `remove` alone; `upgrade` leaves it running.
        assert!(PRERM.contains("if [ \"$1\" = remove ]; then"));
        assert_eq!(PRERM.matches("systemctl stop").count(), 1);
        // postinst restarts a running service when there was an earlier version.
        assert!(POSTINST.contains("if [ -n \"$2\" ]; then\n            systemctl try-restart"));
        assert!(!POSTINST.contains("detach-kernel") && !PRERM.contains("detach-kernel"));
        assert!(POSTRM.contains("if [ \"$1\" = purge ]; then"));
        assert!(POSTRM.contains("run --detach-kernel --config \"$config\""));
    }
}
