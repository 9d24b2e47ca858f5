//! The L7 tests' Python peers, pinned: LiteLLM's proxy and the openai SDK at the exact versions
//! (and hashes) of `tests/py/requirements.txt`, in the venv the tests use; and `cargo xtask peers
//! --latest`, which runs the L7 tests against today's releases in a venv of their own and says
//! what differs, so that moving a pin is a deliberate commit.
//!
//! The pinned venv is never rebuilt in place: other test runs may be using it. When it does not
//! hold the pins, a new one is built at `venvs/<hash of the requirements>` and `venv` is switched
//! to it in one rename (a symlink; a real directory there is swapped out whole, not deleted).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::{cmd, counts::Scanner, setup::cache_dir};

/// The pins, relative to the workspace root.
const REQUIREMENTS: &str = "tests/py/requirements.txt";

/// Today's releases of the same two peers, for `--latest`.
const LATEST: &[&str] = &["litellm[proxy]", "openai"];

/// The venv the L7 tests use (`PROXYGUARD_VENV`); a symlink to the pinned build once switched.
pub fn venv_dir() -> PathBuf {
    cache_dir().join("venv")
}

fn requirements() -> Result<(PathBuf, String)> {
    let path = cmd::workspace_root().join(REQUIREMENTS);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, text))
}

/// Package names (normalised as pip does: lower case, `_` and `.` as `-`) and versions.
type Versions = BTreeMap<String, String>;

fn normalise(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace(['_', '.'], "-")
}

/// The `name==version` pins of a requirements file (hashes, comments and options skipped).
fn pins(text: &str) -> Versions {
    text.lines()
        .filter(|line| !line.starts_with([' ', '#', '-']))
        .filter_map(|line| {
            let (name, rest) = line.split_once("==")?;
            let version = rest.split([' ', ';', '\\']).next()?.trim();
            let name = name.split('[').next()?;
            Some((normalise(name), version.to_owned()))
        })
        .collect()
}

/// What the venv at `dir` has installed (`pip freeze`), or nothing if it is not a working venv.
fn installed(dir: &Path) -> Versions {
    let out = Command::new(dir.join("bin/python"))
        .args(["-m", "pip", "freeze", "--disable-pip-version-check"])
        .output();
    match out {
        Ok(out) if out.status.success() => pins(&String::from_utf8_lossy(&out.stdout)),
        _ => Versions::new(),
    }
}

/// The pins `have` does not meet, as `name: wanted (have)` lines.
fn unmet(want: &Versions, have: &Versions) -> Vec<String> {
    want.iter()
        .filter(|(name, version)| have.get(*name) != Some(*version))
        .map(|(name, version)| {
            let found = have.get(name).map_or("missing", String::as_str);
            format!("{name}: {version} pinned, {found} installed")
        })
        .collect()
}

/// Whether the peers import (offline: LiteLLM otherwise fetches its model price map on import).
fn imports(dir: &Path) -> bool {
    dir.join("bin/litellm").is_file()
        && cmd::succeeds(
            Command::new(dir.join("bin/python"))
                .args(["-c", "import litellm.proxy, openai"])
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        )
}

/// Setup's step: the tests' venv holds exactly the pins. A no-op (one `pip freeze`) when it does.
pub fn ensure_pinned() -> Result<()> {
    let (path, text) = requirements()?;
    let want = pins(&text);
    let venv = venv_dir();
    let missing = unmet(&want, &installed(&venv));
    if missing.is_empty() && imports(&venv) {
        return Ok(());
    }
    let hash = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    let build = cache_dir().join("venvs").join(&hash);
    if !(unmet(&want, &installed(&build)).is_empty() && imports(&build)) {
        println!(
            "setup: the venv at {} does not hold the pins of {} ({}); building {} (a few minutes)",
            venv.display(),
            REQUIREMENTS,
            missing
                .first()
                .map_or("the peers do not import", String::as_str),
            build.display()
        );
        // A half-built venv of the same hash is ours alone (no test points at it yet).
        let _ = fs::remove_dir_all(&build);
        create_venv(&build)?;
        cmd::run(
            Command::new(build.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "-r",
                ])
                .arg(&path),
        )
        .with_context(|| {
            format!(
                "cannot install {}; it needs PyPI (or a mirror in pip's config)",
                path.display()
            )
        })?;
        let left = unmet(&want, &installed(&build));
        if !left.is_empty() || !imports(&build) {
            bail!(
                "{} was installed but does not hold the pins: {left:?}",
                build.display()
            );
        }
    }
    switch(&venv, &build, &cache_dir().join("venvs").join("replaced"))
}

fn create_venv(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.parent().expect("a venv has a parent"))?;
    cmd::run(Command::new("python3").arg("-m").arg("venv").arg(dir)).with_context(|| {
        format!(
            "cannot create a venv at {}; it needs python3 (3.9 or newer) with venv (`apt-get install python3-venv`)",
            dir.display()
        )
    })
}

