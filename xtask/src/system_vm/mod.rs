//! `cargo xtask system-vm`: the operator's journey on a real Debian 12 with systemd as PID 1.
//!
//! The busybox VM (`vm.rs`) proves the kernel half; this one proves the product as operators run
//! it: the `.deb` installed with apt, the shipped unit started by systemd inside its own sandbox,
//! reloads, crashes, the watchdog, the exposure score online, a guarded service under the
//! `systemd harden` drop-in, an upgrade while a loop tries the forbidden bind, and removal.
//!
//! The README's install section is not restated here: its `<!-- system-vm: NAME -->` blocks are
//! cut out of README.md and run in the guest as they stand, so the README cannot drift from what
//! is tested. Each step of `journey.sh` prints one result line; the host counts them.

mod image;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc::RecvTimeoutError,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{build, cmd, counts::Counts, qemu};

/// A passed step: `PGSYS ok NAME: detail`; a failed one: `PGSYS FAIL NAME: detail`.
const RESULT_MARK: &str = "PGSYS ";
/// The journey's last line: `PGSYS-END passed=N failed=M`.
const END_SENTINEL: &str = "PGSYS-END";

/// The README blocks the journey runs, by name, in the order an operator meets them.
pub const README_BLOCKS: &[&str] = &["install", "harden", "upgrade", "remove"];

const JOURNEY: &str = include_str!("journey.sh");
const UPSTREAM: &str = include_str!("upstream.py");
const BIND_LOOP: &str = include_str!("bind_loop.py");

/// How long the guest may take to power off after its last result line.
const POWEROFF_GRACE: Duration = Duration::from_secs(120);

const KERNEL_ARGS: &str = "root=/dev/vda rw console=ttyS0 quiet panic=-1 systemd.show_status=0 \
     lsm=lockdown,capability,landlock,yama,apparmor,bpf";

/// The two packages of one run: what the operator installs first, and the upgrade to it (a build
/// whose kernel object differs).
pub struct Packages {
    pub first: PathBuf,
    pub upgrade: PathBuf,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub counts: Counts,
    pub problem: Option<String>,
    pub boot_to_result: Duration,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.problem.is_none() && self.counts.failed == 0 && self.counts.passed > 0
    }

    pub fn into_result(self) -> Result<()> {
        if self.ok() {
            Ok(())
        } else {
            bail!("system-vm failed")
        }
    }
}

/// The package as `cargo xtask deb` builds it, and an upgrade to it.
pub fn packages() -> Result<Packages> {
    let first = crate::deb::run()?;
    // The same sources with a stamp in the kernel object: an upgrade that must replace the
    // pinned programs, as a release with changed programs would.
    let upgrade = crate::deb::run_with(Some("upgrade"))?;
    Ok(Packages { first, upgrade })
}

pub fn run(packages: &Packages, timeout: Duration) -> Result<Summary> {
    let image = image::cached()?;
    let dir = build::target_dir().join("system-vm");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let payload = payload(&dir, packages)?;
    println!(
        "system-vm: booting Debian {} with systemd; journey of {} steps",
        image.vmlinuz.display(),
        journey_steps()
    );
    let summary = boot(&image, &payload, timeout)?;
    println!(
        "system-vm: boot to result {:.1}s; {} passed, {} failed",
        summary.boot_to_result.as_secs_f64(),
        summary.counts.passed,
        summary.counts.failed
    );
    if let Some(problem) = &summary.problem {
        println!("system-vm: {problem}");
    }
    Ok(summary)
}

/// The second disk: the journey, its helpers, the README blocks and both packages.
fn payload(dir: &Path, packages: &Packages) -> Result<PathBuf> {
    let root = dir.join("payload");
    fs::create_dir_all(root.join("readme"))?;
    write_exec(&root.join("journey.sh"), JOURNEY)?;
    write_exec(&root.join("upstream.py"), UPSTREAM)?;
    write_exec(&root.join("bind_loop.py"), BIND_LOOP)?;
    let readme = fs::read_to_string(cmd::workspace_root().join("README.md"))?;
    let blocks = readme_blocks(&readme)?;
    for name in README_BLOCKS {
        let block = blocks
            .get(*name)
            .with_context(|| format!("README.md has no `<!-- system-vm: {name} -->` block"))?;
        write_exec(&root.join("readme").join(format!("{name}.sh")), block)?;
    }
    let mut bytes = 0;
    for (sub, deb) in [("first", &packages.first), ("upgrade", &packages.upgrade)] {
        let to = root.join("debs").join(sub);
        fs::create_dir_all(&to)?;
        let name = deb.file_name().context("a package path names no file")?;
        fs::copy(deb, to.join(name)).with_context(|| format!("copying {}", deb.display()))?;
        bytes += fs::metadata(deb)?.len();
    }
    let image = dir.join("payload.img");
    let size_mib = bytes / (1 << 20) * 2 + 32;
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "pgpayload", "-d"])
            .arg(&root)
            .arg(&image)
            .arg(format!("{size_mib}M")),
    )?;
    Ok(image)
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The fenced `sh` blocks that follow a `<!-- system-vm: NAME -->` line, by name.
pub fn readme_blocks(readme: &str) -> Result<BTreeMap<String, String>> {
    let mut blocks = BTreeMap::new();
    let mut lines = readme.lines().enumerate();
    while let Some((at, line)) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- system-vm:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let name = name.trim().to_owned();
        let opening = lines.next().map(|(_, l)| l.trim().to_owned());
        if opening.as_deref() != Some("```sh") {
            bail!(
                "README.md line {}: the system-vm block `{name}` must be followed by a ```sh fence",
                at + 1
            );
        }
        let mut body = String::new();
        let mut closed = false;
        for (_, line) in lines.by_ref() {
            if line.trim() == "```" {
                closed = true;
                break;
            }
            body.push_str(line.trim_start());
            body.push('\n');
        }
        if !closed {
            bail!(
                "README.md line {}: the system-vm block `{name}` is never closed",
                at + 1
            );
        }
        if blocks.insert(name.clone(), body).is_some() {
            bail!(
                "README.md line {}: a second system-vm block `{name}`",
                at + 1
            );
        }
    }
    Ok(blocks)
}

