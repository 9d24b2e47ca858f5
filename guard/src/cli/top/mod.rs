//! `proxyguard top`: a live view of the running daemon over the control socket, redrawn every
//! second (requests by decision and reason, top keys, refused clients, upstream latency, kernel
//! counters, the last security events), or one plain-text frame with `--once`.
//!
//! The terminal is restored on every way out: `q`, Esc, Ctrl-C, SIGTERM/SIGHUP, a lost daemon
//! (then the error is printed after the restore) and a panic (ratatui's hook).

mod draw;
mod model;

use std::{
    collections::VecDeque,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::{
    config::Config,
    control::{client, Command},
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Print one frame as plain text and exit (two snapshots a second apart, so rates are real).
    /// With --json, the frame's tables as one JSON document.
    #[arg(long)]
    pub once: bool,
}

/// How often the daemon is polled.
const INTERVAL: Duration = Duration::from_secs(1);
/// Snapshots kept: the latency quantiles cover this many intervals.
const KEPT: usize = 11;
/// A daemon that does not answer a snapshot within this is treated as lost.
const PATIENCE: Duration = Duration::from_secs(5);

pub fn run(config_path: &Path, json: bool, args: TopArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let mut history = History::new(config.control.socket.clone());
    history.poll()?;
    if args.once || json {
        std::thread::sleep(INTERVAL);
        history.poll()?;
        let frame = history.frame();
        if json {
            println!("{}", serde_json::to_string(&frame)?);
        } else {
            print!("{}", draw::text(&frame));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`proxyguard top` needs a terminal; for scripts, `proxyguard top --once` prints one frame");
    }
    live(history)?;
    Ok(ExitCode::SUCCESS)
}

/// The snapshots polled so far, newest last.
struct History {
    socket: PathBuf,
    samples: VecDeque<model::Sample>,
}

impl History {
    fn new(socket: PathBuf) -> History {
        History {
            socket,
            samples: VecDeque::with_capacity(KEPT),
        }
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let snapshot = client::request_within(&self.socket, &Command::Snapshot, PATIENCE)
            .context("cannot read a snapshot from the daemon")?;
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples
            .push_back(model::Sample::from_snapshot(&snapshot, Instant::now()));
        Ok(())
    }

    fn frame(&self) -> model::Frame {
        let n = self.samples.len();
        let newest = &self.samples[n - 1];
        let previous = n.checked_sub(2).map(|i| &self.samples[i]);
        let oldest = (n > 1).then(|| &self.samples[0]);
        model::frame(newest, previous, oldest)
    }
}

/// The terminal in raw mode on the alternate screen; restored when dropped.
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Screen(terminal)),
            Err(err) => {
                ratatui::restore();
                Err(err)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.0.show_cursor();
        ratatui::restore();
    }
}

fn live(mut history: History) -> anyhow::Result<()> {
    // In raw mode Ctrl-C is a key; these come from elsewhere (kill, a closed terminal).
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot handle termination signals")?;
    }
    let mut screen = Screen::enter().context("cannot set up the terminal")?;
    let note = format!("every {}s, q quits", INTERVAL.as_secs());
    let mut next = Instant::now() + INTERVAL;
    loop {
        let frame = history.frame();
        screen
            .0
            .draw(|out| draw::draw(out, &frame, &note))
            .context("cannot draw")?;
        // Input until the next poll; a resize redraws at once.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= next {
                break;
            }
            let wait = (next - now).min(Duration::from_millis(200));
            if !event::poll(wait).context("cannot read the terminal")? {
                continue;
            }
            match event::read().context("cannot read the terminal")? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => break,
                _ => {}
            }
        }
        if Instant::now() >= next {
            next += INTERVAL;
            if let Err(err) = history.poll() {
                drop(screen);
                return Err(err.context("`proxyguard top` stopped: the daemon went away"));
            }
        }
    }
}
