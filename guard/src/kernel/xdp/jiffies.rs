//! The kernel's `HZ` and where its jiffies stand against `CLOCK_MONOTONIC`, for the limiter
//! build that reads `bpf_jiffies64` (the verifier inlines that helper into one load, where the
//! clock helpers are calls).
//!
//! `HZ` is not exposed to user space (`sysconf(_SC_CLK_TCK)` is `USER_HZ`). It is read from the
//! running kernel's `/boot/config-RELEASE` (`CONFIG_HZ=`, as distributions install it), else
//! measured: `/proc/timer_list` prints the monotonic time and the jiffies counter in one read;
//! two reads 200 ms apart give the tick rate, which is then rounded to the `HZ` values Linux
//! offers. Where the file is missing or the rate matches none of them, the limiter reads a clock
//! helper.

use std::{sync::OnceLock, time::Duration};

/// The rates `CONFIG_HZ` can be set to.
const HZ_CHOICES: [u64; 4] = [100, 250, 300, 1000];
const GAP: Duration = Duration::from_millis(200);
const NS_PER_SEC: u64 = 1_000_000_000;

/// How the program turns jiffies into `CLOCK_MONOTONIC` ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JiffyClock {
    pub ns_per_jiffy: u32,
    /// `jiffies * ns_per_jiffy - monotonic ns`, wrapping.
    pub offset_ns: u64,
}

/// Found once per process: the first call takes [`GAP`] where the kernel's config is not in /boot.
pub fn clock() -> Option<JiffyClock> {
    static CLOCK: OnceLock<Option<JiffyClock>> = OnceLock::new();
    *CLOCK.get_or_init(|| {
        let found = measure();
        match found {
            Some(c) => tracing::debug!(
                hz = NS_PER_SEC / u64::from(c.ns_per_jiffy),
                "xdp: measured the kernel's tick rate"
            ),
            None => tracing::info!(
                "xdp: the kernel's HZ is unknown (no readable /proc/timer_list, or an unusual tick rate): the limiter reads a clock helper instead of jiffies"
            ),
        }
        found
    })
}

fn measure() -> Option<JiffyClock> {
    if let Some(hz) = installed_config_hz() {
        return Some(clock_at(hz, sample()?));
    }
    let first = sample()?;
    std::thread::sleep(GAP);
    let second = sample()?;
    from_samples(first, second)
}

/// (monotonic ns, jiffies) from one read of `/proc/timer_list`.
fn sample() -> Option<(u64, u64)> {
    use std::io::Read;
    // One read() of a large buffer: seq_file then prints both lines in the same call.
    let mut buf = vec![0u8; 1 << 16];
    let n = std::fs::File::open("/proc/timer_list")
        .ok()?
        .read(&mut buf)
        .ok()?;
    parse(std::str::from_utf8(&buf[..n]).ok()?)
}

fn parse(text: &str) -> Option<(u64, u64)> {
    let now = text
        .lines()
        .find_map(|l| l.strip_prefix("now at ")?.strip_suffix(" nsecs"))?
        .trim()
        .parse()
        .ok()?;
    let jiffies = text
        .lines()
        .find_map(|l| l.strip_prefix("jiffies:"))?
        .trim()
        .parse()
        .ok()?;
    Some((now, jiffies))
}

/// The running kernel's `CONFIG_HZ` from its config in /boot, where the distribution put it.
fn installed_config_hz() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    configured_hz(&std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()?)
}

/// `CONFIG_HZ` from a kernel config's text, if it is one of [`HZ_CHOICES`].
fn configured_hz(config: &str) -> Option<u64> {
    let hz = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))?
        .trim()
        .parse()
        .ok()?;
    HZ_CHOICES.contains(&hz).then_some(hz)
}

/// The clock at `hz` from one sample.
fn clock_at(hz: u64, (now, jiffies): (u64, u64)) -> JiffyClock {
    let ns_per_jiffy = NS_PER_SEC / hz;
    JiffyClock {
        ns_per_jiffy: ns_per_jiffy as u32,
        offset_ns: jiffies.wrapping_mul(ns_per_jiffy).wrapping_sub(now),
    }
}

/// The clock two samples imply: their tick rate within 10% of one `HZ` choice.
fn from_samples((now1, j1): (u64, u64), (now2, j2): (u64, u64)) -> Option<JiffyClock> {
    let elapsed_ns = now2.checked_sub(now1).filter(|ns| *ns > 0)?;
    let ticks = j2.checked_sub(j1)?;
    let rate = ticks as f64 * NS_PER_SEC as f64 / elapsed_ns as f64;
    let hz = HZ_CHOICES
        .into_iter()
        .find(|hz| (rate - *hz as f64).abs() <= *hz as f64 * 0.1)?;
    Some(clock_at(hz, (now2, j2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_list_lines_parse() {
        let text = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 636742649369 nsecs\n\ncpu: 0\n clock 0:\njiffies: 4295051454\n";
        assert_eq!(parse(text), Some((636_742_649_369, 4_295_051_454)));
        assert_eq!(parse("now at 5 nsecs\n"), None);
    }

    #[test]
    fn config_hz_is_read_only_at_a_choice() {
        let config =
            "CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\nCONFIG_SCHED_HRTICK=y\n";
        assert_eq!(configured_hz(config), Some(250));
        assert_eq!(configured_hz("CONFIG_HZ=1024\n"), None);
        assert_eq!(configured_hz("CONFIG_HZ_250=y\n"), None);
    }

    #[test]
    fn samples_round_to_an_hz_choice() {
        let start = (10 * NS_PER_SEC, 4_295_000_000);
        // 51 ticks in 200 ms (a tick fell on the edge): HZ 250.
        let clock = from_samples(start, (start.0 + 200_000_000, start.1 + 51)).unwrap();
        assert_eq!(clock.ns_per_jiffy, 4_000_000);
        let now = start.0 + 200_000_000;
        let jiffies = start.1 + 51;
        assert_eq!(
            jiffies
                .wrapping_mul(4_000_000)
                .wrapping_sub(clock.offset_ns),
            now
        );
        // 300 is not mistaken for 250.
        let c300 = from_samples(start, (start.0 + 200_000_000, start.1 + 60)).unwrap();
        assert_eq!(c300.ns_per_jiffy, 3_333_333);
        // A rate between the choices, or time going backwards, is no answer.
        assert_eq!(
            from_samples(start, (start.0 + 200_000_000, start.1 + 100)),
            None
        );
        assert_eq!(from_samples(start, (start.0 - 1, start.1)), None);
    }
}
