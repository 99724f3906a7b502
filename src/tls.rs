//! TLS for the listeners, with rustls: certificates and keys read from PEM files, ALPN `h2` and
//! `http/1.1`, TLS 1.2 and 1.3 only, and an optional client CA for mutual TLS.
//!
//! The server configuration sits behind an [`ArcSwap`]: [`ServerTls::reload`] reads the files
//! again and swaps the new configuration in for the handshakes that follow, while connections
//! already established keep the one they were made with. Files that do not load leave the old
//! configuration in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM section of the expected kind.
    #[error("{}: {what}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// Why it did not.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate in the file", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the combination (a key that does not match the certificate, a bad CA).
    #[error("{}: {source}", path.display())]
    Rustls {
        /// The certificate (or CA) file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// `[origin] sni` is not a name a certificate can carry.
    #[error("[origin] sni {name:?}: {reason}")]
    Sni {
        /// The configured name.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The client CA file holds nothing usable as a trust anchor.
    #[error("{}: no usable CA certificate: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What the verifier said.
        reason: String,
    },
}

/// A certificate and key read again, not yet in force.
pub struct Prepared(Arc<ServerConfig>, CertificateDer<'static>);

/// The public listener's TLS, reloadable.
pub struct ServerTls {
    files: TlsConfig,
    config: ArcSwap<ServerConfig>,
    /// The end-entity certificate in force, which this instance's own requests to its
    /// listener (warming) accept and nothing else.
    served: ArcSwap<CertificateDer<'static>>,
}

impl ServerTls {
    /// Loads the files `files` names.
    ///
    /// # Errors
    /// A file that cannot be read or used.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        let (config, served) = server_config(files)?;
        Ok(ServerTls {
            config: ArcSwap::from_pointee(config),
            served: ArcSwap::from_pointee(served),
            files: files.clone(),
        })
    }

    /// Reads the files again into a configuration that [`ServerTls::install`] puts in force:
    /// a reload that fails later on keeps the old one.
    ///
    /// # Errors
    /// As [`ServerTls::load`].
    pub fn prepare(&self) -> Result<Prepared, TlsError> {
        let (config, served) = server_config(&self.files)?;
        Ok(Prepared(Arc::new(config), served))
    }

    /// New handshakes use `prepared`; established connections keep theirs.
    pub fn install(&self, prepared: Prepared) {
        self.config.store(prepared.0);
        self.served.store(Arc::new(prepared.1));
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }

    /// Whether the listener asks clients for a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// A client configuration for this instance's own requests to its listener: it trusts
    /// exactly the certificate the listener presents now (whatever its names or issuer), and
    /// still checks the handshake's signature with it.
    pub fn own_client(self: &Arc<Self>) -> rustls::ClientConfig {
        install_provider();
        // No ALPN here: the connector that uses it sets its own.
        rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OwnCertificate(self.clone())))
            .with_no_client_auth()
    }
}

/// Accepts the certificate [`ServerTls`] serves, and only that one.
#[derive(Debug)]
struct OwnCertificate(Arc<ServerTls>);

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.files.cert).finish()
    }
}

impl rustls::client::danger::ServerCertVerifier for OwnCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.served.load().as_ref().as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Installs ring as rustls' process-wide crypto provider (once; later calls are no-ops).
pub(crate) fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The client configuration for an `https://` origin: the public web roots, or the CAs in
/// `ca_file` (a private CA).
///
/// # Errors
/// A CA file that cannot be read or holds no usable certificate.
pub(crate) fn origin_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    install_provider();
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs(path, "PEM CA certificates")? {
                roots.add(c).map_err(|source| TlsError::Rustls {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn server_config(files: &TlsConfig) -> Result<(ServerConfig, CertificateDer<'static>), TlsError> {
    install_provider();
    let certs = read_certs(&files.cert, "a PEM certificate chain")?;
    let served = certs[0].clone();
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        path: files.key.clone(),
        what: "a PEM private key (PKCS#8, RSA or EC)",
        source,
    })?;
    // rustls speaks TLS 1.2 and 1.3 only, with its safe default suites.
    let builder = ServerConfig::builder();
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "PEM CA certificates")? {
                roots.add(c).map_err(|source| TlsError::Rustls {
                    path: ca.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rustls {
            path: files.cert.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, served))
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_path_buf(),
        what,
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}
