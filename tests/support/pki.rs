//! Certificates made in the test with rcgen, and a TLS client for the listener: a test CA,
//! server and client certificates it signs, and HTTP/1.1 or HTTP/2 over rustls with ALPN.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::KeyUsagePurpose as Usage;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::client::TlsStream;

/// A CA that signs certificates for one test; its files live in a temporary directory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        super::tls_redis::install_crypto_provider();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign, Usage::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = ca.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(ca, key),
            pem: cert.pem(),
            dir,
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `127.0.0.1` and `localhost` (server) or a client certificate, written
    /// as `<stem>.pem` and `<stem>.key`; returns their paths.
    pub fn issue(&self, stem: &str, common_name: &str, client: bool) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.key_usages = vec![Usage::DigitalSignature];
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{stem}.pem")),
            self.dir.path().join(format!("{stem}.key")),
        );
        write_atomically(&c, cert.pem().as_bytes());
        write_atomically(&k, key.serialize_pem().as_bytes());
        (c, k)
    }
}

/// Replaces a file in one step, as an operator's `mv` would: a reload never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What a TLS client offers.
pub struct ClientOptions<'a> {
    pub ca_pem: &'a str,
    pub alpn: &'a [&'a [u8]],
    /// A client certificate and key (PEM files), for mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// A TLS connection to `addr`, verified against the CA, offering `alpn`.
pub async fn connect(addr: SocketAddr, opts: &ClientOptions<'_>) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(opts.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match &opts.identity {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await
}

/// The certificate the server presented.
pub fn peer_certificate(stream: &TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The protocol ALPN settled on.
pub fn alpn(stream: &TlsStream<tokio::net::TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// A request sender over an established TLS connection, HTTP/1.1 or HTTP/2.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    pub async fn over(stream: TlsStream<tokio::net::TcpStream>, h2: bool) -> Sender {
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Sender::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Sender::H1(send)
        }
    }

    /// GET `path` (with `Host`/`:authority` 127.0.0.1); status, headers and body.
    pub async fn get(&mut self, path: &str) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let resp: Response<hyper::body::Incoming> = match self {
            Sender::H1(s) => {
                let req = Request::get(path)
                    .header("host", "127.0.0.1")
                    .body(Empty::new())
                    .unwrap();
                // The connection task may not have finished the last exchange yet;
                // sending before it is ready fails with "connection was not ready".
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Sender::H2(s) => {
                let req = Request::get(format!("https://127.0.0.1{path}"))
                    .version(http::Version::HTTP_2)
                    .body(Empty::new())
                    .unwrap();
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let (parts, body) = resp.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }
}
