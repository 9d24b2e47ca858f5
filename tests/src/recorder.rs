//! A recording upstream: answers every request with a fixed chat completion, like
//! [`crate::upstream::upstream`], and keeps what arrived (method, path, headers, body), so a test
//! can prove which requests got through the guard and which never did.
//!
//! The head is recorded as soon as it is complete, before the body is read, so even a request
//! whose framing would leave this parser waiting still shows up.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
};

#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub struct Recorder {
    pub port: u16,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the recorder");
        let port = listener.local_addr().expect("recorder address").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Recorder { port, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("recorder lock").clone()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<Recorded>>) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    while let Some(index) = read_head(&mut reader, seen) {
        let body = read_body(
            &mut reader,
            &seen.lock().expect("recorder lock")[index].headers,
        );
        let Some(body) = body else { return };
        seen.lock().expect("recorder lock")[index].body = body;
        let reply = r#"{"id":"c1","object":"chat.completion","choices":[]}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(reply.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

/// Records the next head and returns its index, or None at the end of the connection.
fn read_head(reader: &mut impl BufRead, seen: &Mutex<Vec<Recorded>>) -> Option<usize> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let mut request = Recorded {
        method: parts.next().unwrap_or_default().to_owned(),
        path: parts.next().unwrap_or_default().to_owned(),
        ..Recorded::default()
    };
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 || line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            request
                .headers
                .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let mut seen = seen.lock().expect("recorder lock");
    seen.push(request);
    Some(seen.len() - 1)
}

fn read_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> Option<Vec<u8>> {
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let length = find("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}
