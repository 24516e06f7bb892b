//! # dynreg-net: whom dynreg's TLS clients trust
//!
//! Every TLS client of dynreg (the device SDK and the load generator over MQTT, the
//! broker workers, the webhook, the PostgreSQL connection) trusts what one of these
//! builds, and speaks through rustls with the `ring` provider and its safe default
//! protocol versions (TLS 1.2 and 1.3):
//! - [`Roots::System`]: the operating system's root certificates;
//! - [`Roots::Pem`]: the CA certificates of a PEM document (a private CA);
//! - [`Roots::SystemAnd`]: both (PostgreSQL's `sslrootcert` beside the system's).
//!
//! [`client_config`] turns them into a rustls client configuration; its errors say
//! which certificate could not be used, and that there was none.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// Whose certificates a client trusts.
#[derive(Debug, Clone, Copy)]
pub enum Roots<'a> {
    /// The operating system's root certificates.
    System,
    /// The CA certificates of this PEM document.
    Pem(&'a [u8]),
    /// The system's roots and the CA certificates of this PEM document.
    SystemAnd(&'a [u8]),
}

/// Why a client configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate of the PEM document does not parse or is not usable as a root.
    #[error("a CA certificate is not usable: {0}")]
    BadCertificate(String),
    /// The PEM document holds no certificate.
    #[error("no PEM certificate found in the CA certificates given")]
    NoCertificate,
    /// The system has no root certificate (no CA bundle installed).
    #[error("no system root certificates found (install ca-certificates, or give a CA file)")]
    NoSystemRoots,
}

impl Roots<'_> {
    /// The root store these name.
    pub fn store(self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        if matches!(self, Self::System | Self::SystemAnd(_)) {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system certificate rustls cannot use is skipped, as browsers do.
                let _ = roots.add(cert);
            }
            if matches!(self, Self::System) && roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
        }
        if let Self::Pem(pem) | Self::SystemAnd(pem) = self {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::BadCertificate(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsError::NoCertificate);
            }
        }
        Ok(roots)
    }
}

/// The rustls provider every client uses: `ring` (it builds with a C compiler only).
pub fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `roots`, without a client certificate.
pub fn client_config(roots: Roots<'_>) -> Result<ClientConfig, TlsError> {
    let roots = roots.store()?;
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_without_certificates_is_refused() {
        assert!(matches!(
            Roots::Pem(b"not a certificate").store(),
            Err(TlsError::NoCertificate)
        ));
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            Roots::Pem(bad).store(),
            Err(TlsError::BadCertificate(_))
        ));
    }
}
