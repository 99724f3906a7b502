//! TLS on the public listener, with certificates made in the test: MISS → HIT over HTTP/1.1
//! and HTTP/2 (ALPN), TLS 1.1 refused, the certificate reloaded without dropping connections,
//! a bad certificate on reload refused, mutual TLS, and a stalled handshake closed.

mod support;

use std::time::Duration;

use support::pki::{alpn, connect, peer_certificate, ClientOptions, Sender, TestCa};
use support::{Origin, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
[[route]]
name = "course_list"
path = "/courses/{*rest}"
ttl = "10m"
"#;

/// A cachegate started from a config file (so that a reload reads it again) with TLS.
async fn tls_proxy(origin: &Origin, ca: &TestCa, extra: &str) -> Proxy {
    tls_proxy_with(origin, ca, extra, Default::default()).await
}

async fn tls_proxy_with(origin: &Origin, ca: &TestCa, extra: &str, secrets: cachegate::secrets::Secrets) -> Proxy {
    let (cert, key) = ca.issue("server", "cachegate test server", false);
    let text = support::config_text(
        origin,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nclient_timeout = \"2s\"\n\
             tls = {{ cert = \"{}\", key = \"{}\"{extra} }}\n{ROUTES}",
            cert.display(),
            key.display()
        ),
    );
    let path = ca.dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let config = cachegate::config::load(&path).unwrap();
    Proxy::from_running(cachegate::app::start_with(config, secrets).await.unwrap())
}

fn opts<'a>(ca: &'a TestCa, alpn: &'a [&'a [u8]]) -> ClientOptions<'a> {
    ClientOptions {
        ca_pem: ca.ca_pem(),
        alpn,
        identity: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_over_http1_and_h2_with_the_same_key() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let p = tls_proxy(&origin, &ca, "").await;
    for (proto, h2, path) in [
        (&b"http/1.1"[..], false, "/courses/h1"),
        (&b"h2"[..], true, "/courses/h2"),
    ] {
        let stream = connect(p.addr, &opts(&ca, &[proto])).await.unwrap();
        assert_eq!(
            alpn(&stream).as_deref(),
            Some(proto),
            "ALPN settles on what the client offered"
        );
        let mut s = Sender::over(stream, h2).await;
        let (status, h, body) = s.get(path).await;
        assert_eq!(
            (status.as_u16(), support::header(&h, "x-cache").as_str()),
            (200, "MISS")
        );
        assert_eq!(body, "v0");
        let (_, h, body) = s.get(path).await;
        assert_eq!(support::header(&h, "x-cache"), "HIT", "{proto:?}");
        assert_eq!(support::header(&h, "cache-status"), "cachegate; hit");
        assert!(h.contains_key("age"), "Age on a hit over {proto:?}");
        assert_eq!(body, "v0");
    }
    // One key whatever the protocol: the h1 entry is a hit over h2.
    let mut s = Sender::over(connect(p.addr, &opts(&ca, &[b"h2"])).await.unwrap(), true).await;
    assert_eq!(support::header(&s.get("/courses/h1").await.1, "x-cache"), "HIT");
    assert_eq!(origin.hits(), 2);
    // The origin is told the client spoke https.
    assert_eq!(
        support::header(&origin.seen().last().unwrap().headers, "x-forwarded-proto"),
        "https"
    );
}

