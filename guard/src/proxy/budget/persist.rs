//! The usage counters on disk: `usage.json` under the state directory, written whole and
//! atomically (temp file, fsync, rename, fsync of the directory) by a thread of its own, never on
//! the runtime's workers: every `proxy.usage.persist_secs` when something changed, at once after
//! a suspension or a resume, and on shutdown. A kill -9 loses at most the last
//! `persist_secs` of usage (and nothing of a suspension that was written).
//!
//! A file that does not parse is reported (`usage_state_corrupt`), renamed aside as
//! `usage.json.corrupt-<unix time>` for inspection, and the daemon starts from zero.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use serde_json::json;

use super::ledger::{Book, Ledger};

pub const FILE: &str = "usage.json";

/// Where the counters live: `proxy.usage.state_dir`, else `$STATE_DIRECTORY` (the first of
/// systemd's list), else nowhere (memory only).
pub fn state_dir(config: &crate::config::proxy::UsageConfig) -> Option<PathBuf> {
    config.state_dir.clone().or_else(|| {
        std::env::var_os("STATE_DIRECTORY").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .next()
                .filter(|dir| !dir.as_os_str().is_empty())
        })
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a usage state file ({source}); it was kept as {kept}")]
    Corrupt {
        path: String,
        kept: String,
        source: serde_json::Error,
    },
}

/// The book in `dir`, or an empty one when there is none yet.
pub fn read(dir: &Path) -> Result<Book, PersistError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Book::default()),
        Err(source) => {
            return Err(PersistError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_slice(&text).map_err(|source| {
        let kept = dir.join(format!("{FILE}.corrupt-{}", super::clock::now()));
        let _ = std::fs::rename(&path, &kept);
        PersistError::Corrupt {
            path: path.display().to_string(),
            kept: kept.display().to_string(),
            source,
        }
    })
}

/// [`read`], reporting a problem and starting empty instead of failing: the daemon never stops
/// for its usage file.
pub fn load(dir: &Path) -> Book {
    match read(dir) {
        Ok(book) => book,
        Err(err) => {
            tracing::error!("{err}; usage counters start from zero");
            crate::audit::emit(
                "usage_state_corrupt",
                crate::audit::fields(json!({ "error": err.to_string() })),
            );
            Book::default()
        }
    }
}

pub fn write(dir: &Path, book: &Book) -> std::io::Result<()> {
    let text = serde_json::to_vec(book).map_err(std::io::Error::other)?;
    crate::config::write_atomic(&dir.join(FILE), &text)
}

/// The writer thread.
pub struct Persister {
    ledger: Arc<Ledger>,
    thread: Option<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Persister {
    pub fn spawn(ledger: Arc<Ledger>, dir: PathBuf, every: Duration) -> Persister {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_ledger, thread_stop) = (ledger.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("usage-persist".into())
            .spawn(move || writer(&thread_ledger, &dir, every, &thread_stop))
            .ok();
        Persister {
            ledger,
            thread,
            stop,
        }
    }

    /// Writes the last state and stops the thread (blocking: call it off the runtime).
    pub fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.ledger.mark(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn writer(ledger: &Ledger, dir: &Path, every: Duration, stop: &std::sync::atomic::AtomicBool) {
    let mut failing = false;
    loop {
        let (flags, wake) = &ledger.changed;
        let mut guard = flags.lock().unwrap_or_else(|p| p.into_inner());
        if !guard.1 {
            guard = wake
                .wait_timeout(guard, every)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let dirty = guard.0
            | ledger
                .dirty
                .swap(false, std::sync::atomic::Ordering::AcqRel);
        *guard = (false, false);
        drop(guard);
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        if dirty || stopping {
            match write(dir, &ledger.snapshot()) {
                Ok(()) => failing = false,
                // Once per run of failures: a full disk must not flood the log.
                Err(err) if !failing => {
                    failing = true;
                    tracing::error!("cannot write {}: {err}", dir.join(FILE).display());
                }
                Err(_) => {}
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_a_corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Book::default());
        let mut book = Book::default();
        book.keys.entry("a".into()).or_default().day_tokens = 42;
        write(dir.path(), &book).unwrap();
        assert_eq!(read(dir.path()).unwrap(), book);
        for broken in [&b"{\"keys\": {\"a\": {\"day_tok"[..], b"\x00\xff", b"[1,2]"] {
            std::fs::write(dir.path().join(FILE), broken).unwrap();
            let err = read(dir.path()).unwrap_err();
            assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
            assert!(!dir.path().join(FILE).exists());
            assert_eq!(load(dir.path()), Book::default());
            let kept = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("usage.json.corrupt-")
                })
                .count();
            assert!(kept >= 1);
        }
    }

    #[test]
    fn the_thread_writes_changes_and_the_last_state_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::default());
        let persister =
            Persister::spawn(ledger.clone(), dir.path().into(), Duration::from_secs(3600));
        let key: Arc<str> = "a".into();
        let ticket = ledger
            .admit(
                &key,
                &Default::default(),
                ("other".into(), Default::default()),
                (1, 1),
                1_796_122_800,
            )
            .unwrap();
        ticket.settle(
            crate::proxy::usage::Usage {
                input: 3,
                output: 4,
                estimated: false,
            },
            1_796_122_800,
        );
        persister.stop();
        assert_eq!(read(dir.path()).unwrap().keys["a"].day_tokens, 7);
    }
}
