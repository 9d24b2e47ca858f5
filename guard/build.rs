//! Builds the kernel programs (`guard-ebpf`) with aya-build, so `cargo build` yields one binary
//! with the eBPF object embedded.

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-ebpf");
    let package = aya_build::Package {
        name: "guard-ebpf",
        root_dir,
        ..Default::default()
    };
    // The kernel programs compile guard-common too; aya-build watches only guard-ebpf itself.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../guard-common/src")
    );
    // A stamp makes a differing object from the same sources (for the upgrade test); the kernel
    // crate reads it with option_env!, so its build inherits it from here.
    println!("cargo:rerun-if-env-changed=PROXYGUARD_OBJECT_STAMP");
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
