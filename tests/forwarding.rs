//! Pass-through: streaming both ways, header hygiene, origin failures, malformed requests, HTTP/2.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};
use support::{respond, stream_response, Origin, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body = "64KiB"

[[route]]
name = "all"
path = "/cached/{*rest}"
ttl = "10m"
"#;

/// If the proxy buffered a response, the client would never see the first chunk before the origin
/// sends the rest; here the origin sends the rest only after the client saw the first chunk.
#[tokio::test]
async fn uncached_responses_stream_chunk_by_chunk() {
    let (tx_gate, rx_gate) = tokio::sync::mpsc::channel::<()>(1);
    let rx_gate = Arc::new(tokio::sync::Mutex::new(rx_gate));
    let origin = Origin::start_async(move |_| {
        let rx_gate = rx_gate.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"first;")).await.unwrap();
                rx_gate.lock().await.recv().await;
                tx.send(Bytes::from_static(b"second")).await.unwrap();
            });
            stream_response(rx)
        }
    })
    .await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .get(format!("http://{}/stream", proxy.addr).parse().unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrives while the origin is still sending")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    tx_gate.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn chunked_body_over_max_body_streams_whole_and_is_not_stored() {
    let origin = Origin::start_async(|_| async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for _ in 0..16 {
                tx.send(Bytes::from(vec![b'x'; 16 * 1024])).await.unwrap();
            }
        });
        stream_response(rx)
    })
    .await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    for _ in 0..2 {
        let r = proxy.get("/cached/big").send().await;
        assert_eq!(r.body.len(), 256 * 1024);
        assert!(r.body.iter().all(|b| *b == b'x'));
        assert_eq!(r.header("cache-status"), "cachegate; fwd=bypass; detail=too-large");
    }
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn request_bodies_reach_the_origin_intact() {
    let origin = Origin::start(|r| respond(200, &[], r.body.len().to_string())).await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = proxy.req(Method::PUT, "/upload").body(payload.clone()).send().await;
    assert_eq!(r.text(), payload.len().to_string());
    assert_eq!(origin.last().body, payload);
    assert_eq!(origin.last().method, Method::PUT);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let origin = Origin::start(|_| {
        respond(
            200,
            &[
                ("connection", "x-internal"),
                ("x-internal", "secret"),
                ("keep-alive", "timeout=5"),
            ],
            "ok",
        )
    })
    .await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let r = proxy
        .get("/headers")
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("proxy-authorization", "Basic abc")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("host", "public.example")
        .send()
        .await;
    let seen = origin.last();
    for h in ["x-drop-me", "proxy-authorization", "te", "connection"] {
        assert!(seen.headers.get(h).is_none(), "{h} must not reach the origin");
    }
    assert_eq!(
        support::header(&seen.headers, "x-forwarded-for"),
        "203.0.113.9, 127.0.0.1"
    );
    assert_eq!(support::header(&seen.headers, "x-forwarded-proto"), "http");
    // Without preserve_host the client's host is neither forwarded nor keyed.
    assert!(seen.headers.get("x-forwarded-host").is_none());
    assert_eq!(support::header(&seen.headers, "host"), origin.addr.to_string());
    assert!(support::header(&seen.headers, "via").contains("1.1 cachegate"));
    assert!(r.headers.get("x-internal").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    assert!(r.header("via").contains("1.1 cachegate"));
}

#[tokio::test]
async fn preserve_host_forwards_the_client_host() {
    let origin = Origin::echo().await;
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"{}\"\npreserve_host = true\n", origin.url());
    let proxy = Proxy::from_text(&text).await;
    proxy.get("/x").header("host", "public.example").send().await;
    assert_eq!(support::header(&origin.last().headers, "host"), "public.example");
}

#[tokio::test]
async fn origin_connect_failure_is_502_naming_the_cause() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = unused.local_addr().unwrap().port();
    drop(unused);
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://127.0.0.1:{port}\"\n{}", &ROUTES[ROUTES.find("[[route]]").unwrap()..]);
    let proxy = Proxy::from_text(&text).await;
    for path in ["/cached/x", "/plain"] {
        let r = proxy.get(path).send().await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.text(), "origin connect failed\n", "no OS error text for clients");
    }
}

#[tokio::test]
async fn origin_timeout_is_504() {
    let origin = Origin::start_async(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        respond(200, &[], "late")
    })
    .await;
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"{}\"\ntimeout = \"200ms\"\n{}", origin.url(), &ROUTES[ROUTES.find("[[route]]").unwrap()..]);
    let proxy = Proxy::from_text(&text).await;
    for path in ["/cached/x", "/plain"] {
        let r = proxy.get(path).send().await;
        assert_eq!(r.status, 504, "{path}");
        assert!(r.text().starts_with("origin timed out after 200ms"), "{}", r.text());
    }
}

#[tokio::test]
async fn unknown_but_valid_method_is_forwarded_uncached() {
    let origin = Origin::start(|r| respond(207, &[], r.method.to_string())).await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let m = Method::from_bytes(b"PROPFIND").unwrap();
    let r = proxy.req(m.clone(), "/cached/dav").send().await;
    assert_eq!(r.status, 207);
    assert_eq!(r.text(), "PROPFIND");
    proxy.req(m, "/cached/dav").send().await;
    assert_eq!(origin.hits(), 2);
}

