//! A raw recording upstream: a tokio `TcpListener` that keeps every byte it receives and
//! parses requests itself (request line, headers, a Content-Length or chunked body), so a
//! test sees exactly what reached a backend — including bytes a hyper server would hide
//! (a smuggled second request, a truncated body, a half-sent head).
//!
//! Every complete request is answered `200 OK` with a JSON body
//! `{"backend", "method", "path", "query", "version", "headers": {lowercase name: values joined by
//! ", "}, "body_len", "body_fnv"}` and the connection is kept alive; `/sleep/MS` is
//! answered after MS milliseconds. A request that cannot
//! be parsed (or a connection closed mid-request) is not recorded as a request; its bytes
//! still count in `raw_bytes()`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How much of the raw byte stream is kept for failure messages.
const RAW_KEEP: usize = 64 * 1024;

/// FNV-1a, 64 bits: a digest of a body (what `body_fnv` in the echo is, as 16 hex digits).
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `len` bytes that are not a repeating pattern (xorshift64), so a lost, duplicated or
/// reordered piece changes the digest.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One complete request as the recorder read it.
#[derive(Clone, Debug)]
pub struct RecRequest {
    pub method: String,
    /// The request target as received (path and query).
    pub target: String,
    pub version: String,
    /// Every header line, in order, names as received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection (0, 1, …) it came on.
    pub conn: usize,
    /// Its size on the wire (head, chunk framing and body).
    pub wire_len: usize,
}

impl RecRequest {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// The values of every `name` header line joined with ", " (None when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    /// Short description for failure messages (no body).
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} headers={:?} body_len={}",
            self.method,
            self.target,
            self.version,
            self.headers,
            self.body.len()
        )
    }
}

#[derive(Default)]
struct State {
    requests: Vec<RecRequest>,
    raw_bytes: usize,
    raw_head: Vec<u8>,
    accepts: usize,
}

pub struct Recorder {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Listens on 127.0.0.1 (a port chosen by the kernel) in the current runtime; `name`
    /// is the `backend` field of its answers.
    pub async fn start(name: &str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let name_owned = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let conn = {
                    let mut s = st.lock().unwrap();
                    s.accepts += 1;
                    s.accepts - 1
                };
                tokio::spawn(serve_conn(stream, conn, name_owned.clone(), st.clone()));
            }
        });
        Recorder {
            name: name.to_string(),
            addr,
            state,
            task,
        }
    }

    /// `127.0.0.1:PORT`, as written in configs.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// Complete requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// How many complete requests were received.
    pub fn count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    /// Every byte received, on every connection.
    pub fn raw_bytes(&self) -> usize {
        self.state.lock().unwrap().raw_bytes
    }

    /// Bytes received that are not part of a complete request: a partial, unparsable or
    /// smuggled remainder.
    pub fn stray_bytes(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.raw_bytes - s.requests.iter().map(|r| r.wire_len).sum::<usize>()
    }

    /// Connections accepted.
    pub fn accepts(&self) -> usize {
        self.state.lock().unwrap().accepts
    }

    /// The first 64 KiB received (all connections, in arrival order), for messages.
    pub fn raw_preview(&self) -> String {
        let s = self.state.lock().unwrap();
        let shown = &s.raw_head[..s.raw_head.len().min(2048)];
        String::from_utf8_lossy(shown).to_string()
    }

    /// Summaries of the requests received, for messages.
    pub fn summaries(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.summary())
            .collect()
    }

    /// Waits (at most `timeout`) until `n` complete requests were received; true if so.
    pub async fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        super::poll_until(timeout, || async { (self.count() >= n).then_some(()) })
            .await
            .is_some()
    }

    /// Panics unless nothing at all reached this recorder.
    pub fn assert_untouched(&self, what: &str) {
        let (n, raw) = (self.count(), self.raw_bytes());
        assert!(
            n == 0 && raw == 0,
            "{what}: the backend received {raw} bytes ({n} complete requests): {:?}\nrequests: {:?}",
            self.raw_preview(),
            self.summaries()
        );
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(mut s: TcpStream, conn: usize, name: String, st: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    loop {
        let Some(mut req) = read_request(&mut s, &mut buf, &st).await else {
            return;
        };
        req.conn = conn;
        let answer = echo(&name, &req);
        let delay = req
            .path()
            .strip_prefix("/sleep/")
            .and_then(|ms| ms.parse::<u64>().ok());
        st.lock().unwrap().requests.push(req);
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        if s.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn echo(name: &str, req: &RecRequest) -> Vec<u8> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &req.headers {
        headers
            .entry(k.to_ascii_lowercase())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let body = serde_json::json!({
        "backend": name,
        "method": req.method,
        "path": req.path(),
        "query": req.query(),
        "version": req.version,
        "headers": headers,
        "body_len": req.body.len(),
        "body_fnv": format!("{:016x}", fnv(&req.body)),
    })
    .to_string();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_some(s: &mut TcpStream, buf: &mut Vec<u8>, st: &Mutex<State>) -> Option<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            let mut state = st.lock().unwrap();
            state.raw_bytes += n;
            let room = RAW_KEEP.saturating_sub(state.raw_head.len());
            state.raw_head.extend_from_slice(&chunk[..n.min(room)]);
            drop(state);
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// The index of the next CRLF in `buf`, reading more as needed.
async fn line_end(s: &mut TcpStream, buf: &mut Vec<u8>, st: &Mutex<State>) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            return Some(i);
        }
        read_some(s, buf, st).await?;
    }
}

/// Reads one complete request; `None` on EOF, a read error or anything unparsable.
async fn read_request(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    st: &Mutex<State>,
) -> Option<RecRequest> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        read_some(s, buf, st).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let mut wire_len = head_end + 4;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (
        first.next()?.to_string(),
        first.next()?.to_string(),
        first.next()?.to_string(),
    );
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':')?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let mut req = RecRequest {
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        conn: 0,
        wire_len: 0,
    };
    let te = req.header("transfer-encoding");
    let cl = req.header("content-length");
    if let Some(te) = te {
        if !te.trim().eq_ignore_ascii_case("chunked") {
            return None;
        }
        loop {
            let end = line_end(s, buf, st).await?;
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            buf.drain(..end + 2);
            wire_len += end + 2;
            if size == 0 {
                // Trailer fields up to the empty line.
                loop {
                    let end = line_end(s, buf, st).await?;
                    buf.drain(..end + 2);
                    wire_len += end + 2;
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            while buf.len() < size + 2 {
                read_some(s, buf, st).await?;
            }
            if &buf[size..size + 2] != b"\r\n" {
                return None;
            }
            req.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            wire_len += size + 2;
        }
    } else if let Some(cl) = cl {
        let len: usize = cl.trim().parse().ok()?;
        while buf.len() < len {
            read_some(s, buf, st).await?;
        }
        req.body = buf.drain(..len).collect();
        wire_len += len;
    }
    req.wire_len = wire_len;
    Some(req)
}
