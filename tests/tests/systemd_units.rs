//! The shipped unit and the hardening drop-in, checked by systemd itself: `systemd-analyze verify`
//! accepts both without a warning about our files, and the unit's exposure score stays ≤ 4.0.

use std::{path::Path, process::Command};

use proxyguard_tests::proxyguard_bin;

fn proxyguard(args: &[&str]) -> String {
    let out = Command::new(proxyguard_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `systemd-analyze verify` on `unit` with `dir` as the unit path; returns its stderr.
fn verify(dir: &Path, unit: &str) -> String {
    let out = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(dir.join(unit))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_4() {
    let dir = tempfile::tempdir().unwrap();
    let exec = proxyguard_bin().display().to_string();
    let unit = proxyguard(&[
        "systemd",
        "unit",
        "--exec",
        &exec,
        "--config",
        "/etc/proxyguard/proxyguard.toml",
    ]);
    std::fs::write(dir.path().join("proxyguard.service"), &unit).unwrap();
    let warnings = verify(dir.path(), "proxyguard.service");
    assert!(!warnings.contains("proxyguard.service:"), "{warnings}");

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(dir.path().join("proxyguard.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for proxyguard.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    eprintln!("proxyguard.service exposure: {score}");
    assert!(score <= 4.0, "exposure {score} > 4.0");
}

#[test]
fn the_drop_in_verifies_against_a_real_unit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("litellm.service"),
        "[Unit]\nDescription=LiteLLM\n[Service]\nExecStart=/bin/sleep 60\n",
    )
    .unwrap();
    let dropins = dir.path().join("litellm.service.d");
    std::fs::create_dir(&dropins).unwrap();
    let config = dir.path().join("proxyguard.toml");
    std::fs::write(
        &config,
        "[egress]\nallow = [\"10.20.0.0/16:5432\"]\ndns = [\"192.0.2.53\"]\n",
    )
    .unwrap();
    let dropin = proxyguard(&[
        "systemd",
        "harden",
        "litellm.service",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(
        dropin.contains("IPAddressAllow=localhost 10.20.0.0/16 192.0.2.53"),
        "{dropin}"
    );
    std::fs::write(dropins.join("proxyguard.conf"), &dropin).unwrap();
    let warnings = verify(dir.path(), "litellm.service");
    assert!(!warnings.contains("proxyguard.conf"), "{warnings}");

    // The check has teeth: a broken copy of the drop-in is reported.
    std::fs::write(
        dropins.join("proxyguard.conf"),
        dropin.replace("PrivateTmp=yes", "PrivateTmp=bogus"),
    )
    .unwrap();
    let warnings = verify(dir.path(), "litellm.service");
    assert!(
        warnings.contains("proxyguard.conf"),
        "a broken drop-in went unnoticed: {warnings}"
    );
}
