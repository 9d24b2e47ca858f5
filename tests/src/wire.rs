//! Raw HTTP/1.1 on a socket, for the attack corpus: write rendered segments (pausing and
//! dripping as told) while reading everything the server sends until it closes, then split what
//! came back into responses.
//!
//! Reading runs beside writing, so an answer sent before the client has finished (a 401 before
//! the body, a 413 from the declared length) is seen even if the server then resets the socket.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::corpus::{Segment, Step};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Everything a connection produced.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub responses: Vec<Response>,
    /// Bytes after the last complete response that are not one.
    pub garbage: Option<String>,
    /// The server had not closed when the client gave up waiting.
    pub still_open: bool,
}

impl Exchange {
    /// Whether this is what `expected` describes, bodies included.
    pub fn matches(&self, expected: &[Step]) -> bool {
        self.garbage.is_none()
            && !self.still_open
            && self.responses.len() == expected.len()
            && self.responses.iter().zip(expected).all(|(got, want)| {
                got.status == want.status
                    && if want.bare {
                        got.body.is_empty()
                    } else {
                        openai_error(&got.body)
                            && want
                                .code
                                .as_ref()
                                .is_none_or(|code| error_code(&got.body) == *code)
                    }
            })
    }

    /// In the expectation syntax, with what does not fit it spelled out.
    pub fn describe(&self) -> String {
        let mut words: Vec<String> = self
            .responses
            .iter()
            .map(|r| {
                let body = if r.body.is_empty() {
                    " bare".to_owned()
                } else if openai_error(&r.body) {
                    format!(" code={}", error_code(&r.body))
                } else {
                    format!(
                        " (body not OpenAI's error shape: {:.80})",
                        String::from_utf8_lossy(&r.body)
                    )
                };
                format!("status {}{body}", r.status)
            })
            .collect();
        if words.is_empty() {
            words.push("closed".into());
        }
        if let Some(garbage) = &self.garbage {
            words.push(format!("unparsable bytes ({garbage})"));
        }
        if self.still_open {
            words.push("still open".into());
        }
        words.join(", ")
    }
}

/// `{"error":{"message":..,"type":..,"code":..}}`, all three strings.
pub fn openai_error(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    ["message", "type", "code"]
        .iter()
        .all(|field| value["error"][field].is_string())
}

/// The `code` of an OpenAI-shaped error body.
pub fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| value["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Sends `segments` on a new connection to `addr` and reads until the server closes, or `patience`
/// has passed.
pub fn exchange(addr: &str, segments: &[Segment], patience: Duration) -> std::io::Result<Exchange> {
    let stream = TcpStream::connect(addr)?;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = stream.try_clone()?;
        let segments = segments.to_vec();
        let done = done.clone();
        std::thread::spawn(move || write_segments(&mut stream, &segments, &done))
    };
    let mut reader = stream;
    reader.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + patience;
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut still_open = false;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    still_open = true;
                    break;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // A reset ends the connection as surely as a FIN does.
            Err(_) => break,
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = reader.shutdown(Shutdown::Both);
    let _ = writer.join();
    let (responses, garbage) = split_responses(&received);
    Ok(Exchange {
        responses,
        garbage,
        still_open,
    })
}

fn write_segments(stream: &mut TcpStream, segments: &[Segment], done: &AtomicBool) {
    let mut drip = None;
    for segment in segments {
        match segment {
            Segment::Pause(wait) => sleep_unless_done(*wait, done),
            Segment::Drip(gap) => drip = Some(*gap),
            Segment::Bytes(bytes) => match drip {
                None => {
                    if stream.write_all(bytes).is_err() {
                        return;
                    }
                }
                Some(gap) => {
                    for byte in bytes {
                        if done.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                            return;
                        }
                        sleep_unless_done(gap, done);
                    }
                }
            },
        }
        if done.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn sleep_unless_done(wait: Duration, done: &AtomicBool) {
    let until = Instant::now() + wait;
    while !done.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10).min(wait));
    }
}

/// Complete responses in order, and a description of anything left over.
pub fn split_responses(mut bytes: &[u8]) -> (Vec<Response>, Option<String>) {
    let mut responses = Vec::new();
    while !bytes.is_empty() {
        match parse_response(bytes) {
            Some((response, used)) => {
                responses.push(response);
                bytes = &bytes[used..];
            }
            None => {
                return (
                    responses,
                    Some(format!("{:.120}", String::from_utf8_lossy(bytes))),
                )
            }
        }
    }
    (responses, None)
}

fn parse_response(bytes: &[u8]) -> Option<(Response, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let rest = &bytes[head_end..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some((
            Response {
                status,
                headers,
                body: Vec::new(),
            },
            head_end,
        ));
    }
    let (body, used) = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        (rest.get(..length)?.to_vec(), length)
    } else {
        (rest.to_vec(), rest.len())
    };
    Some((
        Response {
            status,
            headers,
            body,
        },
        head_end + used,
    ))
}

fn dechunk(mut bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = bytes.len();
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            // No trailers from the servers under test: the blank line ends the body.
            bytes = bytes.strip_prefix(b"\r\n")?;
            return Some((body, total - bytes.len()));
        }
        body.extend_from_slice(bytes.get(..size)?);
        bytes = bytes.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_responses_and_checks_bodies() {
        let error = r#"{"error":{"message":"m","type":"t","code":"c"}}"#;
        let wire = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 Unauthorized\r\ncontent-length: {}\r\n\r\n{error}HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nHTTP/1.1 5",
            error.len()
        );
        let (responses, garbage) = split_responses(wire.as_bytes());
        let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [100, 401, 400, 200]);
        assert_eq!(responses[3].body, b"hi");
        assert_eq!(garbage.as_deref(), Some("HTTP/1.1 5"));
        let exchange = Exchange {
            responses: responses[..3].to_vec(),
            ..Exchange::default()
        };
        let steps =
            crate::corpus::parse_expect("status 100 bare, status 401 code=c, status 400 bare")
                .unwrap()
                .remove(0);
        assert!(exchange.matches(&steps), "{}", exchange.describe());
        assert!(!exchange.matches(&steps[..2]));
        let other =
            crate::corpus::parse_expect("status 100 bare, status 401 code=d, status 400 bare")
                .unwrap()
                .remove(0);
        assert!(!exchange.matches(&other));
        assert_eq!(
            exchange.describe(),
            "status 100 bare, status 401 code=c, status 400 bare"
        );
    }
}
