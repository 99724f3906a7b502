//! A real `redis-server` that speaks only TLS, with a certificate from a CA made for the test,
//! and an ACL user. Plain connections are off (`port 0`), clients are not asked for
//! certificates, and the `default` user is disabled: every client logs in as [`TLS_USER`].
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// The ACL user with every right (`~* &* +@all`).
pub const TLS_USER: &str = "cachegate";
/// Its password.
pub const TLS_PASSWORD: &str = "tls-test-secret";

const START_DEADLINE: Duration = Duration::from_secs(10);

/// rustls, as the `redis` crate builds it, has no crypto provider of its own; TLS clients need a
/// process-wide default. Installing it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS-only `redis-server` on a free loopback port, killed by pid on drop.
pub struct TlsRedis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Makes a CA and a server certificate for `127.0.0.1` and `localhost`, starts the server
    /// and waits until [`TLS_USER`] gets a `PONG` over TLS.
    pub async fn start() -> TlsRedis {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        write_certificates(&dir);
        let port = super::free_port();
        let d = dir.path().display();
        let conf = format!(
            "port 0\n\
             tls-port {port}\n\
             bind 127.0.0.1\n\
             tls-cert-file \"{d}/server.pem\"\n\
             tls-key-file \"{d}/server.key\"\n\
             tls-ca-cert-file \"{d}/ca.pem\"\n\
             tls-auth-clients no\n\
             save \"\"\n\
             appendonly no\n\
             dir \"{d}\"\n\
             logfile \"{d}/redis.log\"\n\
             user default off\n\
             user {TLS_USER} on >{TLS_PASSWORD} ~* &* +@all\n"
        );
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let output = std::fs::File::create(dir.path().join("output.log")).unwrap();
        let child = Command::new("redis-server")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with: apt-get install -y redis-server (scripts/test.sh does)")
            });
        let mut server = TlsRedis {
            port,
            child: Some(child),
            dir,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let end = Instant::now() + START_DEADLINE;
        loop {
            let err = match tokio::time::timeout(Duration::from_secs(2), self.ping()).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "PING timed out".to_string(),
            };
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                let state = match exited {
                    Some(status) => format!("redis-server exited ({status})"),
                    None => format!("redis-server did not answer over TLS within {START_DEADLINE:?}"),
                };
                panic!(
                    "{state}; last error: {err}\n(it must be built with TLS support, as Debian's \
                     redis-server is)\n--- log tail:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ping(&self) -> redis::RedisResult<String> {
        let mut c = self.conn().await?;
        redis::cmd("PING").query_async(&mut c).await
    }

    /// `rediss://cachegate:password@127.0.0.1:port/0`.
    pub fn url(&self) -> String {
        format!("rediss://{TLS_USER}:{TLS_PASSWORD}@127.0.0.1:{}/0", self.port)
    }

    /// The PEM file of the CA that signed the server certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).unwrap()
    }

    /// A client for [`TlsRedis::url`] that trusts the test CA (and no other root).
    pub fn client(&self) -> redis::Client {
        redis::Client::build_with_tls(
            self.url(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(self.ca_pem()),
            },
        )
        .expect("a TLS client for the test server")
    }

    pub async fn conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        self.client().get_multiplexed_async_connection().await
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        // Start-up errors (a bad option, a port in use) go to the output before the log opens.
        let mut log = std::fs::read_to_string(self.dir.path().join("output.log")).unwrap_or_default();
        log.push_str(&std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default());
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Kills the server (SIGKILL, by pid) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
fn write_certificates(dir: &tempfile::TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    use rcgen::{KeyUsagePurpose as Usage, SanType};

    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cachegate test CA");
    ca.key_usages = vec![Usage::KeyCertSign, Usage::CrlSign, Usage::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    assert!(server
        .subject_alt_names
        .iter()
        .any(|s| matches!(s, SanType::IpAddress(_))));
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    server.key_usages = vec![Usage::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let d = dir.path();
    std::fs::write(d.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(d.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(d.join("server.key"), server_key.serialize_pem()).unwrap();
}
