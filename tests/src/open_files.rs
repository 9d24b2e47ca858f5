//! What a process holds open, read from /proc: its descriptors, and its TCP sockets to a given
//! remote port (its socket inodes matched against /proc/net/tcp), for leak checks.

use std::{
    collections::HashSet,
    fs,
    time::{Duration, Instant},
};

/// How many descriptors `pid` has open.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's fd directory")
        .count()
}

/// `pid`'s descriptor count once it has stopped changing (ten equal readings 100 ms apart): a
/// daemon opens some of its descriptors just after `ready` (the inotify watcher of its checks,
/// for one), and a baseline taken before those would show them as a leak.
pub fn steady_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = fd_count(pid);
    let mut same = 0;
    while same < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// What each of `pid`'s descriptors points at (`socket:[…]`, `anon_inode:[eventfd]`, paths), for
/// failure messages.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut targets: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's fd directory")
        .flatten()
        .filter_map(|entry| {
            let target = fs::read_link(entry.path()).ok()?;
            Some(format!(
                "{} -> {}",
                entry.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect();
    targets.sort();
    targets
}

/// How many of `pid`'s TCP sockets (any state) are connected to remote port `port`.
pub fn tcp_to_port(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's fd directory")
        .flatten()
        .filter_map(|entry| fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|hex| u16::from_str_radix(hex, 16).ok());
            remote_port == Some(port) && fields.get(9).is_some_and(|inode| inodes.contains(*inode))
        })
        .count()
}

/// Polls `probe` until it returns `want` or `bound` passes; returns the last value seen. A bound
/// against hangs, not a timing: the caller asserts on the value.
pub fn settle<T: PartialEq + Copy>(want: T, bound: Duration, probe: impl Fn() -> T) -> T {
    let deadline = Instant::now() + bound;
    loop {
        let now = probe();
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
