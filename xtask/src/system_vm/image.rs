//! The Debian 12 image with systemd as PID 1 that the system VM boots: built once from Debian's
//! packages with mmdebstrap, then cached under `~/.cache/proxyguard/system-vm/<key>`.
//!
//! The key hashes everything that goes into the image (suite, packages, the runner unit), so a
//! change to any of them builds a new image and an unchanged one is reused. The image itself is
//! never written: QEMU boots it with `snapshot=on`, and each run's payload (the `.deb`s and the
//! journey) comes on a second disk.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::{cmd, setup};

const SUITE: &str = "bookworm";

/// What the operator's host has: systemd as PID 1, and the tools the journey uses (python3 for
/// the guarded service and the bind loop, curl as the client). The kernel package (the pinned one,
/// see [`packages`]) brings its own initrd, which carries the virtio drivers the boot disk needs.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "python3",
    "curl",
    "procps",
    "kmod",
    "ca-certificates",
    "initramfs-tools",
];

/// [`PACKAGES`] plus the kernel: the same pinned version the busybox VM boots
/// ([`setup::VM_KERNEL_VERSION`]), so both VM stages move together, by a deliberate commit.
fn packages() -> Vec<String> {
    let mut all: Vec<String> = PACKAGES.iter().map(|p| (*p).to_owned()).collect();
    all.push(format!("linux-image-{}", setup::VM_KERNEL_VERSION));
    all
}

/// The unit that runs the journey from the payload disk once the system is up, on the serial
/// console, and powers the guest off when it ends, whatever its result.
pub const RUNNER_UNIT: &str = "[Unit]
Description=proxyguard operator journey (cargo xtask test)
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /payload && mount -o ro /dev/vdb /payload && exec /bin/bash /payload/journey.sh'
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=1800
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Install]
WantedBy=multi-user.target
";

/// Run inside the new root by mmdebstrap: enable the runner, and turn off what only slows a
/// TCG boot (timers that start apt, man-db and fstrim; the getty on the console the journey uses).
const CUSTOMIZE: &str = r#"set -e
root="$1"
install -m 0644 /dev/stdin "$root/etc/systemd/system/pg-journey.service" <<'UNIT'
@RUNNER@
UNIT
chroot "$root" systemctl enable pg-journey.service
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer e2scrub_all.timer serial-getty@ttyS0.service; do
    chroot "$root" systemctl mask "$unit" >/dev/null 2>&1 || true
done
echo pg-system-vm > "$root/etc/hostname"
printf '/dev/vda / ext4 rw 0 1\n' > "$root/etc/fstab"
"#;

/// A booted image: its root filesystem, kernel and initrd.
pub struct Image {
    pub disk: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

impl Image {
    fn at(dir: &Path) -> Image {
        Image {
            disk: dir.join("root.img"),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    }

    fn complete(&self) -> bool {
        [&self.disk, &self.vmlinuz, &self.initrd]
            .iter()
            .all(|p| p.is_file())
    }
}

fn customize_script() -> String {
    CUSTOMIZE.replace("@RUNNER@", RUNNER_UNIT.trim_end())
}

/// The cache key: a hash of everything that shapes the image.
fn key() -> String {
    let mut hash = Sha256::new();
    hash.update(SUITE);
    for package in packages() {
        hash.update([0]);
        hash.update(package);
    }
    hash.update([0]);
    hash.update(customize_script());
    let digest = hash.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached image, built when absent (about three minutes on a fresh machine).
pub fn cached() -> Result<Image> {
    let dir = setup::cache_dir().join("system-vm").join(key());
    let image = Image::at(&dir);
    if image.complete() {
        return Ok(image);
    }
    setup::apt_install("system-vm", &["mmdebstrap", "e2fsprogs", "qemu-system-x86"])?;
    println!(
        "system-vm: building a Debian {SUITE} image with systemd into {}",
        dir.display()
    );
    let work = dir.join("build");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let rootfs = work.join("rootfs");
    let hook = work.join("customize.sh");
    fs::write(&hook, customize_script())?;

    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=important", "--quiet"])
        .arg(format!("--include={}", packages().join(",")))
        .arg(format!("--customize-hook=sh {} \"$1\"", hook.display()))
        .arg(SUITE)
        .arg(&rootfs);
    // The mirror is whatever this machine's apt uses: its sources files go to mmdebstrap as they are.
    for source in host_apt_sources()? {
        mmdebstrap.arg(source);
    }
    cmd::run(&mut mmdebstrap).context("mmdebstrap could not build the system VM's root")?;

    let boot = rootfs.join("boot");
    let vmlinuz = find_prefixed(&boot, "vmlinuz-")?;
    let initrd = find_prefixed(&boot, "initrd.img-")?;
    fs::copy(&vmlinuz, &image.vmlinuz)?;
    fs::copy(&initrd, &image.initrd)?;
    let partial = work.join("root.img");
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "pgroot", "-d"])
            .arg(&rootfs)
            .arg(&partial)
            .arg("3G"),
    )?;
    // Renamed last, so an interrupted build is never taken for a complete image.
    fs::rename(&partial, &image.disk)?;
    fs::remove_dir_all(&work)?;
    if !image.complete() {
        bail!("the system VM image at {} is incomplete", dir.display());
    }
    // Images of other keys are what this one replaces (about 1 GiB each): they go.
    if let Some(parent) = dir.parent() {
        for entry in fs::read_dir(parent)?.flatten() {
            if entry.path() != dir && entry.path().is_dir() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(image)
}

/// The apt sources files this machine uses (deb822 `.sources` and one-line `.list` files), each
/// of which mmdebstrap accepts in place of a mirror URL.
fn host_apt_sources() -> Result<Vec<PathBuf>> {
    let mut sources = Vec::new();
    let list = Path::new("/etc/apt/sources.list");
    if fs::metadata(list).is_ok_and(|m| m.len() > 0) {
        sources.push(list.to_owned());
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sources" || x == "list"))
            .collect();
        found.sort();
        sources.extend(found);
    }
    if sources.is_empty() {
        bail!("this machine has no apt sources (/etc/apt/sources.list or sources.list.d/*.sources) to build the system VM from");
    }
    Ok(sources)
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .with_context(|| format!("the image has no {}/{prefix}*", dir.display()))
}
