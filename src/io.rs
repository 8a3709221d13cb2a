//! Socket reads without a per-session buffer. An idle session must cost little memory
//! (DESIGN.md §5), so a session waits for readiness holding no buffer, then reads into a
//! per-thread scratch buffer and hands the bytes to its state machine before anything else
//! can run on that thread.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use crate::tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub mod admission;
mod server_tls;
pub mod turn;

pub use server_tls::{client_hello, ServerTls};

/// The most read at once. Message bodies stream through in pieces of this size. 128 KiB (eight
/// full TLS records) halves a bulk transfer's reads, reframer passes and backend writes
/// against 64 KiB; the buffer is the thread's, and a session relaying a body holds a backend
/// buffer of this size only while it does (`smtp_core`'s `BODY_BATCH`).
pub const READ_CHUNK: usize = 128 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Encrypted bytes a [`ServerTls`] holds for a batch before writing them out at once (the
/// same bound rustls' buffered connection has).
const FLUSH_AT: usize = 64 * 1024;

/// Send what of `data` the socket takes now (none if it would block) with `MSG_MORE`: the
/// kernel holds a segment that is not full until more is written, a segment from the peer
/// (an ACK) pushes it, or the socket is shut down or closed, whose FIN then rides on it. For
/// the last bytes of a connection, when its close follows at once: one segment and one
/// wake-up of the peer fewer, on loopback the peer's receive work done on our core. Never
/// where a lingering close follows, which may wait before its FIN. A close with unread input
/// resets the connection and drops what is held: a client that closes after its QUIT without
/// waiting for the `221` (Postfix's `smtp_skip_quit_response`, its default) may not get it,
/// which it does not read anyway; a backend that sent unasked may not get our QUIT, only the
/// reset that followed it before.
fn send_before_fin(tcp: &TcpStream, data: &[u8]) -> std::io::Result<usize> {
    let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || send_more(tcp, data));
    match sent {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// One `send(2)` of `data` with `MSG_MORE` (see [`send_before_fin`]) on a non-blocking socket:
/// what it took. Elsewhere than Linux, a plain write.
pub(crate) fn send_more(socket: impl std::os::fd::AsFd, data: &[u8]) -> std::io::Result<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let sent = {
        use rustix::net::{send, SendFlags};
        send(socket, data, SendFlags::MORE | SendFlags::NOSIGNAL)
    };
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let sent = rustix::io::write(socket, data);
    sent.map_err(std::io::Error::from)
}

/// What one non-blocking read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Bytes were read and handed over. `more`: the buffer filled up, so more may be ready
    /// now; otherwise the read stopped because nothing was, and readiness must be awaited.
    Data { more: bool },
    /// The peer closed (or the connection failed).
    Closed,
    /// The TLS peer sent a fatal alert (its RFC 8446 name): it is gone, and the alert may say
    /// why (a next hop refusing our certificate).
    Alert(&'static str),
    /// Nothing now: wait for readiness.
    WouldBlock,
}

/// Read without waiting and pass what arrived to `deliver`. Reads repeat until the scratch
/// buffer is full, `max` octets are read, or nothing more is ready: a TLS stream yields
/// about one record (16 KiB) per read, and batching several means one reframer pass and one
/// backend write for them.
pub fn read_now<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    max: usize,
    mut deliver: impl FnMut(&[u8]),
) -> Read {
    SCRATCH.with_borrow_mut(|buf| {
        let room = buf.len().min(max.max(1));
        let (used, stopped) = fill(stream, &mut buf[..room]);
        if used == 0 {
            return stopped.unwrap_or(Read::WouldBlock);
        }
        deliver(&buf[..used]);
        // After a close, `more` makes the next read report it.
        Read::Data {
            more: stopped != Some(Read::WouldBlock),
        }
    })
}

/// Read without waiting until `buf` is full or nothing more is ready: how much was read, and
/// why it stopped (`None`: the buffer is full). Through `poll_read`, which takes a short read
/// to mean the socket is drained (no read that only returns EAGAIN), with a no-op waker:
/// readiness is awaited separately, with no buffer held.
fn fill<R: AsyncRead + Unpin + ?Sized>(stream: &mut R, buf: &mut [u8]) -> (usize, Option<Read>) {
    let mut rb = ReadBuf::new(buf);
    let mut cx = Context::from_waker(Waker::noop());
    while rb.remaining() > 0 {
        let before = rb.filled().len();
        match Pin::new(&mut *stream).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().len() > before => {}
            Poll::Ready(Err(e)) => {
                let stopped = ClientTls::received_alert(&e).map_or(Read::Closed, Read::Alert);
                return (rb.filled().len(), Some(stopped));
            }
            Poll::Ready(Ok(())) => return (rb.filled().len(), Some(Read::Closed)),
            Poll::Pending => return (rb.filled().len(), Some(Read::WouldBlock)),
        }
    }
    (rb.filled().len(), None)
}

