//! proxyguard's kernel programs. One module per program family; each module owns its maps.
#![no_std]
#![no_main]

mod bind;
mod created;
mod egress;
mod environ;
mod environ_probe;
mod kmem;
mod packet;
mod probe;
mod refused;
mod sock_addr;
mod stats;
mod upstream;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves there is no reachable panic; this only satisfies no_std.
    loop {}
}

// GPL-compatible, so GPL-only helpers (and LSM programs) are available to the object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// A build-time stamp (`PROXYGUARD_OBJECT_STAMP`, set by `cargo xtask deb --stamp`), so two builds
/// of the same sources carry different objects: the upgrade test installs one over the other. It
/// sits in a section of its own, which aya ignores; nothing reads it. Never empty: the kernel
/// refuses BTF that describes an empty data section.
const STAMP: &str = match option_env!("PROXYGUARD_OBJECT_STAMP") {
    Some(stamp) if !stamp.is_empty() => stamp,
    _ => "unstamped",
};

#[unsafe(link_section = "proxyguard_stamp")]
#[unsafe(no_mangle)]
static OBJECT_STAMP: [u8; STAMP.len()] = stamp_bytes(STAMP);

const fn stamp_bytes<const N: usize>(stamp: &str) -> [u8; N] {
    let bytes = stamp.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i];
        i += 1;
    }
    out
}
