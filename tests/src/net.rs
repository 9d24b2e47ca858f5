//! Socket helpers for tests.

use std::net::{SocketAddr, TcpListener};

/// A port that is free on loopback right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Binds a TCP socket to `addr` and returns the errno on failure (the socket is closed either way).
/// IPv6 sockets are IPv6-only, so the IPv6 rules are judged alone.
pub fn try_bind(addr: SocketAddr) -> Result<(), nix::errno::Errno> {
    bind_with(addr, true)
}

/// As [`try_bind`], with a dual-stack IPv6 socket (so v4-mapped addresses bind IPv4).
pub fn try_bind_dual_stack(addr: SocketAddr) -> Result<(), nix::errno::Errno> {
    bind_with(addr, false)
}

fn bind_with(addr: SocketAddr, v6_only: bool) -> Result<(), nix::errno::Errno> {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if addr.is_ipv6() {
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::Ipv6V6Only, &v6_only)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
}