/// One leg's connection: none yet (or moved out for a TLS handshake), plain TCP, or TLS as
/// the server (the client leg) or as the client (the originate leg to a next hop).
#[derive(Debug, Default)]
pub enum Stream {
    #[default]
    None,
    Plain(TcpStream),
    ServerTls(Box<ServerTls>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The same connection, its socket registered with the runtime this is called on instead
    /// of the one it was accepted, handshaken or connected on (the admission threads'): plain,
    /// or server TLS ([`Stream::rebinds`]).
    pub fn rebind(self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::None => Stream::None,
            Stream::Plain(tcp) => Stream::Plain(TcpStream::from_std(tcp.into_std()?)?),
            Stream::ServerTls(tls) => Stream::ServerTls(Box::new(tls.rebind()?)),
            Stream::ClientTls(_) => {
                return Err(std::io::Error::other(
                    "a client TLS stream cannot be rebound",
                ))
            }
        })
    }

    /// Whether [`Stream::rebind`] can move it: not a client TLS stream, which tokio-rustls
    /// does not let us take apart and put together again.
    pub fn rebinds(&self) -> bool {
        !matches!(self, Stream::ClientTls(_))
    }

    /// Read once without waiting, about `max` octets at most (see [`read_now`] and
    /// [`ServerTls::read_now`]); nothing without a connection.
    pub fn read_now(&mut self, max: usize, deliver: impl FnMut(&[u8])) -> Read {
        match self {
            Stream::None => Read::WouldBlock,
            Stream::Plain(s) => read_now(s, max, deliver),
            Stream::ServerTls(s) => s.read_now(max, deliver),
            Stream::ClientTls(s) => read_now(s.as_mut(), max, deliver),
        }
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::None => None,
            Stream::Plain(s) => Some(s),
            Stream::ServerTls(s) => Some(s.tcp()),
            Stream::ClientTls(s) => Some(s.get_ref().0),
        }
    }

    /// Drop the connection with a reset (`SO_LINGER` 0): what is still queued for the peer
    /// is discarded, not sent ahead of a FIN, and no TIME_WAIT is left behind. For a message
    /// the backend must not take (it was cut short), and for a peer that stopped reading (a
    /// write that stalled past its deadline), whose queued bytes would otherwise be retried
    /// for as long as it keeps its window shut after the close.
    pub fn reset(&mut self) {
        let stream = std::mem::take(self);
        if let Some(Err(e)) = stream.tcp().map(TcpStream::set_zero_linger) {
            tracing::debug!(error = %e, "SO_LINGER on a reset connection");
        }
    }

    /// Wait until the socket has something to read; never, without a connection.
    pub async fn readable(&self) {
        match self.tcp() {
            // The socket's own reader waker rather than `TcpStream::readable`'s list of
            // waiters, which takes a lock to join and another to leave, on every wait. An
            // error shows up again on the next read, which reports it.
            Some(tcp) => {
                let _ = std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await;
            }
            None => std::future::pending().await,
        }
    }

    /// Write `data`. On a TLS stream it may only be encrypted into rustls' buffer, to leave
    /// with whatever else the same batch of actions sends, at the next [`Stream::flush`] or
    /// [`Stream::close`]. rustls bounds that buffer (64 KiB); what does not fit is written at
    /// once.
    ///
    /// This and the other writes below are polls over a few octets of progress, not async
    /// fns: a session's wait holds its write, and an idle session holds room for its largest
    /// wait (C of ../shared/bench).
    pub fn write<'a>(&'a mut self, data: &'a [u8]) -> impl Future<Output = io::Result<()>> + 'a {
        let mut progress = Progress::default();
        poll_fn(move |cx| self.poll_write(cx, data, &mut progress))
    }

    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        p: &mut Progress,
    ) -> Poll<io::Result<()>> {
        let first = !std::mem::replace(&mut p.started, true);
        match self {
            Stream::None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            Stream::Plain(s) => poll_write_all(s, cx, data, &mut p.sent),
            Stream::ServerTls(s) => {
                if first {
                    s.write(data)?;
                    if s.buffered() <= FLUSH_AT {
                        return Poll::Ready(Ok(()));
                    }
                }
                s.poll_flush(cx)
            }
            // Encrypted into the connection's buffer; written out at once only if it did
            // not all fit.
            Stream::ClientTls(s) => {
                if first {
                    p.sent = s.get_mut().1.writer().write(data)?;
                    p.flush = p.sent < data.len();
                }
                if p.flush {
                    ready!(poll_write_all(s.as_mut(), cx, data, &mut p.sent))?;
                    ready!(Pin::new(s.as_mut()).poll_flush(cx))?;
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Write `data`, the last bytes this connection carries before it is closed, at once and
    /// with nothing read from it in between: on a plain connection the kernel holds them for
    /// the FIN of that close ([`send_before_fin`]), one segment instead of two.
    pub fn write_last<'a>(
        &'a mut self,
        data: &'a [u8],
    ) -> impl Future<Output = io::Result<()>> + 'a {
        let mut progress = Progress::default();
        poll_fn(move |cx| match self {
            Stream::Plain(s) => {
                if !std::mem::replace(&mut progress.started, true) {
                    progress.sent = send_before_fin(s, data)?;
                }
                poll_write_all(s, cx, data, &mut progress.sent)
            }
            _ => self.poll_write(cx, data, &mut progress),
        })
    }

    /// Send what [`Stream::write`] left in the TLS buffer.
    pub fn flush(&mut self) -> impl Future<Output = io::Result<()>> + '_ {
        poll_fn(move |cx| match self {
            Stream::None | Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::ServerTls(s) => s.poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        })
    }

    /// Close the connection: TLS sends its close_notify (with anything still buffered, in one
    /// write), then the socket is closed, which sends the FIN. A `shutdown(2)` before the
    /// close would only be one more system call. Errors are of no interest here.
    pub fn close(&mut self) -> impl Future<Output = ()> + '_ {
        let mut closing = Closing::default();
        poll_fn(move |cx| {
            let _ = ready!(self.poll_close_notify(cx, true, &mut closing));
            *self = Stream::None;
            Poll::Ready(())
        })
    }

    /// Send TLS's close_notify with anything still buffered, in one write. `closing`: the
    /// socket is closed at once after it, with nothing read in between, so the kernel may hold
    /// the write for the close's FIN ([`send_before_fin`]).
    pub fn close_notify(&mut self, closing: bool) -> impl Future<Output = io::Result<()>> + '_ {
        let mut state = Closing::default();
        poll_fn(move |cx| self.poll_close_notify(cx, closing, &mut state))
    }

    fn poll_close_notify(
        &mut self,
        cx: &mut Context<'_>,
        closing: bool,
        state: &mut Closing,
    ) -> Poll<io::Result<()>> {
        match self {
            Stream::None | Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::ServerTls(s) => s.poll_close(cx, closing, &mut state.queued),
            Stream::ClientTls(s) => {
                if !std::mem::replace(&mut state.started, true) {
                    s.get_mut().1.send_close_notify();
                }
                Pin::new(s.as_mut()).poll_flush(cx)
            }
        }
    }

    /// The end of a lingering close, after [`Stream::close_notify`]: shut down our sending
    /// side (the FIN follows what was sent), then read and throw away what the peer still
    /// sends until it closes too, [`LINGER`] and [`LINGER_BYTES`] at most. Only then is the
    /// socket closed: a close with unread input would answer with a reset, which can destroy
    /// the last reply before the peer reads it. Reads go through the thread's scratch buffer,
    /// as all reads do.
    pub async fn linger(mut self) {
        let _ = tokio::time::timeout(LINGER, self.discard_until_closed()).await;
    }

    async fn discard_until_closed(&mut self) {
        let tcp = match self {
            Stream::Plain(s) => s,
            Stream::ServerTls(s) => s.tcp_mut(),
            Stream::None | Stream::ClientTls(_) => return,
        };
        if tcp.shutdown().await.is_err() {
            return;
        }
        let mut left = LINGER_BYTES;
        loop {
            if std::future::poll_fn(|cx| tcp.poll_read_ready(cx))
                .await
                .is_err()
            {
                return;
            }
            let (read, stopped) = SCRATCH.with_borrow_mut(|buf| fill(tcp, buf));
            left = left.saturating_sub(read);
            if stopped == Some(Read::Closed) || left == 0 {
                return;
            }
        }
    }
}

