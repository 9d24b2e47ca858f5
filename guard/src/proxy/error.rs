//! Errors that stop the proxy from starting or a reload from applying. Request-level refusals are
//! `Reject`s, not errors.

use std::{net::SocketAddr, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("TLS: cannot load {}: {message}", path.display())]
    Tls { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("fleet: {0}")]
    Fleet(crate::fleet::FleetError),
}
