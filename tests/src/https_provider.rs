//! A local HTTPS LLM provider for the provider-gateway tests: TLS with a certificate from a CA
//! made at start (rcgen), OpenAI's shapes for chat (plain and streaming), embeddings and models,
//! and a check of the injected key (401 in OpenAI's shape when it is wrong). It records what
//! each request carried (header names, whether the key was right, the connection and whether
//! its TLS session was resumed), never a key itself.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    HandshakeKind, ServerConfig, ServerConnection, StreamOwned,
};
use serde_json::{json, Value};

/// One request as the provider saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Lower-case header names.
    pub header_names: Vec<String>,
    /// The `authorization` header was `Bearer <the expected key>`.
    pub key_ok: bool,
    /// Any header value held this text (a caller's credential that should have been removed).
    pub values: Vec<String>,
    pub connection: usize,
    pub resumed: bool,
}

pub struct HttpsProvider {
    pub port: u16,
    /// The CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl HttpsProvider {
    /// Serves with a fresh CA; `key` is the provider key it accepts (as `Authorization: Bearer`);
    /// a streaming chat holds back after its first chunk until `gate` exists.
    pub fn start(key: &str, gate: Option<PathBuf>) -> HttpsProvider {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            // A name of its own, so another provider's CA is a stranger, not an impostor.
            .push(
                DnType::CommonName,
                format!(
                    "proxyguard test provider CA {}",
                    NEXT_CA.fetch_add(1, Ordering::SeqCst)
                ),
            );
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let server_key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server cert");
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind provider");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (seen2, handshakes2, key) = (seen.clone(), handshakes.clone(), key.to_owned());
        std::thread::spawn(move || {
            for (id, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                let (config, seen, handshakes, key, gate) = (
                    config.clone(),
                    seen2.clone(),
                    handshakes2.clone(),
                    key.clone(),
                    gate.clone(),
                );
                std::thread::spawn(move || {
                    let Ok(conn) = ServerConnection::new(config) else {
                        return;
                    };
                    let tls = StreamOwned::new(conn, stream);
                    serve(tls, id, &seen, &handshakes, &key, gate.as_deref());
                });
            }
        });
        HttpsProvider {
            port,
            ca: ca_path,
            seen,
            handshakes,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

static NEXT_CA: AtomicUsize = AtomicUsize::new(0);

type Tls = StreamOwned<ServerConnection, TcpStream>;

fn serve(
    mut tls: Tls,
    connection: usize,
    seen: &Mutex<Vec<Seen>>,
    handshakes: &AtomicUsize,
    key: &str,
    gate: Option<&Path>,
) {
    let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(120)));
    // Complete the handshake first: a refused certificate ends here, before any request.
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    let resumed = tls.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let mut reader = BufReader::new(tls);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let body = if let Some(length) = get("content-length").and_then(|v| v.parse().ok()) {
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        } else if get("transfer-encoding") == Some("chunked") {
            match read_chunked(&mut reader) {
                Some(body) => body,
                None => return,
            }
        } else {
            Vec::new()
        };
        let key_ok = get("authorization") == Some(format!("Bearer {key}").as_str());
        seen.lock().expect("seen lock").push(Seen {
            method: method.clone(),
            path: path.clone(),
            header_names: headers.iter().map(|(n, _)| n.clone()).collect(),
            key_ok,
            values: headers
                .iter()
                .filter(|(n, _)| n != "authorization")
                .map(|(_, v)| v.clone())
                .collect(),
            connection,
            resumed,
        });
        let stream = reader.get_mut();
        let path = path.split('?').next().unwrap_or_default();
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = request["model"].as_str().unwrap_or("unknown").to_owned();
        let written = if !key_ok {
            respond(
                stream,
                401,
                &json!({"error": {"message": "Incorrect API key provided (test provider).", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            )
        } else if path.ends_with("/chat/completions") && request["stream"] == true {
            stream_chat(stream, &model, gate)
        } else if path.ends_with("/chat/completions") {
            respond(
                stream,
                200,
                &json!({
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Hello from the HTTPS provider."}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
                }),
            )
        } else if path.ends_with("/embeddings") {
            respond(
                stream,
                200,
                &json!({
                    "object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, 0.5, 0.75]}],
                    "usage": {"prompt_tokens": 2, "total_tokens": 2}
                }),
            )
        } else if path.ends_with("/models") {
            // Answered with `connection: close`, so the next request needs a new connection
            // (and can show that the client resumed its TLS session).
            let body = json!({"object": "list", "data": [{"id": "gpt-test", "object": "model", "created": 1, "owned_by": "test"}]}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
            return;
        } else {
            respond(
                stream,
                404,
                &json!({"error": {"message": "no such route", "type": "invalid_request_error", "code": null}}),
            )
        };
        if written.is_err() {
            return;
        }
    }
}

fn read_chunked(reader: &mut BufReader<Tls>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn respond(stream: &mut Tls, status: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// SSE in chunked encoding: the first chunk, then (with a gate) nothing more until the gate
/// file exists, which the client creates on receiving the first chunk. So the stream completes
/// only if every hop passed the first chunk on at once.
fn stream_chat(stream: &mut Tls, model: &str, gate: Option<&Path>) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    )?;
    let words = ["one", " two", " three", " four", " five"];
    for (i, word) in words.iter().enumerate() {
        let event = json!({
            "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]
        });
        chunk(stream, &format!("data: {event}\n\n"))?;
        if i == 0 {
            if let Some(gate) = gate {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !gate.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    let last = json!({
        "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    });
    chunk(stream, &format!("data: {last}\n\n"))?;
    chunk(stream, "data: [DONE]\n\n")?;
    stream.write_all(b"0\r\n\r\n")?;
    stream.flush()
}

fn chunk(stream: &mut Tls, data: &str) -> std::io::Result<()> {
    write!(stream, "{:x}\r\n{data}\r\n", data.len())?;
    stream.flush()
}
