//! The L7 tests' Python peers, pinned: LiteLLM's proxy and the openai SDK at the exact versions
//! (and hashes) of `tests/py/requirements.txt`, in the venv the tests use; agent-lightning 0.3.0
//! and 1.0.2 (`tests/py/agl/v*/requirements.txt`, on Python 3.12) in a venv each; and `cargo xtask peers
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

/// A venv built from one hashed requirements file: where its pins are, where the tests find it (a
/// symlink, switched in one rename), the interpreter it is made with, and what must import.
struct Pinned {
    /// The requirements file, relative to the workspace root.
    requirements: &'static str,
    /// The path the tests use (`PROXYGUARD_VENV` and the like).
    link: PathBuf,
    /// Builds live at `venvs/<prefix><hash of the requirements>`.
    prefix: &'static str,
    python: Python,
    /// An executable the venv must have, and a Python statement that must run in it.
    executable: &'static str,
    import: &'static str,
}

/// The interpreter a venv is made with.
#[derive(Clone, Copy)]
enum Python {
    /// `python3` on PATH (3.9 or newer): the main venv, whose pins cover several versions.
    System,
    /// Python 3.12 exactly: the agent-lightning pins hash CPython 3.12's wheels (1.0.2 needs 3.12).
    Py312,
}

impl Python {
    fn find(self) -> Result<PathBuf> {
        match self {
            Python::System => Ok(PathBuf::from("python3")),
            Python::Py312 => python312(),
        }
    }
}

/// Python 3.12 (the newest 3.12.x): pyenv's (`pyenv root`, else ~/.pyenv), else `python3.12` on PATH.
fn python312() -> Result<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(root) = cmd::output(Command::new("pyenv").arg("root")) {
        roots.push(PathBuf::from(root.trim()));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".pyenv"));
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = roots
        .iter()
        .filter_map(|root| fs::read_dir(root.join("versions")).ok())
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let rest = name.strip_prefix("3.12.")?;
            let patch: u32 = rest.parse().ok()?;
            let python = entry.path().join("bin/python");
            python.is_file().then_some((vec![12, patch], python))
        })
        .collect();
    found.sort();
    if let Some((_, python)) = found.pop() {
        return Ok(python);
    }
    let on_path = Command::new("python3.12")
        .args(["-c", "import sys, venv; print(sys.version_info[:2])"])
        .output();
    if on_path.is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"(3, 12)")) {
        return Ok(PathBuf::from("python3.12"));
    }
    bail!(
        "agent-lightning's test venvs need Python 3.12 (1.0.2 requires it, and their pins hash \
         CPython 3.12's wheels); none found under `pyenv root`/versions/3.12.*, ~/.pyenv/versions/3.12.* \
         or as python3.12 on PATH. Install it with `pyenv install 3.12` (or \
         `apt-get install python3.12-venv` where the distribution ships it), then rerun `cargo xtask setup`"
    )
}

fn main_venv() -> Pinned {
    Pinned {
        requirements: REQUIREMENTS,
        link: venv_dir(),
        prefix: "",
        python: Python::System,
        executable: "bin/litellm",
        // Offline: LiteLLM otherwise fetches its model price map on import.
        import: "import litellm.proxy, openai",
    }
}

/// agent-lightning 0.3.0's venv (`PROXYGUARD_AGL03_VENV`): its LLMProxy, on LiteLLM 1.108.7.
pub fn agl03_venv_dir() -> PathBuf {
    cache_dir().join("venv-agl-0.3")
}

/// agent-lightning 1.0.2's venv (`PROXYGUARD_AGL10_VENV`): `agl-server`, on Python 3.12.
pub fn agl10_venv_dir() -> PathBuf {
    cache_dir().join("venv-agl-1.0")
}

fn agl_venvs() -> [Pinned; 2] {
    [
        Pinned {
            requirements: "tests/py/agl/v0.3/requirements.txt",
            link: agl03_venv_dir(),
            prefix: "agl-0.3-",
            python: Python::Py312,
            executable: "bin/agl",
            import: "import agentlightning, litellm.proxy, openai",
        },
        Pinned {
            requirements: "tests/py/agl/v1.0/requirements.txt",
            link: agl10_venv_dir(),
            prefix: "agl-1.0-",
            python: Python::Py312,
            executable: "bin/agl-server",
            import: "import agentlightning.server.app, openai",
        },
    ]
}

