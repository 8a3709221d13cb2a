//! The server side of TLS on a client connection, on rustls' unbuffered API.
//!
//! rustls' buffered connection keeps a read buffer of at least 4 KiB for as long as it lives,
//! and reads at most 4 KiB at a time into it. Here the session owns no read buffer at all
//! while it waits: records are read into the thread's scratch buffer (128 KiB at a time, as
//! plain reads are), and only the bytes of a record cut in half by the read are kept. What is
//! encrypted for the client waits in `out` until the driver flushes its batch, so the session
//! ticket after the handshake leaves with the first reply, and a reply with the close_notify.
//!
//! An implicit-TLS listener's greeting may leave with the server's handshake flight, as TLS
//! 1.3 half-RTT data ([`ServerTls::accept`]): one write and one round trip fewer per session.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, InsufficientSizeError,
    UnbufferedStatus,
};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use super::turn::Turn;
use super::{Read, SCRATCH};
use crate::tls::sni::{self, Sni};

/// The largest TLS record on the wire (16 KiB of payload, plus header and expansion): what
/// one half-read record can keep in memory.
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// A TLS server connection over TCP.
pub struct ServerTls {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not consumed: the start of a record the last read cut in
    /// half. Empty, unallocated, between records. rustls must be shown exactly these bytes
    /// first on every call (its handshake reassembly points into them).
    partial: Vec<u8>,
    /// Plaintext rustls gave up while we were writing (a client that sent commands before
    /// our greeting), delivered by the next read.
    held: Vec<u8>,
    /// Encrypted bytes for the next flush.
    out: Vec<u8>,
    /// The client closed (close_notify or EOF) or broke the protocol: reads report it.
    closed: bool,
    /// rustls reported an error. It is never asked to process bytes again (it would read the
    /// offending ones again, or find the handshake state it keeps pointing past what it is
    /// shown, and panic): only an alert it already queued is still sent.
    failed: bool,
    /// The server name the client asked for (SNI), for the log and the certificate served.
    sni: Option<String>,
    /// The handshake sent the bytes it was given as half-RTT data.
    sent_half_rtt: bool,
    /// The certificate the listener's SNI resolver chose for this handshake (an index among
    /// its candidates, [`crate::tls::take_chosen_certificate`]), for the protocol log.
    chosen: Option<u16>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("tcp", &self.tcp)
            .field("partial", &self.partial.len())
            .field("out", &self.out.len())
            .field("closed", &self.closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What a step of the handshake leaves to do once rustls' state is released.
enum Next {
    Again,
    Receive,
    /// As `Receive`, but rustls would encrypt application data (half-RTT data, while the
    /// client's Finished is awaited).
    Writable,
    Done,
    Failed(rustls::Error),
}

/// Wait until the client's ClientHello has arrived whole (in one TLS record or several),
/// reading nothing; or until what arrived cannot be a ClientHello, or the connection ended
/// (the handshake then fails at once). A listener's `max_handshakes` slot is taken only after
/// this, so that a peer which connects (or says STARTTLS) and then sends nothing, or part of
/// a ClientHello, holds no slot: the slots bound handshake work, and silence is no work.
/// `Err`: a ClientHello longer than [`MAX_CLIENT_HELLO`], or that arrives in more than
/// [`MAX_HELLO_PIECES`] pieces, refused before it costs a slot. `Ok(true)`: a whole
/// ClientHello; `Ok(false)`: something else, which rustls may still answer (warning alerts
/// ahead of a ClientHello, one followed by a FIN): a slot, but no stalled handshake cut. An
/// `Err` too for a connection closed or lost with nothing sent.
pub async fn client_hello(tcp: &TcpStream) -> Result<bool, &'static str> {
    let mut pieces = 0;
    loop {
        // The peer's FIN ends the wait: the ClientHello can no longer complete, and a closed
        // socket stays readable (waiting again would spin).
        let closed = match tcp.ready(tokio::io::Interest::READABLE).await {
            Ok(ready) => ready.is_read_closed(),
            Err(_) => return Err("connection lost before its ClientHello"),
        };
        if closed {
            // What came before the FIN, if anything, is for the handshake to refuse; with
            // nothing, there is no handshake to make.
            let mut first = [0u8; 1];
            let peek = rustix::net::RecvFlags::PEEK;
            return match rustix::net::recv(tcp, &mut first, peek) {
                Ok((0, _)) | Err(_) => Err("closed before its ClientHello"),
                Ok(_) => Ok(false),
            };
        }
        // WouldBlock, for a ClientHello not yet whole, clears the readiness: the next segment
        // wakes this again.
        let seen = tcp.try_io(tokio::io::Interest::READABLE, || {
            super::SCRATCH.with_borrow_mut(|buf| {
                let room = buf.len().min(HELLO_PEEK);
                let peek = rustix::net::RecvFlags::PEEK;
                let n = rustix::net::recv(tcp, &mut buf[..room], peek)?.0;
                match hello_state(&buf[..n]) {
                    Hello::Incomplete if n > 0 && n < room => Err(io::ErrorKind::WouldBlock.into()),
                    Hello::Incomplete => Ok(Hello::Incomplete),
                    state => Ok(state),
                }
            })
        });
        match seen {
            // Each look peeks at all that came so far: a ClientHello trickled an octet a
            // segment would cost a look at up to 17 KiB per octet.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pieces += 1;
                if pieces > MAX_HELLO_PIECES {
                    return Err("ClientHello in too many pieces");
                }
            }
            // As many octets as the peek takes and still no whole ClientHello (records of
            // an octet or two each): over the bound too.
            Ok(Hello::TooLong) | Ok(Hello::Incomplete) => {
                return Err("ClientHello too long");
            }
            Ok(Hello::Whole) => return Ok(true),
            _ => return Ok(false),
        }
    }
}

