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
pub struct Prepared(Arc<ServerConfig>);

/// The public listener's TLS, reloadable.
pub struct ServerTls {
    files: TlsConfig,
    config: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Loads the files `files` names.
    ///
    /// # Errors
    /// A file that cannot be read or used.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        Ok(ServerTls {
            config: ArcSwap::from_pointee(server_config(files)?),
            files: files.clone(),
        })
    }

    /// Reads the files again into a configuration that [`ServerTls::install`] puts in force:
    /// a reload that fails later on keeps the old one.
    ///
    /// # Errors
    /// As [`ServerTls::load`].
    pub fn prepare(&self) -> Result<Prepared, TlsError> {
        Ok(Prepared(Arc::new(server_config(&self.files)?)))
    }

    /// New handshakes use `prepared`; established connections keep theirs.
    pub fn install(&self, prepared: Prepared) {
        self.config.store(prepared.0);
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
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

fn server_config(files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    install_provider();
    let certs = read_certs(&files.cert, "a PEM certificate chain")?;
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
    Ok(config)
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
