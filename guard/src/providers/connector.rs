//! The gateway's way out: TCP, then TLS with rustls to the provider, its certificate verified
//! against the system roots (rustls-native-certs) plus the route's `ca_file`. There is no
//! unverified mode. One `ClientConfig` per provider is shared by all of its connections, so
//! rustls's in-memory session cache (its default `Resumption`) resumes TLS sessions when the
//! pool opens a new connection.

use std::{
    future::Future,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Why a connection to a provider could not be made. Nothing here holds a header or a key.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the provider's URL has no host")]
    NoHost,
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {host}: {source}")]
    Connect {
        host: String,
        source: std::io::Error,
    },
    #[error("no connection to {host} within {secs}s")]
    Timeout { host: String, secs: u64 },
    /// The TLS handshake failed: a certificate the roots do not vouch for, a wrong name, an
    /// expired certificate, or a protocol mismatch. `reason` is rustls's.
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: rustls::Error },
    #[error("TLS with {host} failed: {source}")]
    TlsIo {
        host: String,
        source: std::io::Error,
    },
}

/// The trust anchors: the system's roots, plus `ca_file`'s certificates when it is set.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|err| format!("{} is not PEM: {err}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate; put the provider's CA certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|err| {
                format!(
                    "{} holds a certificate rustls refuses: {err}",
                    path.display()
                )
            })?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no trust anchors: the system has no CA certificates (install ca-certificates) and ca_file is not set"
                .into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How the gateway's pools (`pool`) open a connection: TCP, then verified TLS, within `timeout`.
#[derive(Clone)]
pub struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl TlsConnector {
    pub fn new(config: Arc<ClientConfig>, timeout: Duration) -> TlsConnector {
        TlsConnector {
            tls: tokio_rustls::TlsConnector::from(config),
            timeout,
        }
    }
}

/// One TLS connection to a provider.
pub struct ProviderStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for ProviderStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProviderStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<ProviderStream>, ConnectError>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<ProviderStream>;
    type Error = ConnectError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectError::NoHost)?.to_owned();
            let bare = host.trim_matches(['[', ']']).to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let connecting = async {
                let addrs: Vec<_> = tokio::net::lookup_host((bare.as_str(), port))
                    .await
                    .map_err(|source| ConnectError::Resolve {
                        host: host.clone(),
                        source,
                    })?
                    .collect();
                let mut last = None;
                let mut tcp = None;
                for addr in addrs {
                    match TcpStream::connect(addr).await {
                        Ok(stream) => {
                            tcp = Some(stream);
                            break;
                        }
                        Err(err) => last = Some(err),
                    }
                }
                let tcp = tcp.ok_or_else(|| ConnectError::Connect {
                    host: host.clone(),
                    source: last.unwrap_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    }),
                })?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(bare.clone()).map_err(|_| ConnectError::NoHost)?;
                tls.connect(name, tcp).await.map_err(|source| {
                    match source
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(reason) => ConnectError::Tls {
                            host: host.clone(),
                            reason: reason.clone(),
                        },
                        None => ConnectError::TlsIo {
                            host: host.clone(),
                            source,
                        },
                    }
                })
            };
            match tokio::time::timeout(timeout, connecting).await {
                Ok(stream) => Ok(TokioIo::new(ProviderStream(stream?))),
                Err(_) => Err(ConnectError::Timeout {
                    host,
                    secs: timeout.as_secs(),
                }),
            }
        })
    }
}
