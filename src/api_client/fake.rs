//! Test-only: a scripted HTTP server on 127.0.0.1:0 that answers each connection with
//! the next canned response and records the requests, to check what the client sends
//! and how it reads answers without a whole Sluice.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake answers one connection with.
pub enum Reply {
    /// Status and body (JSON or not; empty for none).
    Http(u16, String),
    /// Read the request, then close without answering.
    Hangup,
}

/// A running fake; `requests()` are the raw requests seen so far (head and body).
pub struct FakeApi {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    pub async fn start(replies: Vec<Reply>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for reply in replies {
                let (mut conn, _) = listener.accept().await.unwrap();
                let request = read_request(&mut conn).await;
                log.lock().unwrap().push(request);
                if let Reply::Http(status, body) = reply {
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    conn.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        FakeApi { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The head, then as many body bytes as `content-length` says.
async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