/// The longest ClientHello served (its handshake message, header included). A real one is a
/// few hundred octets to a few KiB (post-quantum key shares, a resumption ticket); rustls
/// would take up to 64 KiB, which a client could trickle in while holding a slot.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The most times [`client_hello`] finds the ClientHello still incomplete: a real one comes
/// in one segment, or a few over a small MSS (a 16 KiB one in 12 of 1,400 octets, about 30
/// of 536).
const MAX_HELLO_PIECES: u32 = 64;

/// The most octets [`client_hello`] peeks at: a ClientHello of [`MAX_CLIENT_HELLO`] in
/// records of at least 64 octets each, with their headers.
const HELLO_PEEK: usize = MAX_CLIENT_HELLO + (MAX_CLIENT_HELLO / 64 + 1) * 5;

/// What the first octets of a client's TLS stream hold, for [`client_hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hello {
    /// Not yet the whole ClientHello.
    Incomplete,
    /// A whole ClientHello.
    Whole,
    /// Anything but the beginning of one (not a handshake record, another message, nothing
    /// at all), which the handshake refuses at once.
    Other,
    /// A ClientHello longer than [`MAX_CLIENT_HELLO`].
    TooLong,
}

/// Walk the handshake records at the start of `bytes` for the ClientHello they carry.
pub(crate) fn hello_state(bytes: &[u8]) -> Hello {
    const CLIENT_HELLO: u8 = 1;
    if bytes.is_empty() {
        return Hello::Other;
    }
    // The handshake message's 4-octet header (type, 24-bit length), as far as it has come,
    // and how many octets of the message have.
    let (mut head, mut have) = ([0u8; 4], 0usize);
    let mut rest = bytes;
    loop {
        let Some(header) = rest.get(..5) else {
            return match rest.first() {
                Some(&t) if t != HANDSHAKE => Hello::Other,
                _ => Hello::Incomplete,
            };
        };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != HANDSHAKE || length == 0 || 5 + length > MAX_RECORD {
            return Hello::Other;
        }
        let payload = &rest[5..rest.len().min(5 + length)];
        for &b in payload {
            if have < 4 {
                head[have] = b;
            }
            have += 1;
        }
        if have >= 4 {
            if head[0] != CLIENT_HELLO {
                return Hello::Other;
            }
            let message =
                4 + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8) + usize::from(head[3]);
            if message > MAX_CLIENT_HELLO {
                return Hello::TooLong;
            }
            if have >= message {
                return Hello::Whole;
            }
        }
        if payload.len() < length {
            return Hello::Incomplete;
        }
        rest = &rest[5 + length..];
    }
}

/// The content type of a TLS handshake record.
const HANDSHAKE: u8 = 22;