async fn raw(proxy: &Proxy, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn http11_without_host_is_400() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let answer = raw(&proxy, b"GET /cached/x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn malformed_request_line_is_400() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let answer = raw(&proxy, b"G(T /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let attempts: [&[u8]; 3] = [
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for a in attempts {
        let answer = raw(&proxy, a).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.0 400"),
            "{}: {answer}",
            String::from_utf8_lossy(a)
        );
    }
    assert_eq!(origin.hits(), 0);
}

/// Content-Length plus chunked: the chunked framing wins (RFC 9112 §6.3) and the request is
/// re-framed towards the origin, so the two hops can never disagree on where it ends.
#[tokio::test]
async fn content_length_with_chunked_is_reframed_not_smuggled() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let answer = raw(&proxy, b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "only the POST reaches the origin: {seen:?}");
    assert_eq!(seen[0].path, "/x");
    assert!(seen[0].body.is_empty());
}

#[tokio::test]
async fn oversized_headers_are_refused_with_4xx() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = raw(&proxy, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(80)]
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for expected in ["MISS", "HIT"] {
        let resp = client
            .get(format!("http://{}/cached/h2", proxy.addr).parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(support::header(resp.headers(), "x-cache"), expected);
    }
    assert_eq!(origin.hits(), 1);
}

/// Headers that can change the origin's answer without being in the key never reach a fill, so
/// one client cannot poison an entry for everyone else.
#[tokio::test]
async fn cache_poisoning_headers_never_reach_a_fill() {
    let origin = Origin::start(|r| {
        let poisoned = ["x-original-url", "x-http-method-override", "x-forwarded-port", "x-host"]
            .iter()
            .any(|h| r.headers.contains_key(*h));
        let fwd_host = support::header(&r.headers, "x-forwarded-host");
        respond(200, &[], format!("poisoned={poisoned} host={fwd_host}"))
    })
    .await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    let r = proxy
        .get("/cached/page")
        .header("host", "good.example")
        .header("x-original-url", "/admin")
        .header("x-http-method-override", "DELETE")
        .header("x-forwarded-port", "666")
        .header("x-forwarded-host", "evil.example")
        .header("x-host", "evil.example")
        .send()
        .await;
    assert_eq!(r.text(), "poisoned=false host=-");
    // Uncached pass-through keeps them: the origin decides for its own answer.
    proxy.get("/uncached").header("x-original-url", "/admin").send().await;
    assert!(origin.last().headers.contains_key("x-original-url"));
}

/// Different spellings of one path share a key; different paths never do.
#[tokio::test]
async fn path_spellings_map_to_one_key_and_distinct_paths_to_distinct_keys() {
    let origin = Origin::echo().await;
    let proxy = Proxy::start(&origin, ROUTES).await;
    proxy.get("/cached/a%3Fb").send().await;
    assert_eq!(
        proxy.get("/cached/a%3fb").send().await.x_cache(),
        "HIT",
        "hex case is normalised"
    );
    assert_eq!(
        proxy.get("/cached/a/b").send().await.x_cache(),
        "MISS",
        "an encoded character is not the separator"
    );
    assert_eq!(
        proxy.get("/cached//a/b").send().await.x_cache(),
        "MISS",
        "an empty segment is a different path"
    );
    assert_eq!(
        origin.last().path,
        "/cached//a/b",
        "the keyed path is the forwarded path"
    );
}

/// An origin that promises 100 bytes, sends 10 and resets: the client gets a clear 502 on a
/// cached route, nothing half-written is stored, and the next request goes to the origin again.
#[tokio::test]
async fn origin_reset_mid_body_stores_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nCache-Control: max-age=60\r\n\r\n0123456789")
                    .await;
                // Dropping the socket cuts the body short.
            });
        }
    });
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[origin]\nurl = \"http://{addr}\"\n{}",
        &ROUTES[ROUTES.find("[[route]]").unwrap()..]
    );
    let proxy = Proxy::from_text(&text).await;
    for _ in 0..2 {
        let r = proxy.get("/cached/partial").send().await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().starts_with("origin request failed"), "{}", r.text());
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "nothing was stored: both went to the origin"
    );
    server.abort();
}

/// `[server] client_timeout` closes a connection whose request head never completes (slowloris)
/// and one left idle after its answer, but never one whose answer is still being prepared: the
/// origin here takes longer than the timeout.
#[tokio::test]
async fn client_timeout_closes_stalled_and_idle_connections_but_not_busy_ones() {
    let origin = Origin::start_async(|seen| async move {
        if seen.path == "/slow" {
            // The view's own duration, longer than client_timeout: what is being tested.
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        respond(200, &[], "slow answer")
    })
    .await;
    let config = ROUTES.replace("max_body = \"64KiB\"", "max_body = \"64KiB\"\nclient_timeout = \"1s\"");
    let proxy = Proxy::start(&origin, &config).await;

    let mut stalled = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), stalled.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a connection with an unfinished head stayed open");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(origin.hits(), 0);

    let mut busy = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    // Keep-alive: the read ends only when cachegate closes the idle connection.
    let read = tokio::time::timeout(Duration::from_secs(15), busy.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "an idle keep-alive connection stayed open; got {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("slow answer"), "{text}");
}
