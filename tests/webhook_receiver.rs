//! A webhook receiver for tests: a small HTTP/1.1 server on loopback that records every request and
//! answers with scripted status codes (then a default one).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body))
    }
}

struct State {
    script: VecDeque<u16>,
    then: u16,
    received: Vec<Received>,
}

pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl WebhookReceiver {
    /// Answers 200 to everything.
    pub async fn start() -> Self {
        Self::answering(&[], 200).await
    }

    /// Answers `script` in order, then `then` to every later request.
    pub async fn answering(script: &[u16], then: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let state = Arc::new(Mutex::new(State { script: script.iter().copied().collect(), then, received: Vec::new() }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, shared.clone()));
            }
        });
        WebhookReceiver { url: format!("http://127.0.0.1:{port}/hook"), state }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").received.clone()
    }

    /// Waits until at least `count` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(tokio::time::Instant::now() < deadline, "the receiver got {} of {count} expected requests", received.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads one request (headers, then `Content-Length` bytes of body), records it, answers, closes.
async fn serve(mut socket: TcpStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value.trim())) {
                headers.append(name, value);
            }
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + length {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    let status = {
        let mut state = state.lock().expect("receiver state");
        state.received.push(Received { method, path, headers, body });
        let then = state.then;
        state.script.pop_front().unwrap_or(then)
    };
    let reply = format!("HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.shutdown().await;
}
