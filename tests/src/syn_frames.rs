//! Raw TCP SYN frames from many source addresses, written straight onto an interface with an
//! `AF_PACKET` socket: the rotating flood of the XDP tests and of `cargo xtask bench-kernel`.
//!
//! Sources are the caller's to choose and must come from the benchmarking ranges (198.18.0.0/15,
//! 2001:db8::/32) inside the caller's own namespace pair, with no route out: nothing here picks
//! a random address. Every flood is a finite list of sources, sent once.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// The `/48` and `/16` a rotating flood comes from: `v6_sources(n)` and `v4_sources(n)`.
pub const FLOOD_V6_PREFIX: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0);
pub const FLOOD_V4_PREFIX: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// `n` distinct IPv6 addresses in 2001:db8:1::/48, spread over all its 65,536 /64s first.
pub fn v6_sources(n: u32) -> impl Iterator<Item = IpAddr> {
    let base = FLOOD_V6_PREFIX.segments();
    (0..n).map(move |i| {
        let host = (i >> 16) + 1;
        IpAddr::V6(Ipv6Addr::new(
            base[0],
            base[1],
            base[2],
            (i & 0xffff) as u16,
            0,
            0,
            (host >> 16) as u16,
            host as u16,
        ))
    })
}

/// `n` (at most 65,536) distinct IPv4 addresses in 198.19.0.0/16, over all its /24s.
pub fn v4_sources(n: u32) -> impl Iterator<Item = IpAddr> {
    let base = u32::from(FLOOD_V4_PREFIX);
    (0..n.min(1 << 16)).map(move |i| {
        // Low byte first, so consecutive sources land in different /24s.
        let spread = ((i & 0xff) << 8) | (i >> 8);
        IpAddr::V4(Ipv4Addr::from(base | spread))
    })
}

/// One Ethernet frame holding a TCP SYN from `source` to `target:port` with valid checksums.
pub fn syn_frame(
    dst_mac: [u8; 6],
    source: IpAddr,
    target: IpAddr,
    sport: u16,
    port: u16,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(74);
    frame.extend_from_slice(&dst_mac);
    // A locally administered source MAC: the receiver does not check it.
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    let tcp_len = 20u16;
    let pseudo = match (source, target) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + tcp_len).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&t.octets());
            let checksum = fold(sum(&ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&ip);
            sum(&s.octets()) + sum(&t.octets()) + 6 + u32::from(tcp_len)
        }
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&tcp_len.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&t.octets());
            frame.extend_from_slice(&ip);
            sum(&s.octets()) + sum(&t.octets()) + 6 + u32::from(tcp_len)
        }
        _ => panic!("source {source} and target {target} are of different families"),
    };
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let checksum = fold(pseudo + sum(&tcp));
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame
}

/// The one's-complement sum of 16-bit words (RFC 1071), not yet folded.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An `AF_PACKET` socket bound to one interface of the calling thread's network namespace.
pub struct FrameSocket {
    fd: OwnedFd,
}

impl FrameSocket {
    pub fn open(interface: &str) -> std::io::Result<FrameSocket> {
        let name = std::ffi::CString::new(interface).expect("no NUL in an interface name");
        // SAFETY: a plain C string argument.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Protocol 0: this socket sends only, it receives nothing.
        // SAFETY: plain integer arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a live sockaddr_ll of the size passed.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FrameSocket { fd })
    }

    /// Writes one frame; `false` when the kernel refused it (a full queue, say).
    pub fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: `frame` is a live buffer of the length passed.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        sent == frame.len() as isize
    }
}

/// The MAC address of `interface` in network namespace `netns` (`ip -j link show`).
pub fn mac_of(netns: &str, interface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", interface])
        .output()
        .expect("run ip (iproute2)");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
    let text = links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address for {interface} in {netns}: {links}"));
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a hex MAC byte");
    }
    mac
}

/// Sends one SYN from each of `sources` to `target:port` on `socket`; returns how many the
/// kernel took. Every `pace` frames the thread yields, so the receiving queue drains and most
/// frames reach the receiver's XDP program.
pub fn flood(
    socket: &FrameSocket,
    dst_mac: [u8; 6],
    sources: impl Iterator<Item = IpAddr>,
    target_v4: Ipv4Addr,
    target_v6: Ipv6Addr,
    port: u16,
    pace: u32,
) -> u64 {
    let mut sent = 0;
    for (i, source) in sources.enumerate() {
        let target = match source {
            IpAddr::V4(_) => IpAddr::V4(target_v4),
            IpAddr::V6(_) => IpAddr::V6(target_v6),
        };
        let frame = syn_frame(dst_mac, source, target, 1024 + (i % 60000) as u16, port);
        if socket.send(&frame) {
            sent += 1;
        }
        if pace > 0 && (i as u32 + 1).is_multiple_of(pace) {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_and_sources_are_distinct() {
        let frame = syn_frame(
            [0xff; 6],
            "198.19.1.2".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            4000,
            8080,
        );
        assert_eq!(frame.len(), 14 + 20 + 20);
        assert_eq!(fold(sum(&frame[14..34])), 0, "IPv4 header checksum");
        let v6: std::collections::HashSet<_> = v6_sources(200_000).collect();
        assert_eq!(v6.len(), 200_000);
        assert!(v6.iter().all(|a| match a {
            IpAddr::V6(a) => a.segments()[..3] == FLOOD_V6_PREFIX.segments()[..3],
            _ => false,
        }));
        let v4: std::collections::HashSet<_> = v4_sources(70_000).collect();
        assert_eq!(v4.len(), 65_536);
        let frame6 = syn_frame(
            [0xff; 6],
            "2001:db8:1:2::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            4000,
            8080,
        );
        assert_eq!(frame6.len(), 14 + 40 + 20);
    }
}