impl ServerTls {
    /// The server side of the handshake on `tcp`. The caller bounds it in time. A failure
    /// is the rustls error inside an `io::Error` (the alert, if any, has been sent).
    ///
    /// `half_rtt` (an implicit-TLS listener's greeting; empty for none) leaves encrypted with
    /// the server's last flight when rustls allows application data before the client's
    /// Finished: TLS 1.3, `send_half_rtt_data`, and no client certificate asked for (rustls
    /// sends nothing to a client it may yet have to authenticate). [`ServerTls::sent_half_rtt`]
    /// says whether it did; the handshake still ends only with the client's Finished.
    ///
    /// `turn`, when the handshake holds one of its listener's `max_handshakes` slots, follows
    /// whose turn it is: a wait for the client's flight ends with [`super::turn::Stalled`]
    /// once the slots cut it ([`crate::snapshot::HandshakeSlots`]).
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
        half_rtt: &[u8],
        turn: Option<Arc<Turn>>,
    ) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut tls = ServerTls {
            tcp,
            conn,
            partial: Vec::new(),
            held: Vec::new(),
            out: Vec::new(),
            closed: false,
            failed: false,
            sni: None,
            sent_half_rtt: false,
            chosen: None,
        };
        // No certificate refused or chosen by another handshake on this thread is taken for
        // this one's.
        let _ = crate::tls::take_refused_certificate();
        let _ = crate::tls::take_chosen_certificate();
        // The handshake's own input buffer, dropped with the handshake.
        let mut incoming = vec![0; 4096];
        let mut used = 0;
        let mut sni_seen = false;
        // Set once rustls has said it would encrypt application data during the handshake:
        // the next `WriteTraffic` encrypts `half_rtt`.
        let mut write_half_rtt = false;
        loop {
            // Before rustls handles the bytes (it may move them).
            if !sni_seen && used > 0 {
                match sni::parse(&incoming[..used]) {
                    Sni::Incomplete => {}
                    Sni::None => sni_seen = true,
                    Sni::Name(name) => {
                        tls.sni = Some(name);
                        sni_seen = true;
                    }
                }
            }
            let UnbufferedStatus { discard, state } =
                tls.conn.process_tls_records(&mut incoming[..used]);
            // The client's flight answered: rustls has a flight of ours, or the handshake is
            // done (below). Not a record taken alone, nor rustls saying we may write: a
            // client could send its flight an octet, or a record, at a time.
            let answered = matches!(
                state,
                Ok(ConnectionState::EncodeTlsData(_)
                    | ConnectionState::TransmitTlsData(_)
                    | ConnectionState::ReadTraffic(_))
            );
            // Set by the SNI resolver inside that call, on this thread: taken before any wait.
            if let Some(chosen) = crate::tls::take_chosen_certificate() {
                tls.chosen = Some(chosen);
            }
            let next = match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    match append(&mut tls.out, |buf| e.encode(buf).map_err(encode_size)) {
                        Ok(()) => Next::Again,
                        Err(e) => Next::Failed(e),
                    }
                }
                // Marked sent: the flight leaves when the handshake next waits (below).
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Next::Again
                }
                Ok(ConnectionState::WriteTraffic(mut w)) if write_half_rtt => {
                    write_half_rtt = false;
                    match append(&mut tls.out, |buf| {
                        w.encrypt(half_rtt, buf).map_err(encrypt_size)
                    }) {
                        Ok(()) => {
                            tls.sent_half_rtt = true;
                            Next::Receive
                        }
                        Err(e) => Next::Failed(e),
                    }
                }
                Ok(ConnectionState::WriteTraffic(_)) => Next::Writable,
                Ok(ConnectionState::BlockedHandshake) => Next::Receive,
                // Application data after the client's Finished: it waits in rustls for the
                // first read.
                Ok(ConnectionState::ReadTraffic(_)) => Next::Done,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => Next::Failed(rustls::Error::General("unexpected TLS state".into())),
                Err(e) => Next::Failed(e),
            };
            if discard > 0 {
                incoming.copy_within(discard..used, 0);
                used -= discard;
            }
            let handshaking = tls.conn.is_handshaking();
            // Our turn, unless the slots cut the handshake first.
            if (answered || !handshaking) && turn.as_ref().is_some_and(|turn| !turn.ours()) {
                return Err(super::turn::stalled());
            }
            match next {
                // A flight leaves when the handshake next waits for the client (below), with
                // the half-RTT data if any. What a TLS 1.3 server sends after the client's
                // Finished (a session ticket) waits for the first reply; TLS 1.2's last
                // flight is the server's Finished, which the client waits for (after the loop).
                Next::Again => {}
                Next::Receive | Next::Writable if !handshaking => break,
                Next::Writable if !half_rtt.is_empty() && !tls.sent_half_rtt => {
                    // Asked again, rustls hands out its `WriteTraffic` for the encryption.
                    write_half_rtt = true;
                }
                Next::Receive | Next::Writable => {
                    if used == incoming.len() {
                        if used >= MAX_HANDSHAKE {
                            return Err(invalid(rustls::Error::General(
                                "handshake message too large".into(),
                            )));
                        }
                        incoming.resize((used * 2).min(MAX_HANDSHAKE), 0);
                    }
                    // The client's turn: our flight out (a client that reads nothing holds
                    // it up), its next one in.
                    let read = async {
                        if !tls.out.is_empty() {
                            tls.flush().await?;
                        }
                        tls.tcp.read(&mut incoming[used..]).await
                    };
                    let read = match &turn {
                        Some(turn) => turn.client_turn(read).await?,
                        None => read.await?,
                    };
                    match read {
                        0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        n => used += n,
                    }
                }
                Next::Done => break,
                Next::Failed(e) => {
                    // Set by the `require` verifier inside the `process_tls_records` above:
                    // taken before anything waits, while this is still the thread it ran on.
                    let refused = crate::tls::take_refused_certificate();
                    tls.send_alert(&mut incoming[..used]).await;
                    return Err(match refused {
                        Some(leaf) => io::Error::new(
                            io::ErrorKind::InvalidData,
                            crate::tls::CertificateRefused { error: e, leaf },
                        ),
                        None => invalid(e),
                    });
                }
            }
        }
        if !tls13(&tls.conn) {
            // TLS 1.2's last flight is ours, and the client waits for it, even when its own
            // Finished came with data.
            tls.flush().await?;
        }
        if used > MAX_RECORD {
            // Far more than a client sends along with its Finished before our greeting.
            let e = rustls::Error::General("too much data with the handshake".into());
            return Err(invalid(e));
        }
        if used > 0 {
            tls.partial = incoming[..used].to_vec();
        }
        Ok(tls)
    }

    /// The same connection, its socket registered with the runtime this is called on instead
    /// of the one it was on (a handshake done on the admission threads, the session going on
    /// on the sessions' threads).
    pub fn rebind(self) -> io::Result<Self> {
        let tcp = TcpStream::from_std(self.tcp.into_std()?)?;
        Ok(ServerTls { tcp, ..self })
    }

    /// The connection's TLS state (version, suite, the client's certificates).
    pub fn conn(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// The server name the client asked for (SNI).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Which of the listener's candidate certificates the handshake served, when its SNI
    /// resolver chose one ([`crate::tls::CertPlan::served_in`]).
    pub fn chosen_certificate(&self) -> Option<u16> {
        self.chosen
    }

    /// The handshake sent the bytes [`ServerTls::accept`] was given as half-RTT data.
    pub fn sent_half_rtt(&self) -> bool {
        self.sent_half_rtt
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TCP socket under it, to shut down its sending side after the close_notify.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Read what the socket has without waiting, decrypt it, and pass each record's
    /// plaintext to `deliver`, in order (see [`super::read_now`]). `max` bounds the octets
    /// read from the socket, but never below a whole record: a smaller read would take a
    /// record in many pieces. What is delivered is then at most `max` or a record's worth,
    /// and the start of one record kept from the read before.
    pub fn read_now(&mut self, max: usize, mut deliver: impl FnMut(&[u8])) -> Read {
        if !self.held.is_empty() {
            deliver(&std::mem::take(&mut self.held));
            return Read::Data { more: true };
        }
        if self.closed || self.failed {
            return Read::Closed;
        }
        SCRATCH.with_borrow_mut(|buf| {
            let mut used = self.partial.len();
            buf[..used].copy_from_slice(&self.partial);
            self.partial = Vec::new();
            let room = (buf.len() - used).min(max.max(MAX_RECORD));
            let (read, stopped) = super::fill(&mut self.tcp, &mut buf[used..used + room]);
            used += read;
            let mut start = 0;
            let mut delivered = false;
            loop {
                let UnbufferedStatus { mut discard, state } =
                    self.conn.process_tls_records(&mut buf[start..used]);
                let more = match state {
                    Ok(ConnectionState::ReadTraffic(mut r)) => {
                        while let Some(record) = r.next_record() {
                            match record {
                                Ok(AppDataRecord {
                                    discard: d,
                                    payload,
                                }) => {
                                    discard += d;
                                    delivered = true;
                                    deliver(payload);
                                }
                                Err(_) => {
                                    self.failed = true;
                                    break;
                                }
                            }
                        }
                        !self.failed
                    }
                    // Post-handshake messages (a key update's answer) leave with our next
                    // write.
                    Ok(ConnectionState::EncodeTlsData(mut e)) => {
                        let encoded = append(&mut self.out, |b| e.encode(b).map_err(encode_size));
                        self.failed |= encoded.is_err();
                        !self.failed
                    }
                    Ok(ConnectionState::TransmitTlsData(t)) => {
                        t.done();
                        true
                    }
                    Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                        self.closed = true;
                        false
                    }
                    Err(_) => {
                        self.failed = true;
                        false
                    }
                    Ok(_) => false,
                };
                start += discard;
                if !more {
                    break;
                }
            }
            if start < used && !self.failed {
                // What is left is the start of one record (or of a handshake message rustls
                // is reassembling); more than that is not TLS.
                if used - start > MAX_PARTIAL {
                    self.failed = true;
                } else {
                    self.partial = buf[start..used].to_vec();
                }
            }
            if stopped == Some(Read::Closed) || self.failed {
                self.closed = true;
            }
            match (delivered, self.closed) {
                (true, closed) => Read::Data {
                    more: closed || stopped.is_none(),
                },
                (false, true) => Read::Closed,
                (false, false) => Read::WouldBlock,
            }
        })
    }

    /// Encrypt `data` for the next flush.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.with_write_traffic(|w, out| append(out, |b| w.encrypt(data, b).map_err(encrypt_size)))
    }

    /// Encrypted bytes waiting for a flush.
    pub fn buffered(&self) -> usize {
        self.out.len()
    }

    /// Send what waits, then hold no buffer: it goes back to the thread's spare.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// [`ServerTls::flush`], one poll at a time: what the socket takes leaves `out` at once,
    /// so a flush that waits keeps its progress here and its future holds nothing.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            match ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => drop(self.out.drain(..n)),
            }
        }
        give_back(std::mem::take(&mut self.out));
        Poll::Ready(Ok(()))
    }

    /// Send the close_notify (with what still waits, in one write); after an error, only the
    /// alert rustls queued for it. `closing`: the socket is closed at once after it, so the
    /// write may wait in the kernel for the close's FIN (`send_before_fin`).
    pub async fn close(&mut self, closing: bool) -> io::Result<()> {
        let mut queued = None;
        std::future::poll_fn(|cx| self.poll_close(cx, closing, &mut queued)).await
    }

    /// [`ServerTls::close`], one poll at a time. `queued` is `None` at the first poll, which
    /// queues the close_notify; it keeps how that went while the flush waits. Polled again
    /// after it is done, it queues nothing more and finds nothing to send.
    pub fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        closing: bool,
        queued: &mut Option<io::Result<()>>,
    ) -> Poll<io::Result<()>> {
        if queued.is_none() {
            let notify = if self.failed {
                self.queued_alerts(&mut []);
                Ok(())
            } else {
                self.with_write_traffic(|w, out| {
                    append(out, |b| w.queue_close_notify(b).map_err(encrypt_size))
                })
            };
            if closing && !self.out.is_empty() {
                match super::send_before_fin(&self.tcp, &self.out) {
                    Ok(sent) => drop(self.out.drain(..sent)),
                    Err(e) => {
                        *queued = Some(Ok(()));
                        return Poll::Ready(notify.and(Err(e)));
                    }
                }
            }
            *queued = Some(notify);
        }
        let flushed = ready!(self.poll_flush(cx));
        let notify = queued.replace(Ok(())).unwrap_or(Ok(()));
        Poll::Ready(notify.and(flushed))
    }

    /// Run `f` once rustls is ready for application data, encoding whatever it has to send
    /// first (a session ticket) into `out`.
    fn with_write_traffic(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), rustls::Error>,
    ) -> io::Result<()> {
        if self.failed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut f = Some(f);
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => match f.take() {
                    Some(f) => Some(f(&mut w, &mut self.out).map_err(invalid)),
                    None => Some(Err(io::ErrorKind::Other.into())),
                },
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    append(&mut self.out, |b| e.encode(b).map_err(encode_size))
                        .err()
                        .map(|e| Err(invalid(e)))
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut failed = None;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(record) => self.held.extend_from_slice(record.payload),
                            Err(e) => {
                                failed = Some(Err(invalid(e)));
                                break;
                            }
                        }
                    }
                    failed
                }
                // Edge-triggered: the next call says whether we may still write.
                Ok(ConnectionState::PeerClosed) => {
                    self.closed = true;
                    None
                }
                Ok(_) => Some(Err(io::ErrorKind::BrokenPipe.into())),
                Err(e) => Some(Err(invalid(e))),
            };
            self.partial.drain(..discard);
            if let Some(result) = done {
                self.failed |= result.is_err();
                return result;
            }
        }
    }

    /// After a handshake error: send the alert rustls queued for it, if any, best effort.
    /// `incoming` is what rustls was last shown.
    async fn send_alert(&mut self, incoming: &mut [u8]) {
        self.queued_alerts(incoming);
        let _ = self.flush().await;
    }

    /// Encode what rustls has queued to send (after an error: its alert). rustls is asked
    /// only while it has something queued, which it hands out before it looks at `incoming`
    /// (asking more would have it read the offending bytes again).
    fn queued_alerts(&mut self, incoming: &mut [u8]) {
        self.failed = true;
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(incoming);
            let Ok(ConnectionState::EncodeTlsData(mut e)) = state else {
                break;
            };
            if append(&mut self.out, |b| e.encode(b).map_err(encode_size)).is_err() {
                break;
            }
        }
    }
}

