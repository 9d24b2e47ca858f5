//! The CLI's side: one request, then the answer line (or lines, for `events`).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;

use super::{Command, ControlError};

/// Sends `command` and returns the single answer.
pub fn request(socket: &Path, command: &Command) -> Result<Value, ControlError> {
    let mut answer = None;
    for_each_line(socket, command, |value| {
        answer = Some(value);
        false
    })?;
    answer.ok_or_else(|| ControlError::Protocol("no answer".into()))
}

/// As [`request`], but a daemon that does not answer within `patience` is an error.
pub fn request_within(
    socket: &Path,
    command: &Command,
    patience: Duration,
) -> Result<Value, ControlError> {
    let mut answer = None;
    lines(socket, command, Some(patience), |value| {
        answer = Some(value);
        false
    })?;
    answer.ok_or_else(|| ControlError::Protocol("no answer".into()))
}

/// Sends `command` and calls `each` with every answer line until it returns false or the daemon
/// closes the stream.
pub fn for_each_line(
    socket: &Path,
    command: &Command,
    each: impl FnMut(Value) -> bool,
) -> Result<(), ControlError> {
    lines(socket, command, None, each)
}

fn lines(
    socket: &Path,
    command: &Command,
    patience: Option<Duration>,
    mut each: impl FnMut(Value) -> bool,
) -> Result<(), ControlError> {
    let shown = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| ControlError::Connect {
        path: shown.clone(),
        source,
    })?;
    if let Some(patience) = patience {
        stream
            .set_read_timeout(Some(patience))
            .and_then(|()| stream.set_write_timeout(Some(patience)))
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
    }
    let line = serde_json::to_string(command).map_err(|e| ControlError::Protocol(e.to_string()))?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(|source| ControlError::Connect {
            path: shown,
            source,
        })?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| ControlError::Protocol(e.to_string()))?;
        let value: Value =
            serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
        if let Some(error) = value.get("error").and_then(Value::as_str) {
            return Err(ControlError::Protocol(error.to_owned()));
        }
        if !each(value) {
            break;
        }
    }
    Ok(())
}