/// Whether the venv's peers import (offline).
fn imports(dir: &Path, spec: &Pinned) -> bool {
    dir.join(spec.executable).is_file()
        && cmd::succeeds(
            Command::new(dir.join("bin/python"))
                .args(["-c", spec.import])
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        )
}

/// Setup's step: every test venv holds exactly its pins. A no-op (one `pip freeze` each) when
/// they do.
pub fn ensure_pinned() -> Result<()> {
    ensure(&main_venv())?;
    for spec in agl_venvs() {
        ensure(&spec)?;
    }
    Ok(())
}

fn ensure(spec: &Pinned) -> Result<()> {
    let path = cmd::workspace_root().join(spec.requirements);
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let want = pins(&text);
    let venv = &spec.link;
    let hash = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
    // A venv that was built (or checked) from exactly this file says so: the warm path reads one
    // file instead of importing LiteLLM and agent-lightning (ten seconds of CPU each).
    if fs::read_to_string(venv.join(STAMP)).is_ok_and(|stamp| stamp.trim() == hash) {
        return Ok(());
    }
    let missing = unmet(&want, &installed(venv));
    if missing.is_empty() && imports(venv, spec) {
        return stamp(venv, &hash);
    }
    let build = cache_dir()
        .join("venvs")
        .join(format!("{}{hash}", spec.prefix));
    if !(unmet(&want, &installed(&build)).is_empty() && imports(&build, spec)) {
        println!(
            "setup: the venv at {} does not hold the pins of {} ({}); building {} (a few minutes)",
            venv.display(),
            spec.requirements,
            missing
                .first()
                .map_or("the peers do not import", String::as_str),
            build.display()
        );
        // A half-built venv of the same hash is ours alone (no test points at it yet).
        let _ = fs::remove_dir_all(&build);
        create_venv(&spec.python.find()?, &build)?;
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
        if !left.is_empty() || !imports(&build, spec) {
            bail!(
                "{} was installed but does not hold the pins: {left:?}",
                build.display()
            );
        }
        stamp(&build, &hash)?;
    }
    // Where a real directory at the link (an older layout) is kept: `replaced`, `replaced-agl-0.3`.
    let kept = match spec.prefix.trim_end_matches('-') {
        "" => "replaced".to_owned(),
        name => format!("replaced-{name}"),
    };
    switch(venv, &build, &cache_dir().join("venvs").join(kept))
}

/// The file in a venv naming the hash of the requirements it was built from and checked against.
const STAMP: &str = ".proxyguard-pins";

fn stamp(venv: &Path, hash: &str) -> Result<()> {
    fs::write(venv.join(STAMP), format!("{hash}\n"))
        .with_context(|| format!("writing {}", venv.join(STAMP).display()))
}

fn create_venv(python: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.parent().expect("a venv has a parent"))?;
    cmd::run(Command::new(python).arg("-m").arg("venv").arg(dir)).with_context(|| {
        format!(
            "cannot create a venv at {} with {}; it needs Python with venv (`apt-get install python3-venv`)",
            dir.display(),
            python.display()
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
        create_venv(Path::new("python3"), &dir)?;
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
    fn the_agent_lightning_pins_are_hashed_and_share_the_main_venvs_litellm_and_openai() {
        let main = pins(&requirements().unwrap().1);
        for (spec, agl) in agl_venvs().iter().zip(["0.3.0", "1.0.2"]) {
            let text = fs::read_to_string(cmd::workspace_root().join(spec.requirements)).unwrap();
            let pinned = pins(&text);
            assert_eq!(pinned["agentlightning"], agl, "{}", spec.requirements);
            assert_eq!(pinned["openai"], main["openai"], "{}", spec.requirements);
            if let Some(litellm) = pinned.get("litellm") {
                assert_eq!(litellm, &main["litellm"], "{}", spec.requirements);
            }
            let unhashed = text
                .lines()
                .filter(|line| line.contains("==") && !line.starts_with([' ', '#']))
                .filter(|line| !line.trim_end().ends_with('\\'))
                .count();
            assert_eq!(unhashed, 0, "{}", spec.requirements);
        }
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
