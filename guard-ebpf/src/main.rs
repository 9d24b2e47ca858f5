//! proxyguard's kernel programs. One module per program family; each module owns its maps.
#![no_std]
#![no_main]

mod bind;
mod created;
mod egress;
mod environ;
mod kmem;
mod packet;
mod probe;
mod sock_addr;
mod stats;
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
