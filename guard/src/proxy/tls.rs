//! TLS termination (threat 8): rustls with the ring provider, TLS 1.2 and 1.3 only. The acceptor
//! is rebuilt from the files on every reload, so a renewed certificate applies without a restart.

use std::sync::Arc;

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;

use super::error::ProxyError;
use crate::config::proxy::TlsConfig;

pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, ProxyError> {
    let fail = |path: &std::path::Path, message: String| ProxyError::Tls {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|err| fail(&config.cert, err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| fail(&config.cert, err.to_string()))?;
    if certs.is_empty() {
        return Err(fail(&config.cert, "no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|err| fail(&config.key, err.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| fail(&config.cert, err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| {
            fail(
                &config.key,
                format!("the key does not fit the certificate: {err}"),
            )
        })?;
    // The proxy speaks HTTP/1.1 only; say so rather than let a client guess.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