/// The steps the journey runs (`step NAME ...` lines in journey.sh).
fn journey_steps() -> usize {
    JOURNEY
        .lines()
        .filter(|l| l.trim_start().starts_with("step "))
        .count()
}

fn boot(image: &image::Image, payload: &Path, timeout: Duration) -> Result<Summary> {
    let started = Instant::now();
    let (mut child, rx) = qemu::spawn(
        qemu::command()
            .arg("-kernel")
            .arg(&image.vmlinuz)
            .arg("-initrd")
            .arg(&image.initrd)
            .arg("-drive")
            // The cached image is never written: the guest's writes go to a temporary overlay.
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                image.disk.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                payload.display()
            ))
            .args(["-append", KERNEL_ARGS]),
    )?;

    let mut summary = Summary::default();
    let mut deadline = started + timeout;
    let mut ended = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                println!("{line}");
                // Console lines can carry kernel or systemd text in front of ours.
                if let Some(at) = line.find(END_SENTINEL) {
                    summary.boot_to_result = started.elapsed();
                    ended = true;
                    // The guest powers itself off next; a guest that does not is ended below.
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    let reported = parse_end(&line[at..]);
                    if reported != Some((summary.counts.passed, summary.counts.failed)) {
                        summary.problem = Some(format!(
                            "the journey's own count ({}) differs from the result lines seen ({} passed, {} failed)",
                            &line[at..],
                            summary.counts.passed,
                            summary.counts.failed
                        ));
                    }
                } else if let Some(at) = line.find(RESULT_MARK) {
                    let rest = &line[at + RESULT_MARK.len()..];
                    if rest.starts_with("ok ") {
                        summary.counts.passed += 1;
                    } else if rest.starts_with("FAIL ") {
                        summary.counts.failed += 1;
                    }
                } else if line.contains("Kernel panic") {
                    summary.problem = Some(format!("kernel panic: {line}"));
                    break;
                }
            }
            Err(RecvTimeoutError::Timeout) if ended => break,
            Err(RecvTimeoutError::Timeout) => {
                summary.problem = Some(format!("timed out after {}s", timeout.as_secs()));
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    // Ends QEMU if it is still up: after a problem, or a guest that did not power off in time.
    let _ = child.kill();
    let _ = child.wait();
    if summary.problem.is_none() && !ended {
        summary.problem = Some("the guest stopped before the end sentinel".into());
    }
    let expected = journey_steps() as u64;
    let seen = summary.counts.passed + summary.counts.failed;
    if summary.problem.is_none() && seen != expected {
        summary.problem = Some(format!("{seen} of {expected} journey steps reported"));
    }
    Ok(summary)
}

/// `PGSYS-END passed=N failed=M` → (N, M).
fn parse_end(line: &str) -> Option<(u64, u64)> {
    let mut passed = None;
    let mut failed = None;
    for word in line.split_whitespace() {
        if let Some(n) = word.strip_prefix("passed=") {
            passed = n.parse().ok();
        } else if let Some(n) = word.strip_prefix("failed=") {
            failed = n.parse().ok();
        }
    }
    Some((passed?, failed?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_has_every_block_the_journey_runs() {
        let readme = fs::read_to_string(cmd::workspace_root().join("README.md")).unwrap();
        let blocks = readme_blocks(&readme).unwrap();
        for name in README_BLOCKS {
            let block = blocks
                .get(*name)
                .unwrap_or_else(|| panic!("no block {name}"));
            assert!(!block.trim().is_empty(), "block {name} is empty");
        }
        for name in blocks.keys() {
            assert!(
                README_BLOCKS.contains(&name.as_str()),
                "README block {name} is not run by the journey"
            );
        }
    }

    #[test]
    fn blocks_are_cut_at_their_fences() {
        let text = "intro\n<!-- system-vm: one -->\n```sh\n  echo a\necho b\n```\nafter\n";
        let blocks = readme_blocks(text).unwrap();
        assert_eq!(blocks["one"], "echo a\necho b\n");
        assert!(readme_blocks("<!-- system-vm: x -->\ntext\n").is_err());
        assert!(readme_blocks("<!-- system-vm: x -->\n```sh\necho\n").is_err());
    }

    #[test]
    fn every_journey_step_is_counted() {
        assert!(journey_steps() >= 10, "{}", journey_steps());
        assert_eq!(parse_end("PGSYS-END passed=9 failed=1"), Some((9, 1)));
        assert_eq!(parse_end("PGSYS-END"), None);
    }
}
