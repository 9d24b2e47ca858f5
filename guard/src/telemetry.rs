//! Diagnostic logging (tracing, on stderr). `log` records, including the eBPF programs' aya-log
//! output, are bridged into it. Also what the daemon's output streams are connected to: a
//! terminal (the only place colour goes) or journald (which stamps each line itself, and reads a
//! line's priority from its `<N>` prefix, sd-daemon(3)).

use std::{
    io::IsTerminal,
    os::{fd::AsFd, unix::fs::MetadataExt},
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

use crate::config::{log_level, LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    // `RUST_LOG` wins, so an operator can turn up one module without editing the config. It
    // passes the same check as `log.level` first: the filter parser panics on some text.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|text| !text.is_empty())
        .and_then(|text| {
            log_level::normalise(&text)
                .map_err(|why| eprintln!("proxyguard: RUST_LOG is ignored: {why}"))
                .ok()
        });
    // `Config::load` checked `log.level`; "info" is only a fallback for a config built in code.
    let level = from_env
        .or_else(|| log_level::normalise(&config.level).ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::new(level);
    crate::audit::configure(config.format, Stream::of(&std::io::stdout()));
    crate::outbox::configure(config.queue);
    let stderr = Stream::of(&std::io::stderr());
    // Through the outbox, as the audit lines are: a request worker's warning never waits for a
    // slow reader of stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::outbox::LogWriter)
        .with_ansi(stderr == Stream::Terminal && colour_allowed());
    let journal = stderr == Stream::Journal;
    let result = match (config.format, journal) {
        (LogFormat::Text, false) => builder.try_init(),
        // The priority prefix says the level; journald shows it (`journalctl -p`, colours).
        (LogFormat::Text, true) => builder
            .without_time()
            .with_level(false)
            .map_event_format(Prefixed)
            .try_init(),
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .without_time()
            .map_event_format(Prefixed)
            .try_init(),
    };
    if let Err(err) = result {
        eprintln!("proxyguard: logging already initialised: {err}");
    }
}

/// What an output stream is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Terminal,
    /// The stream systemd connected to journald (`JOURNAL_STREAM` names its device and inode).
    Journal,
    /// A pipe or a file.
    Other,
}

impl Stream {
    pub fn of(stream: &impl AsFd) -> Stream {
        let journal = std::env::var("JOURNAL_STREAM").ok();
        Self::classify(stream, journal.as_deref())
    }

    /// `JOURNAL_STREAM` is inherited by every child of a service, so it counts only when it names
    /// this very stream: a pipe to a test harness under systemd stays a pipe.
    fn classify(stream: &impl AsFd, journal_stream: Option<&str>) -> Stream {
        if let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) {
            let same = stream
                .as_fd()
                .try_clone_to_owned()
                .map(std::fs::File::from)
                .and_then(|file| file.metadata())
                .is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()));
            if same {
                return Stream::Journal;
            }
        }
        if stream.as_fd().is_terminal() {
            Stream::Terminal
        } else {
            Stream::Other
        }
    }
}

/// `NO_COLOR` (https://no-color.org) turns colour off even on a terminal.
fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// syslog priorities, as journald reads them from a `<N>` line prefix (sd-daemon(3)).
pub mod priority {
    pub const ERR: u8 = 3;
    pub const WARNING: u8 = 4;
    pub const NOTICE: u8 = 5;
    pub const INFO: u8 = 6;
    pub const DEBUG: u8 = 7;
}

fn level_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => priority::ERR,
        Level::WARN => priority::WARNING,
        Level::INFO => priority::INFO,
        _ => priority::DEBUG,
    }
}

/// Writes the event's priority prefix, then the event as `F` formats it.
struct Prefixed<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", level_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn journal_stream_counts_only_for_the_stream_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let meta = file.metadata().unwrap();
        let named = format!("{}:{}", meta.dev(), meta.ino());
        assert_eq!(Stream::classify(&file, Some(&named)), Stream::Journal);
        let other = std::fs::File::create(dir.path().join("other")).unwrap();
        assert_eq!(Stream::classify(&other, Some(&named)), Stream::Other);
        assert_eq!(Stream::classify(&file, None), Stream::Other);
        assert_eq!(Stream::classify(&file, Some("garbage")), Stream::Other);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(level_priority(Level::ERROR), 3);
        assert_eq!(level_priority(Level::WARN), 4);
        assert_eq!(level_priority(Level::INFO), 6);
        assert_eq!(level_priority(Level::DEBUG), 7);
    }
}
