//! A scripted HTTP/1.1 origin: the test sets what the n-th request gets (status, headers,
//! body, interim `1xx` answers, a closed or reset connection). Written on a plain tokio socket,
//! because hyper's server can neither send `103` nor break a connection on purpose.

use std::sync::{Arc, Mutex};

use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What one request gets.
#[derive(Debug, Clone)]
pub enum Step {
    /// An answer.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Interim answers sent first, e.g. `(103, [("link", "</a.css>; rel=preload")])`.
        interim: Vec<(u16, Vec<(String, String)>)>,
    },
    /// The connection is closed without an answer.
    Close,
    /// The connection is reset (RST) without an answer.
    Reset,
}

/// An answer with `status`, `headers` and `body`.
pub fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Step {
    Step::Answer {
        status,
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        body: body.as_bytes().to_vec(),
        interim: Vec::new(),
    }
}

/// A request as the origin read it.
#[derive(Debug, Clone)]
pub struct Asked {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
}

impl Asked {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

/// The origin: each request (over every connection) takes the next step of the script; the
/// last step answers every request after it.
pub struct Scripted {
    pub addr: std::net::SocketAddr,
    steps: Arc<Mutex<Vec<Step>>>,
    asked: Arc<Mutex<Vec<Asked>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    pub async fn start(steps: Vec<Step>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let steps = Arc::new(Mutex::new(steps));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (steps.clone(), asked.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, a) = (s.clone(), a.clone());
                tokio::spawn(serve(stream, s, a));
            }
        });
        Scripted {
            addr,
            steps,
            asked,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces what is left of the script: the next request takes `steps[0]`.
    pub fn then(&self, steps: Vec<Step>) {
        *self.steps.lock().unwrap() = steps;
    }

    /// Requests seen so far.
    pub fn hits(&self) -> usize {
        self.asked.lock().unwrap().len()
    }

    /// Every request, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    pub fn last(&self) -> Asked {
        self.asked().pop().expect("the origin saw no request")
    }
}

async fn serve(mut stream: TcpStream, steps: Arc<Mutex<Vec<Step>>>, asked: Arc<Mutex<Vec<Asked>>>) {
    let mut buf = Vec::new();
    loop {
        let Some((head, rest)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        buf = rest;
        let Some(req) = parse_head(&head) else { return };
        // Bodies of unsafe requests are read and dropped.
        let len: usize = req.header("content-length").parse().unwrap_or(0);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        let step = {
            asked.lock().unwrap().push(req.clone());
            let mut s = steps.lock().unwrap();
            if s.len() > 1 {
                s.remove(0)
            } else {
                s.first().cloned().unwrap_or(Step::Close)
            }
        };
        match step {
            Step::Close => return,
            Step::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Step::Answer {
                status,
                headers,
                body,
                interim,
            } => {
                let mut out = Vec::new();
                for (code, fields) in interim {
                    out.extend_from_slice(format!("HTTP/1.1 {code} Interim\r\n").as_bytes());
                    for (k, v) in fields {
                        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(format!("HTTP/1.1 {status} Scripted\r\n").as_bytes());
                for (k, v) in &headers {
                    out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
                }
                let no_body = status == 304 || status == 204 || req.method == "HEAD";
                if !no_body {
                    out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                if !no_body {
                    out.extend_from_slice(&body);
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads up to the end of a request head; returns it and the bytes after it.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((std::mem::take(buf), rest));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Asked> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.append(
            http::HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            http::HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    Some(Asked {
        method,
        target,
        headers,
    })
}