/// How long a lingering close ([`Stream::linger`]) waits for the peer to close after its last
/// reply. A client that read the reply closes within a round trip; one that does not is reset
/// after this.
pub const LINGER: Duration = Duration::from_secs(2);

/// What a lingering close reads and throws away at most: a client cut off in the middle of a
/// message body can finish sending it (and then read the reply) when the body is within this.
pub const LINGER_BYTES: usize = 1024 * 1024;

/// What a write that waits keeps between polls.
#[derive(Debug, Default)]
struct Progress {
    /// Its first poll is done: what is done at once (TLS's encryption, a send before the FIN).
    started: bool,
    /// A client TLS write did not all fit in the connection's buffer: the rest is written
    /// out, and the connection flushed.
    flush: bool,
    /// How much of the data the socket (or the TLS connection) took.
    sent: usize,
}

/// What a close that waits keeps between polls.
#[derive(Debug, Default)]
struct Closing {
    /// A client TLS connection's close_notify is queued.
    started: bool,
    /// A server TLS connection's: how queueing it went ([`ServerTls::poll_close`]).
    queued: Option<io::Result<()>>,
}

/// Write what of `data` is left past `sent` (which counts it), waiting as needed.
fn poll_write_all<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    cx: &mut Context<'_>,
    data: &[u8],
    sent: &mut usize,
) -> Poll<io::Result<()>> {
    while *sent < data.len() {
        match ready!(Pin::new(&mut *stream).poll_write(cx, &data[*sent..]))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => *sent += n,
        }
    }
    Poll::Ready(Ok(()))
}