/// Points `link` at `target` in one step, so a test starting now sees the old venv or the new,
/// never neither. A real directory at `link` (an older layout) is exchanged with the new link and
/// kept beside the builds, not deleted: a running test may still use it.
fn switch(link: &Path, target: &Path, kept: &Path) -> Result<()> {
    let staged = link.with_extension("switch");
    let _ = fs::remove_file(&staged);
    std::os::unix::fs::symlink(target, &staged)
        .with_context(|| format!("linking {}", staged.display()))?;
    let is_dir = fs::symlink_metadata(link).is_ok_and(|m| m.is_dir());
    if is_dir {
        nix::fcntl::renameat2(
            None,
            &staged,
            None,
            link,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .with_context(|| format!("exchanging {} for the new venv", link.display()))?;
        // One generation back is kept; the one before it has had a whole setup run to finish.
        let _ = fs::remove_dir_all(kept.with_extension("old"));
        if kept.exists() {
            fs::rename(kept, kept.with_extension("old"))?;
        }
        fs::rename(&staged, kept)?;
        println!("setup: the previous venv is kept at {}", kept.display());
    } else {
        fs::rename(&staged, link).with_context(|| format!("switching {}", link.display()))?;
    }
    println!(
        "setup: {} now points at {}",
        link.display(),
        target.display()
    );
    Ok(())
}

/// `cargo xtask peers --latest`: today's releases in `venv-latest`, the L7 tests against them,
/// and a report of what differs from the pins. The pinned venv is not touched.
pub fn latest() -> Result<()> {
    let (_, text) = requirements()?;
    let want = pins(&text);
    let dir = cache_dir().join("venv-latest");
    if !dir.join("bin/python").is_file() {
        create_venv(&dir)?;
    }
    println!(
        "peers: installing today's {} into {}",
        LATEST.join(" "),
        dir.display()
    );
    cmd::run(
        Command::new(dir.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--upgrade",
            ])
            .args(LATEST),
    )?;
    let have = installed(&dir);
    let moved = unmet(&want, &have);
    // The L7 tests run the proxyguard binary next to them.
    crate::build::workspace(false)?;
    let mut scanner = Scanner::default();
    let mut test = cmd::cargo();
    test.args(["test", "-p", "proxyguard-tests"]);
    for name in l7_tests()? {
        test.args(["--test", &name]);
    }
    let success = cmd::stream(
        test.args(["--", "--test-threads=1"])
            .env("PROXYGUARD_VENV", &dir),
        |line| scanner.scan(line),
    )?;
    let counts = scanner.counts();
    println!();
    for top in ["litellm", "openai"] {
        println!(
            "peers: {top} pinned {}, latest {}",
            want.get(top).map_or("-", String::as_str),
            have.get(top).map_or("-", String::as_str)
        );
    }
    println!(
        "peers: {} of {} pinned packages differ today",
        moved.len(),
        want.len()
    );
    for line in &moved {
        println!("peers:   {line}");
    }
    println!(
        "peers: L7 tests against today's releases: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.skipped
    );
    if !success || counts.failed > 0 {
        bail!("the L7 tests fail against today's releases: keep the pins, or fix the guard first");
    }
    if !moved.is_empty() {
        println!("peers: to move the pins, regenerate {REQUIREMENTS} as its header says");
    }
    Ok(())
}

/// The L7 end-to-end test targets (`tests/tests/l7_*.rs`).
fn l7_tests() -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(cmd::workspace_root().join("tests/tests"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some(name.strip_suffix(".rs")?.to_owned()))
        .filter(|name| name.starts_with("l7_"))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_from_the_requirements_file() {
        let pins = pins(
            "# header\n--find-links x\nLiteLLM==1.108.7 \\\n    --hash=sha256:ab \\\n    --hash=sha256:cd\n    # via -r requirements.in\n\
             typing_extensions==4.12.2 ; python_version < \"3.12\" \\\n    --hash=sha256:ef\n",
        );
        assert_eq!(pins.len(), 2, "{pins:?}");
        assert_eq!(pins["litellm"], "1.108.7");
        assert_eq!(pins["typing-extensions"], "4.12.2");
    }

    #[test]
    fn the_committed_requirements_pin_both_peers_with_hashes() {
        let (_, text) = requirements().unwrap();
        let pins = pins(&text);
        assert!(
            pins.contains_key("litellm") && pins.contains_key("openai"),
            "{pins:?}"
        );
        // --require-hashes refuses a pin without one: every pin line continues with a hash.
        let unhashed: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("==") && !line.starts_with([' ', '#']))
            .filter(|line| !line.trim_end().ends_with('\\'))
            .collect();
        assert!(unhashed.is_empty(), "{unhashed:?}");
    }

    #[test]
    fn the_switch_replaces_a_link_or_swaps_out_a_directory_without_deleting_it() {
        let dir = tempfile_dir();
        let (link, kept) = (dir.join("venv"), dir.join("replaced"));
        let (one, two) = (dir.join("one"), dir.join("two"));
        for venv in [&one, &two] {
            fs::create_dir_all(venv).unwrap();
        }
        // An older layout: a real venv directory, with a file a running test may be using.
        fs::create_dir(&link).unwrap();
        fs::write(link.join("in-use"), "x").unwrap();
        switch(&link, &one, &kept).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), one);
        assert_eq!(fs::read_to_string(kept.join("in-use")).unwrap(), "x");
        // A link is replaced in one rename.
        switch(&link, &two, &kept).unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), two);
        assert!(one.is_dir() && kept.join("in-use").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-peers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn unmet_pins_name_what_is_installed() {
        let want = pins("a==1\nb==2\n");
        let have = pins("a==1\nb==3\nc==9\n");
        assert_eq!(unmet(&want, &have), ["b: 2 pinned, 3 installed"]);
        assert_eq!(unmet(&want, &Versions::new()).len(), 2);
    }
}
