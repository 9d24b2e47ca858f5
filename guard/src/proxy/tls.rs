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

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN_CERT: &str = "-----BEGIN CERTIFICATE-----\n";
    const END_CERT: &str = "-----END CERTIFICATE-----\n";

    /// Garbage and truncated PEM in either file: an error naming the file, never a panic.
    #[test]
    fn hostile_pem_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base64_garbage = format!("{BEGIN_CERT}!!!!not base64ב\n{END_CERT}");
        let truncated = format!("{BEGIN_CERT}MIIBszCCAVmgAwIBAgIU\n");
        let short_der = format!("{BEGIN_CERT}MIIB\n{END_CERT}");
        let mismatched = format!("{BEGIN_CERT}AAAA\n-----END PRIVATE KEY-----\n");
        let long_line = format!("{BEGIN_CERT}{}\n{END_CERT}", "A".repeat(1 << 20));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let inputs: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("text", b"hello\n".to_vec()),
            ("binary", (0..=255u8).cycle().take(4096).collect()),
            ("bad base64", base64_garbage.into_bytes()),
            ("truncated", truncated.into_bytes()),
            ("short der", short_der.into_bytes()),
            ("mismatched end", mismatched.into_bytes()),
            ("long line", long_line.into_bytes()),
            ("key only", key_only.as_bytes().to_vec()),
            ("begin only", BEGIN_CERT.as_bytes().to_vec()),
            ("nul", b"-----BEGIN CERTIFICATE-----\n\0\0\0\n".to_vec()),
        ];
        for (name, bytes) in &inputs {
            let path = dir.path().join(name.replace(' ', "_"));
            std::fs::write(&path, bytes).unwrap();
            // The same file as certificate and as key: every reader sees it.
            let config = TlsConfig {
                cert: path.clone(),
                key: path.clone(),
            };
            let err = acceptor(&config)
                .err()
                .unwrap_or_else(|| panic!("{name} accepted"));
            assert!(
                err.to_string().contains(name.replace(' ', "_").as_str()),
                "{name}: {err}"
            );
        }
    }
}
