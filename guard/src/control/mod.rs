//! The control channel between the CLI and the daemon: newline-delimited JSON over a Unix socket
//! under /run/proxyguard that only root can open.
//!
//! A request is one line, `{"cmd":"status"}`, `{"cmd":"reload"}`, `{"cmd":"snapshot"}`,
//! `{"cmd":"events","follow":true}`, `{"cmd":"usage","key":null}` or
//! `{"cmd":"resume","key":"ci"}`. The answer is one JSON line, or for `events` one line per
//! record. `snapshot` is what `proxyguard top` polls: the metrics text, the kernel counters, the
//! most-refused clients and the last security events, answered without the daemon's main loop.

pub mod client;
pub mod glance;
pub mod server;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Command {
    Status,
    Reload,
    Snapshot,
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Per-key usage and what is left of each budget (all keys, or one).
    Usage {
        #[serde(default)]
        key: Option<String>,
    },
    /// Lifts a key's suspension.
    Resume {
        key: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot prepare the control socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error("another proxyguard daemon already answers on {path}")]
    AlreadyRunning { path: String },
    #[error("cannot reach the daemon at {path}: {source} (is `proxyguard run` running, and are you root?)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the daemon's answer was cut short or unreadable: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_one_json_line_each() {
        for (command, line) in [
            (Command::Status, r#"{"cmd":"status"}"#),
            (Command::Reload, r#"{"cmd":"reload"}"#),
            (Command::Snapshot, r#"{"cmd":"snapshot"}"#),
            (
                Command::Events { follow: true },
                r#"{"cmd":"events","follow":true}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&command).unwrap(), line);
            assert_eq!(serde_json::from_str::<Command>(line).unwrap(), command);
        }
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"cmd":"events"}"#).unwrap(),
            Command::Events { follow: false }
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"shutdown"}"#).is_err());
    }
}