/// A hand-made TLS 1.1 ClientHello (TLS_RSA_WITH_AES_128_CBC_SHA, no extensions) gets an
/// alert or a closed connection, never a ServerHello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_only_tls_1_1_is_refused() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let p = tls_proxy(&origin, &ca, "").await;
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // one cipher suite
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut answer = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("answered or closed")
        .unwrap_or(0);
    assert!(
        n == 0 || answer[0] == 0x15,
        "expected an alert (0x15) or a close, got record type {:#x}",
        answer[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_for_new_connections_and_keeps_old_ones() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let p = tls_proxy(&origin, &ca, "").await;
    let first = connect(p.addr, &opts(&ca, &[b"http/1.1"])).await.unwrap();
    let old_cert = peer_certificate(&first);
    let mut kept = Sender::over(first, false).await;
    assert_eq!(kept.get("/courses/a").await.0, 200);

    ca.issue("server", "cachegate renewed", false); // same paths, new certificate
    p.running()
        .reloader
        .reload()
        .await
        .expect("the renewed certificate loads");
    let renewed = connect(p.addr, &opts(&ca, &[b"http/1.1"])).await.unwrap();
    assert_ne!(
        peer_certificate(&renewed),
        old_cert,
        "a new connection sees the new certificate"
    );
    assert_eq!(
        kept.get("/courses/a").await.0,
        200,
        "the established connection keeps working"
    );

    // A broken key on reload: refused, counted, and the renewed certificate stays.
    let served = peer_certificate(&renewed);
    support::pki::write_atomically(&ca.dir.path().join("server.key"), b"not a key");
    let e = p.running().reloader.reload().await.expect_err("a bad key is refused");
    assert!(e.to_string().contains("server.key"), "{e}");
    let metrics = p.admin_req(http::Method::GET, "/metrics").send().await.text();
    assert!(
        metrics.contains("cachegate_config_reloads_total{result=\"error\"} 1"),
        "the refused reload is counted"
    );
    let after = connect(p.addr, &opts(&ca, &[b"http/1.1"])).await.unwrap();
    assert_eq!(peer_certificate(&after), served, "the old certificate stays in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let clients = TestCa::new("gateway CA");
    let p = tls_proxy(
        &origin,
        &ca,
        &format!(", client_ca = \"{}\"", clients.ca_file().display()),
    )
    .await;
    let gateway = clients.issue("gateway", "gateway", true);
    let with = ClientOptions {
        identity: Some(gateway),
        ..opts(&ca, &[b"http/1.1"])
    };
    let mut s = Sender::over(connect(p.addr, &with).await.unwrap(), false).await;
    assert_eq!(s.get("/courses/m").await.0, 200);

    // Without a certificate the handshake (or the first read after it, in TLS 1.3) fails.
    let refused = match connect(p.addr, &opts(&ca, &[b"http/1.1"])).await {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream
                .write_all(b"GET /courses/m HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
                .await;
            let mut buf = [0u8; 16];
            !matches!(stream.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate is served nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_after_client_timeout() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let p = tls_proxy(&origin, &ca, "").await;
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a record, then nothing
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the server: {closed:?}"
    );
}

#[test]
fn check_refuses_unusable_certificate_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.pem"), "nothing").unwrap();
    let config = cachegate::config::from_str(
        &format!(
            "[origin]\nurl = \"http://127.0.0.1:1\"\n[server]\ntls = {{ cert = \"{0}/bad.pem\", key = \"{0}/bad.pem\" }}\n",
            dir.path().display()
        ),
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let e = cachegate::tls::ServerTls::load(config.server.tls.as_ref().unwrap()).expect_err("refused");
    assert!(e.to_string().contains("bad.pem"), "{e}");
}

/// An `https://` origin with a certificate from a private CA, answering over HTTP/2 when
/// offered: returns the origin's address and a counter of the HTTP/2 requests it served.
async fn tls_origin(ca: &TestCa) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (cert, key) = ca.issue("origin", "origin", false);
    let files = cachegate::config::TlsConfig {
        cert,
        key,
        client_ca: None,
    };
    let acceptor = cachegate::tls::ServerTls::load(&files).unwrap().acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h2 = Arc::new(AtomicUsize::new(0));
    let counted = h2.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if req.version() == http::Version::HTTP_2 {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("cache-control", "max-age=60")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"secure")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, h2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_origin_with_a_private_ca_over_h2_and_a_wrong_ca_is_a_502() {
    let ca = TestCa::new("origin CA");
    let (addr, h2) = tls_origin(&ca).await;
    let route = "[[route]]\nname = \"r\"\npath = \"/r/{*rest}\"\nttl = \"origin\"\n";
    let p = Proxy::from_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [origin]\nurl = \"https://{addr}\"\nca_file = \"{}\"\n{route}",
        ca.ca_file().display()
    ))
    .await;
    let first = p.get("/r/a").send().await;
    assert_eq!(
        (first.status.as_u16(), first.x_cache().as_str(), first.text().as_str()),
        (200, "MISS", "secure")
    );
    assert_eq!(p.get("/r/a").send().await.x_cache(), "HIT");
    assert_eq!(
        h2.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the fill went over HTTP/2 (ALPN)"
    );

    // The origin's certificate is not from the CA cachegate trusts.
    let other = TestCa::new("someone else's CA");
    let wrong = Proxy::from_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [origin]\nurl = \"https://{addr}\"\nca_file = \"{}\"\n{route}",
        other.ca_file().display()
    ))
    .await;
    let r = wrong.get("/r/a").send().await;
    assert_eq!(r.status.as_u16(), 502);
    assert_eq!(r.text(), "origin connect failed\n");
}

