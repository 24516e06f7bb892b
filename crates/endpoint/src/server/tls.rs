//! TLS: loading the certificate and key, and the handshake of each connection.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use dynreg_registrar::Store;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tracing::debug;

use super::conn::Conn;
use crate::limit::PendingSlot;

/// The TLS listener: its address and the server certificate.
#[derive(Clone)]
pub struct TlsSettings {
    /// The TCP address for MQTT over TLS.
    pub listen: SocketAddr,
    /// The acceptor holding the certificate chain and key.
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads a PEM certificate chain and private key (TLS 1.2 and 1.3, no client
    /// certificates). The error (kind `InvalidInput`) names the file and what is wrong
    /// with it.
    pub fn load(listen: SocketAddr, cert: &Path, key: &Path) -> io::Result<Self> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(format!("TLS certificate {}: {e}", cert.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "TLS certificate {}: no certificate in the file",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| bad(format!("TLS key {}: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| {
                bad(format!(
                    "TLS certificate and key do not make a server configuration: {e}"
                ))
            })?;
        Ok(Self {
            listen,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Runs the TLS handshake (it counts against the connect timeout), then serves the
/// connection.
pub(super) async fn serve<S: Store>(
    conn: Conn<'_, S>,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    limits: (bool, bool),
    slot: PendingSlot,
) {
    let peer = conn.peer;
    let timeout = conn.shared.config.connect_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => conn.serve(tls_stream, limits, slot).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%peer, "TLS handshake timed out"),
    }
}
