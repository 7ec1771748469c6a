//! A minimal HTTP/1.1 client over a raw TCP stream, for requests reqwest
//! would normalise (hop-by-hop headers and the like).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
}

/// Sends `request` verbatim (it must be a complete request, e.g. ending with
/// `\r\n\r\n`) and reads one response (Content-Length, chunked or until EOF).
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes())
            .await
            .expect("write request");
        read_response(&mut s).await
    })
    .await
    .expect("raw request timed out")
}

/// Reads one response from `s` (Content-Length, chunked or until EOF).
pub async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read head");
        assert!(
            n > 0,
            "connection closed before response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };

    let body = if status == 101 || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("content-length");
        while rest.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "EOF in body");
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if get("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                read_more(s, &mut rest).await;
            };
            let size_str = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_str:?}"));
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            while rest.len() < size + 2 {
                read_more(s, &mut rest).await;
            }
            out.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        out
    } else {
        let _ = s.read_to_end(&mut rest).await;
        rest
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 4096];
    let n = s.read(&mut chunk).await.expect("read");
    assert!(n > 0, "EOF in chunked body");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
