//! Builds the VM's initramfs: busybox, an init script, the binaries under test with the shared
//! libraries they load, and the kernel modules the tests need; packed as newc cpio.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Printed by the guest's init after the last test binary; the host waits for it.
pub const END_SENTINEL: &str = "PGVM-END";
/// Printed by the guest's init after each test binary: `PGVM-BIN <name> rc=<status>`.
pub const BIN_MARK: &str = "PGVM-BIN";

pub struct Contents<'a> {
    pub proxyguard: &'a Path,
    pub tests: &'a [(String, PathBuf)],
    pub modules: &'a [PathBuf],
    /// Whether the tests run their timed loops at full length (`PROXYGUARD_BENCHES=1`).
    pub benches: bool,
}

/// Stages `contents` under `dir/root` and packs it to `dir/initramfs.cpio`.
pub fn build(dir: &Path, contents: &Contents<'_>) -> Result<PathBuf> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for sub in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "tests", "modules", "root",
    ] {
        fs::create_dir_all(root.join(sub))?;
    }

    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox is missing; run `cargo xtask setup` (it installs busybox-static)")?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    symlink("busybox", root.join("bin/sh"))?;

    let mut binaries = vec![root.join("bin/proxyguard")];
    strip_copy(contents.proxyguard, &binaries[0])?;
    // iproute2's `ip`, for `ip netns` and veth pairs (busybox's applet has neither); it goes
    // first on the guest's PATH.
    fs::create_dir_all(root.join("usr/sbin"))?;
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/bin/ip"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("iproute2's ip is missing; run `cargo xtask setup` (it installs iproute2)")?;
    fs::copy(ip, root.join("usr/sbin/ip"))?;
    binaries.push(root.join("usr/sbin/ip"));
    for (name, path) in contents.tests {
        let dest = root.join("tests").join(name);
        strip_copy(path, &dest)?;
        binaries.push(dest);
    }
    for lib in shared_libraries(&binaries)? {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(dest.parent().expect("library path has a parent"))?;
        fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    for module in contents.modules {
        fs::copy(
            module,
            root.join("modules")
                .join(module.file_name().expect("module file name")),
        )?;
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )?;
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    // No resolv.conf: host names resolve from /etc/hosts alone, as on an offline host.
    fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    let init = root.join("init");
    fs::write(&init, INIT)?;
    if contents.benches {
        fs::write(root.join("benches"), "")?;
    }
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let archive = dir.join("initramfs.cpio");
    let script = format!(
        "cd '{}' && find . -print0 | cpio --null -o -H newc --quiet > '{}'",
        root.display(),
        archive.display()
    );
    cmd::run(Command::new("sh").args(["-c", &script]))
        .context("packing the initramfs needs cpio; run `cargo xtask setup`")?;
    Ok(archive)
}

/// Copies without debug info: the initramfs is unpacked under TCG, where every megabyte counts.
fn strip_copy(from: &Path, to: &Path) -> Result<()> {
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(to),
    )
    .with_context(|| format!("stripping {}", from.display()))
}

/// Every library `ldd` resolves for `binaries`, the dynamic loader included.
fn shared_libraries(binaries: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for binary in binaries {
        let out = Command::new("ldd").arg(binary).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            continue;
        }
        for line in text.lines() {
            if line.contains("not found") {
                bail!(
                    "{}: a shared library is missing: {}",
                    binary.display(),
                    line.trim()
                );
            }
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(path) = path.filter(|p| p.starts_with('/')) {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

/// The guest's PID 1: mounts what the daemon and tests need, loads modules, runs each test binary
/// one test at a time, reports, and powers off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
for m in /modules/*.ko; do insmod "$m" || echo "PGVM-WARN cannot load $m"; done
echo "PGVM-KERNEL $(uname -r) lsm=$(cat /sys/kernel/security/lsm)"
export PROXYGUARD_BIN=/bin/proxyguard PROXYGUARD_IN_VM=1 RUST_BACKTRACE=1
if [ -e /benches ]; then export PROXYGUARD_BENCHES=1; fi
for t in /tests/*; do
    name=$(basename "$t")
    echo "PGVM-START $name"
    "$t" --test-threads=1
    echo "PGVM-BIN $name rc=$?"
done
echo "PGVM-END"
poweroff -f
"#;