/// `listen_http` next to TLS: `308` to the same URL over https by default, or served like the
/// TLS listener (same cache, `X-Forwarded-Proto: http`) with `redirect_http = false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_http_redirects_to_https_or_serves() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let p = tls_proxy(&origin, &ca, " }\nlisten_http = \"127.0.0.1:0\"\n#").await;
    let plain = p.running().http_addr.expect("listen_http is bound");
    let mut tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
    tcp.write_all(b"GET /courses/a?x=1 HTTP/1.1\r\nhost: example.test:8080\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains(&format!(
            "location: https://example.test:{}/courses/a?x=1",
            p.addr.port()
        )),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("cache-control: no-store"),
        "{answer}"
    );
    // A host the client cannot name plainly gets no redirect.
    for bad in [
        "GET /a HTTP/1.1\r\nhost: victim@evil.test\r\nconnection: close\r\n\r\n",
        "GET http://evil.test/a HTTP/1.1\r\nhost: victim.test\r\nconnection: close\r\n\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
        tcp.write_all(bad.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{bad:?}: {answer}");
    }
    assert_eq!(origin.hits(), 0, "a redirect never reaches the origin");

    let serving = tls_proxy(
        &origin,
        &ca,
        " }\nlisten_http = \"127.0.0.1:0\"\nredirect_http = false\n#",
    )
    .await;
    let plain = serving.running().http_addr.unwrap();
    let get = || async move {
        let mut tcp = tokio::net::TcpStream::connect(plain).await.unwrap();
        tcp.write_all(b"GET /courses/p HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer.to_ascii_lowercase()
    };
    assert!(get().await.contains("x-cache: miss"));
    assert!(get().await.contains("x-cache: hit"));
    assert_eq!(
        support::header(&origin.seen().last().unwrap().headers, "x-forwarded-proto"),
        "http"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_http_without_tls_does_not_start() {
    let config = cachegate::config::from_str(
        "[origin]\nurl = \"http://127.0.0.1:1\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nlisten_http = \"127.0.0.1:0\"\n",
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let e = cachegate::app::start_with(config, Default::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(e.exit_code(), 64);
    assert!(e.to_string().contains("listen_http"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_plain_listener_beside_mutual_tls_does_not_start() {
    let ca = TestCa::new("tls test CA");
    let (cert, key) = ca.issue("server", "s", false);
    let config = cachegate::config::from_str(
        &format!(
            "[origin]\nurl = \"http://127.0.0.1:1\"\n[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             tls = {{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}\nlisten_http = \"127.0.0.1:0\"\nredirect_http = false\n",
            cert.display(),
            key.display(),
            ca.ca_file().display()
        ),
        std::path::Path::new("p.toml"),
    )
    .unwrap();
    let e = cachegate::app::start_with(config, Default::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(e.exit_code(), 64);
    assert!(e.to_string().contains("client_ca"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_can_speak_tls_too() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let (cert, key) = ca.issue("admin", "admin", false);
    let extra = format!(
        " }}\nadmin_tls = {{ cert = \"{}\", key = \"{}\" }}\n#",
        cert.display(),
        key.display()
    );
    let p = tls_proxy(&origin, &ca, &extra).await;
    let mut s = Sender::over(connect(p.admin, &opts(&ca, &[b"http/1.1"])).await.unwrap(), false).await;
    let (status, _, body) = s.get("/healthz").await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"ok\n"[..]));
    // Plain HTTP to the admin listener no longer works.
    let mut tcp = tokio::net::TcpStream::connect(p.admin).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(!buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
}

/// Warming goes through the TLS listener like a client (so the entries are keyed as https and
/// serve https clients), trusting exactly the listener's certificate; with mutual TLS it cannot
/// present a client certificate and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_goes_through_the_tls_listener() {
    let (origin, _) = support::versioned_origin().await;
    let ca = TestCa::new("tls test CA");
    let secrets = || cachegate::secrets::Secrets {
        purge_token: Some("t".into()),
        ..Default::default()
    };
    let p = tls_proxy_with(&origin, &ca, "", secrets()).await;
    let r = p
        .admin_req(http::Method::POST, "/admin/warm")
        .header("authorization", "Bearer t")
        .body(r#"{"paths": ["/courses/warm"]}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"warmed\":1"), "{}", r.text());
    let mut s = Sender::over(connect(p.addr, &opts(&ca, &[b"h2"])).await.unwrap(), true).await;
    let (_, h, body) = s.get("/courses/warm").await;
    assert_eq!(
        (support::header(&h, "x-cache").as_str(), &body[..]),
        ("HIT", &b"v0"[..])
    );
    assert_eq!(origin.hits(), 1);

    let (ca_cert, _) = (ca.ca_file(), ());
    let mutual = format!(", client_ca = \"{}\"", ca_cert.display());
    let p = tls_proxy_with(&origin, &ca, &mutual, secrets()).await;
    let r = p
        .admin_req(http::Method::POST, "/admin/warm")
        .header("authorization", "Bearer t")
        .body(r#"{"paths": ["/courses/warm2"]}"#)
        .send()
        .await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text());
    assert!(r.text().contains("client certificates"), "{}", r.text());
}
