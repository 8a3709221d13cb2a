//! Socket reads without a per-session buffer. An idle session must cost little memory
//! (DESIGN.md §5), so a session waits for readiness holding no buffer, then reads into a
//! per-thread scratch buffer and hands the bytes to its state machine before anything else
//! can run on that thread.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most read at once. Message bodies stream through in pieces of this size.
pub const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// What one non-blocking read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Bytes were read and handed over. `more`: the buffer filled up, so more may be ready
    /// now; otherwise the read stopped because nothing was, and readiness must be awaited.
    Data { more: bool },
    /// The peer closed (or the connection failed).
    Closed,
    /// Nothing now: wait for readiness.
    WouldBlock,
}

/// Read without waiting and pass what arrived to `deliver`. Reads repeat until the scratch
/// buffer is full or nothing more is ready: a TLS stream yields about one record (16 KiB)
/// per read, and batching several means one reframer pass and one backend write for them.
pub fn read_now<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    deliver: impl FnOnce(&[u8]),
) -> Read {
    SCRATCH.with_borrow_mut(|buf| {
        let mut rb = ReadBuf::new(buf);
        // A no-op waker: readiness is awaited separately, with no buffer held.
        let mut cx = Context::from_waker(Waker::noop());
        let mut stopped = None;
        while rb.remaining() > 0 {
            let before = rb.filled().len();
            match Pin::new(&mut *stream).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().len() > before => {}
                Poll::Ready(_) => {
                    stopped = Some(Read::Closed);
                    break;
                }
                Poll::Pending => {
                    stopped = Some(Read::WouldBlock);
                    break;
                }
            }
        }
        if rb.filled().is_empty() {
            return stopped.unwrap_or(Read::WouldBlock);
        }
        deliver(rb.filled());
        // After a close, `more` makes the next read report it.
        Read::Data {
            more: stopped != Some(Read::WouldBlock),
        }
    })
}

/// One leg's connection: none yet (or moved out for a TLS handshake), plain TCP, or TLS as
/// the server (the client leg) or as the client (the originate leg to a next hop).
#[derive(Debug, Default)]
pub enum Stream {
    #[default]
    None,
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Read once without waiting (see [`read_now`]); nothing without a connection.
    pub fn read_now(&mut self, deliver: impl FnOnce(&[u8])) -> Read {
        match self {
            Stream::None => Read::WouldBlock,
            Stream::Plain(s) => read_now(s, deliver),
            Stream::ServerTls(s) => read_now(s.as_mut(), deliver),
            Stream::ClientTls(s) => read_now(s.as_mut(), deliver),
        }
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::None => None,
            Stream::Plain(s) => Some(s),
            Stream::ServerTls(s) => Some(s.get_ref().0),
            Stream::ClientTls(s) => Some(s.get_ref().0),
        }
    }

    /// Wait until the socket has something to read; never, without a connection.
    pub async fn readable(&self) {
        match self.tcp() {
            // An error shows up again on the next read, which reports it.
            Some(tcp) => {
                let _ = tcp.readable().await;
            }
            None => std::future::pending().await,
        }
    }

    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::None => Err(std::io::ErrorKind::NotConnected.into()),
            Stream::Plain(s) => s.write_all(data).await,
            Stream::ServerTls(s) => write_flush(s.as_mut(), data).await,
            Stream::ClientTls(s) => write_flush(s.as_mut(), data).await,
        }
    }

    /// Close the sending side (TLS: close_notify first). Errors are of no interest here.
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Stream::None => Ok(()),
            Stream::Plain(s) => s.shutdown().await,
            Stream::ServerTls(s) => s.shutdown().await,
            Stream::ClientTls(s) => s.shutdown().await,
        };
    }
}

async fn write_flush<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}
