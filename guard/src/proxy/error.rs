//! Errors that stop the proxy from starting or a reload from applying. Request-level refusals are
//! `Reject`s, not errors.

use std::{net::SocketAddr, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot read the upstream key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the upstream key file {path} is empty or not a single-line key")]
    KeyFileContent { path: PathBuf },
    #[error("TLS: cannot load {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid setting {field}: {message}")]
    Setting { field: String, message: String },
}
