//! `cargo xtask setup`: brings a fresh machine of this kind to a working state, idempotently.
//!
//! Each step checks first and does nothing when its tool is present, so a warm run takes about a
//! second. A step that cannot install its tool fails with what is missing and the command to fix it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Debian packages: LLVM 22 for bpf-linker, QEMU/busybox/cpio for the VM, binutils to strip what
/// goes into the initramfs, iproute2 for test namespaces, systemd for `systemd-analyze` (unit
/// verification and the exposure score), tmux to drive `proxyguard top` as a person would, and
/// prometheus for `promtool check rules` on the shipped alert rules.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "binutils",
    "iproute2",
    "systemd",
    "tmux",
    "prometheus",
    // The fleet's shared limits (issue 15): l7_fleet and `cargo xtask fleet-demo` run a real one.
    "redis-server",
];

/// Kernel modules the VM tests load (virtual ethernet pairs, and tc's BPF classifier).
pub const VM_MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf"];

pub fn run() -> Result<()> {
    nightly_with_rust_src()?;
    apt_packages()?;
    bpf_linker()?;
    crate::peers::ensure_pinned()?;
    cargo_fuzz()?;
    let kernel = vm_kernel()?;
    println!("setup: ok (VM kernel {})", kernel.version);
    Ok(())
}

fn nightly_with_rust_src() -> Result<()> {
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the kernel crate with nightly")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain (for the kernel crate)");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly (build-std=core for bpfel-unknown-none)");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// The cargo-fuzz release the fuzz stage runs.
const CARGO_FUZZ_VERSION: &str = "0.13";

/// Where cargo-fuzz is installed: the cache, so a warm machine never builds it again, and apart
/// from ~/.cargo/bin, so the version is ours.
pub fn cargo_fuzz_root() -> PathBuf {
    cache_dir().join("cargo-fuzz")
}

/// `PATH` with cargo-fuzz's directory first, for `cargo fuzz` to find it.
pub fn cargo_fuzz_path() -> std::ffi::OsString {
    let bin = cargo_fuzz_root().join("bin");
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest))).unwrap_or(rest)
}

/// cargo-fuzz 0.13 for the fuzz stage: a no-op (one `--version`) when the cached one is there,
/// about two minutes to build once on a fresh machine.
pub fn cargo_fuzz() -> Result<()> {
    let version = || {
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .env("PATH", cargo_fuzz_path())
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    };
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}.");
    if version().starts_with(&wanted) {
        return Ok(());
    }
    let root = cargo_fuzz_root();
    println!(
        "setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about two minutes, once)",
        root.display()
    );
    cmd::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(format!("^{CARGO_FUZZ_VERSION}"))
            .arg("--root")
            .arg(&root),
    )
    .context("cannot install cargo-fuzz; it needs crates.io (or a mirror in cargo's config)")?;
    let found = version();
    if !found.starts_with(&wanted) {
        bail!(
            "cargo-fuzz was installed into {} but `cargo fuzz --version` says {found:?}",
            root.display()
        );
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"ii"))
}

fn apt_packages() -> Result<()> {
    apt_install("setup", APT_PACKAGES)
}

/// Installs whichever of `packages` (Debian package names) are missing, saying so as `who`; a
/// failure names the command that would fix it. Setup and the benchmarks' peers share it.
pub fn apt_install(who: &str, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("{who}: installing Debian packages: {}", missing.join(" "));
    let fix = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))
        .with_context(|| format!("cannot update apt's lists; as root, run: {fix}"))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {}; as root, run: {fix}", missing.join(" ")))
}

fn bpf_linker() -> Result<()> {
    if cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    println!("setup: building bpf-linker 0.13 against Debian's llvm-22 (about a minute)");
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13", "--no-default-features", "--features", "llvm-22"])
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path),
    )
    .context("cannot build bpf-linker; it needs llvm-22-dev, libpolly-22-dev, libzstd-dev and zlib1g-dev")?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// The venv of the L7 tests' real peers (pinned in tests/py/requirements.txt; see peers.rs).
pub fn venv_dir() -> PathBuf {
    crate::peers::venv_dir()
}

/// The cache for downloads that must not live in the source tree.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PROXYGUARD_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("proxyguard")
}

/// A Debian kernel and the modules the VM tests load.
pub struct VmKernel {
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

impl VmKernel {
    fn at(dir: &Path, version: &str) -> VmKernel {
        VmKernel {
            version: version.to_owned(),
            vmlinuz: dir.join("vmlinuz"),
            modules: VM_MODULES
                .iter()
                .map(|m| dir.join("modules").join(format!("{m}.ko")))
                .collect(),
        }
    }

    fn complete(&self) -> bool {
        self.vmlinuz.is_file() && self.modules.iter().all(|m| m.is_file())
    }
}

/// The Debian kernel the VM tests boot, pinned so a new Debian point release cannot change the
/// kernel under the tests without a commit. Last moved: 2026-12-01 (the ABI `linux-image-amd64`
/// depended on then; package version 6.1.192-3). Debian drops an old ABI's package from its index
/// some time after the next one: when the download fails, move the pin to what
/// `apt-cache depends linux-image-amd64` names and run the VM stage before committing it.
pub const VM_KERNEL_VERSION: &str = "6.1.0-57-amd64";

/// The cached VM kernel of [`VM_KERNEL_VERSION`], downloading its package when absent.
pub fn vm_kernel() -> Result<VmKernel> {
    let root = cache_dir().join("vm");
    let current = root.join("current");
    let kernel = VmKernel::at(&root.join(VM_KERNEL_VERSION), VM_KERNEL_VERSION);
    if kernel.complete() {
        return Ok(kernel);
    }
    let package = format!("linux-image-{VM_KERNEL_VERSION}");
    println!(
        "setup: downloading {package} for the VM into {}",
        root.display()
    );
    let work = root.join("download");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    cmd::run(
        Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&work),
    )
    .with_context(|| format!("cannot download {package}; check `apt-cache policy {package}`"))?;
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.join("tree");
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;

    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package holds no boot/vmlinuz-*")?;
    let version = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_owned();
    if version != VM_KERNEL_VERSION {
        bail!("{package} holds vmlinuz-{version}, not the pinned {VM_KERNEL_VERSION}");
    }
    let dest = root.join(&version);
    fs::create_dir_all(dest.join("modules"))?;
    fs::copy(&vmlinuz, dest.join("vmlinuz"))?;
    let module_tree = tree.join("lib/modules").join(&version).join("kernel");
    for module in VM_MODULES {
        let found = find_file(&module_tree, &format!("{module}.ko"))
            .with_context(|| format!("module {module}.ko is not in {package}"))?;
        fs::copy(found, dest.join("modules").join(format!("{module}.ko")))?;
    }
    fs::write(&current, &version)?;
    fs::remove_dir_all(&work)?;
    let kernel = VmKernel::at(&dest, &version);
    if !kernel.complete() {
        bail!(
            "the VM kernel cache at {} is incomplete after download",
            dest.display()
        );
    }
    Ok(kernel)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}
