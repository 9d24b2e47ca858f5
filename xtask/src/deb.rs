//! `cargo xtask deb`: a Debian package of the release build: the binary, the hardened unit, the
//! default config (a conffile, so an edited copy survives upgrades) and shell completions.

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
];

/// Builds the release binary and the package; returns the .deb's path.
pub fn run() -> Result<PathBuf> {
    // The binary alone: release-building the test crates would only cost time.
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "proxyguard"]))?;
    let binary = build::target_dir().join("release/proxyguard");
    let root = build::target_dir().join("deb/root");
    let _ = fs::remove_dir_all(&root);
    let version = env!("CARGO_PKG_VERSION");

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

    let debian = root.join("DEBIAN");
    write(&debian.join("control"), &control(version), 0o644)?;
    write(
        &debian.join("conffiles"),
        "/etc/proxyguard/proxyguard.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;

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

const POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n    systemctl daemon-reload || true\nfi\n";

/// Stops the service on removal. Pinned kernel state stays until `proxyguard run --detach-kernel`,
/// so removing the package never silently drops enforcement.
const PRERM: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n    systemctl stop proxyguard.service || true\nfi\n";

/// TEMPORARY until the stamped build lands: the same package under a higher version.
pub fn upgrade_package(first: &Path) -> Result<PathBuf> {
    let work = build::target_dir().join("deb/upgrade");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let tree = work.join("tree");
    cmd::run(Command::new("dpkg-deb").arg("-R").arg(first).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = fs::read_to_string(&control)?;
    let version = env!("CARGO_PKG_VERSION");
    fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {version}+upgrade\n"),
        ),
    )?;
    let deb = work.join(format!("proxyguard_{version}+upgrade_amd64.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&tree)
            .arg(&deb),
    )?;
    Ok(deb)
}