/// Whether TLS 1.3 was negotiated.
fn tls13(conn: &UnbufferedServerConnection) -> bool {
    conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
}

/// The most kept between reads: a record, or a small handshake message rustls reassembles
/// (a key update); it must leave room in the 128 KiB scratch buffer for the next read.
const MAX_PARTIAL: usize = 2 * MAX_RECORD;

/// The largest handshake flight buffered (rustls' own limit for a handshake message).
const MAX_HANDSHAKE: usize = 64 * 1024 + MAX_RECORD;

thread_local! {
    /// An output buffer between one session's flush and the next batch on this thread: a
    /// batch then costs no allocation, and an idle session still holds none.
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest buffer kept as the spare: a batch of replies fits many times over; a rare
/// big one (up to [`super::FLUSH_AT`] and a record) is freed rather than kept.
const SPARE_MAX: usize = 16 * 1024;

/// A flushed buffer back to the thread's spare, unless one is there or it is too big.
fn give_back(mut out: Vec<u8>) {
    if out.capacity() > 0 && out.capacity() <= SPARE_MAX {
        out.clear();
        SPARE.with(|spare| {
            let kept = spare.take();
            spare.set(if kept.capacity() > 0 { kept } else { out });
        });
    }
}

/// Append what `write` produces to `out`, growing it to the size rustls asks for. An empty
/// `out` starts as the thread's spare buffer.
fn append(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Sized>,
) -> Result<(), rustls::Error> {
    if out.capacity() == 0 {
        *out = SPARE.take();
    }
    let start = out.len();
    out.resize(start + 512, 0);
    let n = match write(&mut out[start..]) {
        Ok(n) => n,
        Err(Sized::Need(required)) => {
            out.resize(start + required, 0);
            match write(&mut out[start..]) {
                Ok(n) => n,
                Err(Sized::Need(_)) => unreachable!("rustls asked for this size"),
                Err(Sized::Failed(e)) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Err(Sized::Failed(e)) => {
            out.truncate(start);
            return Err(e);
        }
    };
    out.truncate(start + n);
    Ok(())
}

/// Why an encoding did not fit: the size rustls needs, or a real failure.
enum Sized {
    Need(usize),
    Failed(rustls::Error),
}

fn encode_size(e: EncodeError) -> Sized {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Sized::Need(required_size)
        }
        other => Sized::Failed(rustls::Error::General(other.to_string())),
    }
}

fn encrypt_size(e: EncryptError) -> Sized {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Sized::Need(required_size)
        }
        other => Sized::Failed(rustls::Error::General(other.to_string())),
    }
}

/// A rustls error as an `io::Error` (the handshake's error reporting looks inside).
fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests;
