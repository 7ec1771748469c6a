//! A client connection's write side that sends a response's head and a short body in one
//! syscall.
//!
//! pingora's h1 session writes the response head and the body separately and flushes when
//! the response ends (or after every piece of a chunked or close-delimited body). Unbuffered,
//! that is one `send` for the head and one for the body: a third syscall per keep-alive
//! request, and a second wake-up of the client. Here writes collect until a flush, or until
//! `SEND_AT` bytes wait (nginx's `postpone_output`: a full packet goes out at once, so a long
//! body streams). The buffer exists only while something waits in it: an idle keep-alive
//! connection holds none.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use pingora_core::protocols::{Shutdown, Stream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes waiting that are sent without waiting for a flush (one Ethernet TCP segment, as
/// nginx's `postpone_output`).
const SEND_AT: usize = 1460;
/// A write that would take the waiting bytes beyond this sends them first.
const MOST_WAITING: usize = 16 * 1024;
/// How long a send may wait for the client to read (nginx's `send_timeout`): a client that
/// stops reading its response cannot hold a request in flight, or a drain, forever.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug)]
pub struct Coalesced {
    inner: Stream,
    waiting: Vec<u8>,
    /// How much of `waiting` is sent already.
    sent: usize,
    /// Armed when a send finds the socket full (never on the fast path), disarmed by
    /// progress; when it fires, the send fails.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Coalesced {
    pub fn new(inner: Stream) -> Coalesced {
        Coalesced {
            inner,
            waiting: Vec::new(),
            sent: 0,
            stalled: None,
        }
    }

    /// One write to the client under `SEND_TIMEOUT`.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        poll_send(&mut self.inner, &mut self.stalled, cx, data)
    }

    /// Sends what waits; the buffer is freed once it is all out.
    fn poll_send_waiting(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.sent < self.waiting.len() {
            let waiting = &self.waiting[self.sent..];
            let n = ready!(poll_send(&mut self.inner, &mut self.stalled, cx, waiting))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.waiting = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// `data` to `inner`; while the socket takes nothing, a `SEND_TIMEOUT` timer (armed then,
/// disarmed by progress) bounds the wait.
fn poll_send(
    inner: &mut Stream,
    stalled: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    cx: &mut Context<'_>,
    data: &[u8],
) -> Poll<std::io::Result<usize>> {
    match Pin::new(inner).poll_write(cx, data) {
        Poll::Ready(r) => {
            *stalled = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let timer = stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(SEND_TIMEOUT)));
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl Drop for Coalesced {
    /// A connection dropped on an error (a backend that cut its body, say) still sends what
    /// the client was already given, if the socket takes it now: the response's head and
    /// the body so far, so the client sees the response cut rather than no response.
    fn drop(&mut self) {
        if self.sent < self.waiting.len() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let _ = self.poll_send_waiting(&mut cx);
        }
    }
}

impl AsyncRead for Coalesced {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.waiting.len() + data.len() > MOST_WAITING {
            ready!(this.poll_send_waiting(cx))?;
            if data.len() >= SEND_AT {
                return this.poll_send(cx, data);
            }
        }
        if this.waiting.capacity() == 0 {
            // Room for a head and a short body at once: growing from the head's size would
            // be a second allocation per response.
            this.waiting.reserve(data.len().max(SEND_AT));
        }
        this.waiting.extend_from_slice(data);
        if this.waiting.len() - this.sent >= SEND_AT {
            // Sent now if the socket takes it; otherwise it waits for the next write or the
            // flush (the data is ours already: the caller is not held up).
            if let Poll::Ready(Err(e)) = this.poll_send_waiting(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_waiting(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_send_waiting(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        Shutdown::shutdown(&mut *self.inner).await
    }
}

crate::runtime::wrapped_stream::forward_stream_info!(Coalesced);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (Coalesced, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        (Coalesced::new(stream), client)
    }

    #[tokio::test]
    async fn small_writes_wait_for_the_flush_and_go_out_together() {
        let (mut out, mut peer) = pair().await;
        out.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        out.write_all(b"ok").await.unwrap();
        assert_eq!(out.waiting.len(), 21, "nothing sent before the flush");
        out.flush().await.unwrap();
        assert_eq!(out.waiting.capacity(), 0, "the buffer is freed once sent");
        let mut got = [0u8; 21];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nok");
    }

    #[tokio::test]
    async fn a_full_packet_goes_out_without_a_flush() {
        let (mut out, mut peer) = pair().await;
        let body = vec![b'x'; 100_000];
        out.write_all(b"head").await.unwrap();
        out.write_all(&body[..SEND_AT]).await.unwrap();
        let mut got = vec![0u8; 4 + SEND_AT];
        peer.read_exact(&mut got).await.unwrap();
        // and a long body streams through, in order
        let writer = tokio::spawn(async move {
            out.write_all(&body).await.unwrap();
            out.flush().await.unwrap();
            out
        });
        let mut rest = vec![0u8; 100_000];
        peer.read_exact(&mut rest).await.unwrap();
        assert!(rest.iter().all(|&b| b == b'x'));
        writer.await.unwrap();
    }
}
