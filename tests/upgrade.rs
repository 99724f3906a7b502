//! WebSocket (any HTTP/1.1 `Upgrade`) through cachegate: forwarded after normalisation, never
//! cached, and relayed both ways once the origin switches protocols.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads up to the end of a message head.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "connection closed inside a head");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

/// A WebSocket-style origin: answers the upgrade with 101, then echoes every byte; sends the
/// request head it saw on `seen`.
async fn echo_origin() -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let _ = tx.send(head);
                s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                      sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                )
                .await
                .unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed_both_ways_and_never_cached() {
    let (addr, mut seen) = echo_origin().await;
    let origin_url = format!("http://{addr}");
    let p = support::Proxy::from_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"{origin_url}\"\n\
         [identity]\nrole_header = \"X-User-Role\"\n\
         [[route]]\nname = \"ws\"\npath = \"/ws/{{*rest}}\"\nttl = \"10m\"\n"
    ))
    .await;
    for round in 0..2 {
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(
            b"GET /ws/chat HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
              x-user-role: admin\r\n\r\n",
        )
        .await
        .unwrap();
        let head = tokio::time::timeout(Duration::from_secs(10), read_head(&mut c))
            .await
            .unwrap();
        assert!(head.starts_with("http/1.1 101"), "round {round}: {head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        assert!(
            !head.contains("x-cache: hit"),
            "an upgrade is never a cache hit: {head}"
        );
        let forwarded = seen.recv().await.unwrap();
        assert!(forwarded.contains("upgrade: websocket"), "{forwarded}");
        assert!(
            forwarded.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
            "{forwarded}"
        );
        assert!(
            !forwarded.contains("x-user-role"),
            "an untrusted identity header is removed: {forwarded}"
        );
        for msg in [&b"ping"[..], &b"a longer frame of bytes"[..]] {
            c.write_all(msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(back, msg);
        }
    }
}

/// An upgrade offer on a write is not a tunnel: the write is forwarded as a write and its
/// success purges, so the next read is fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_offer_on_a_write_still_purges() {
    let (origin, _) = support::versioned_origin().await;
    let p = support::Proxy::start(
        &origin,
        "[[route]]\nname = \"c\"\npath = \"/courses/\"\nttl = \"10m\"\ntags = [\"courses\"]\n\
         [[invalidate]]\npath = \"/courses/{*rest}\"\ntags = [\"courses\"]\n",
    )
    .await;
    assert_eq!(p.get("/courses/").send().await.text(), "v0");
    assert_eq!(p.get("/courses/").send().await.x_cache(), "HIT");
    let w = p
        .req(http::Method::POST, "/courses/")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .send()
        .await;
    assert_eq!(w.text(), "1");
    assert_eq!(p.get("/courses/").send().await.text(), "v1", "the write purged");
}

/// Shutdown closes upgraded connections too: the listener no longer tracks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_upgraded_connections() {
    let (addr, _seen) = echo_origin().await;
    let mut p = support::Proxy::from_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://{addr}\"\n"
    ))
    .await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut c).await.starts_with("http/1.1 101"));
    c.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    c.read_exact(&mut one).await.unwrap();
    tokio::time::timeout(Duration::from_secs(40), p.running.take().unwrap().shutdown())
        .await
        .expect("shutdown does not wait on the tunnel");
    let closed = tokio::time::timeout(Duration::from_secs(10), c.read(&mut one)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed at shutdown: {closed:?}"
    );
}

/// A tunnel on which nothing moves for `tunnel_idle_timeout` is closed (a client that vanished
/// without closing would hold both connections for ever); traffic keeps it open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed() {
    let (addr, _seen) = echo_origin().await;
    let p = support::Proxy::from_text(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ntunnel_idle_timeout = \"2s\"\n\
         [origin]\nurl = \"http://{addr}\"\n"
    ))
    .await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut c).await.starts_with("http/1.1 101"));
    let mut one = [0u8; 1];
    // Echoes keep it alive past the idle time, counted from the last byte.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3000) {
        c.write_all(b"x").await.unwrap();
        c.read_exact(&mut one).await.expect("open while bytes flow");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then silence: closed by cachegate.
    let closed = tokio::time::timeout(Duration::from_secs(20), c.read(&mut one)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed when idle: {closed:?}");
}

/// Only WebSocket is upgraded: an `h2c` offer (the request-smuggling route to a raw origin
/// connection) is dropped with its `HTTP2-Settings`, and the GET is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_offer_is_not_forwarded() {
    let (origin, _) = support::versioned_origin().await;
    let p = support::Proxy::start(
        &origin,
        "[[route]]\nname = \"c\"\npath = \"/courses/\"\nttl = \"10m\"\n",
    )
    .await;
    let r = p
        .get("/courses/")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .send()
        .await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "v0"));
    let seen = origin.seen();
    let h = &seen.last().unwrap().headers;
    assert!(!h.contains_key("upgrade") && !h.contains_key("http2-settings"), "{h:?}");
}
