//! TLS handshakes of a session and what is recorded of them: the server side on the client
//! leg (implicit TLS, or after STARTTLS), the client side toward a next hop (originate), each
//! under a deadline; the metric, the log lines, and the protocol log's certificates (ours and
//! the peer's, as Exchange's verbose log has).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::UnixTime;
use smtp_core::session::OurCert;
use smtp_core::session::{ClientCert, TlsClient, TlsInfo};
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tokio_rustls::TlsConnector;

use super::PROTOCOL;
use crate::io::{ServerTls, Stream};
use crate::metrics::{Handshake, HandshakeError};
use crate::snapshot::ListenerRuntime;

/// Record a completed server-side handshake; returns what the session needs to know, or
/// `None` when the session must not go on: under `client_certificates: require`, a resumed
/// session whose client certificate no longer verifies.
fn handshake_done(
    l: &ListenerRuntime,
    tls: &ServerTls,
    session: u64,
    peer: SocketAddr,
) -> Option<TlsInfo> {
    let conn = tls.conn();
    let client_cert = l.client_auth.client_cert(conn);
    if let (ClientCert::Failed { reason, .. }, true) = (&client_cert, l.client_auth.required()) {
        // A resumed session carries the chain its first handshake verified, checked again
        // now: one expired or revoked since is refused as a full handshake with it would be.
        // (In a full one rustls verified it; one its facts cannot be read from is refused
        // too.)
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        tracing::info!(listener = %l.name, %peer, client_certificate = reason.as_str(), resumed,
            "TLS handshake failed: client certificate refused");
        let kind = HandshakeError::client_certificate(reason);
        l.metrics.handshake_error(true, kind);
        return None;
    }
    let (version, cipher) = crate::tls::session_tls_info(conn);
    l.metrics.handshake(true, Handshake::ok(&version));
    if l.protocol_log() {
        log_handshake(l, tls, session, peer, &version, &cipher);
    }
    match &client_cert {
        ClientCert::None => {}
        ClientCert::Verified(cert) => {
            tracing::debug!(listener = %l.name, %peer, subject = %cert.subject, issuer = %cert.issuer,
                serial = %cert.serial, sha1 = %cert.sha1, "client certificate verified");
        }
        ClientCert::Failed { cert, reason } => {
            // `request`: the session goes on as one without a certificate for Domain Security.
            tracing::info!(listener = %l.name, %peer, subject = %cert.subject, issuer = %cert.issuer,
                serial = %cert.serial, sha1 = %cert.sha1, reason = %reason,
                "client certificate did not verify; treated as none");
        }
    }
    Some(TlsInfo {
        version,
        cipher,
        client_cert,
        our_cert: OurCert::NotOffered,
    })
}

/// The protocol log's handshake lines: the certificate we sent and the client's, if any
/// (Exchange's verbose log records both).
fn log_handshake(
    l: &ListenerRuntime,
    tls: &ServerTls,
    session: u64,
    peer: SocketAddr,
    version: &str,
    cipher: &str,
) {
    let listener = &l.name;
    let conn = tls.conn();
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tracing::info!(target: PROTOCOL, session, %listener, %peer, version, cipher, sni = tls.sni(), resumed, "TLS established");
    if resumed {
        // No certificate crossed the wire: what the first handshake exchanged was logged then.
        return;
    }
    if let Some(cert) = l
        .certificates
        .served_in(tls.chosen_certificate(), tls.sni())
    {
        log_certificate(session, listener, peer, "local", &cert.info);
    }
    log_remote_certificate(l, conn.peer_certificates(), session, peer);
}

/// The peer's leaf certificate in the protocol log, or that there was none.
fn log_remote_certificate(
    l: &ListenerRuntime,
    chain: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    session: u64,
    peer: SocketAddr,
) {
    let listener = &l.name;
    let leaf = chain.and_then(|chain| chain.first());
    match leaf.map(|der| crate::tls::CertInfo::from_der(der)) {
        Some(Ok(cert)) => log_certificate(session, listener, peer, "remote", &cert),
        Some(Err(reason)) => {
            tracing::info!(target: PROTOCOL, session, %listener, %peer, %reason, "remote certificate unreadable");
        }
        None => {
            tracing::info!(target: PROTOCOL, session, %listener, %peer, "no remote certificate")
        }
    }
}

fn log_certificate(
    session: u64,
    listener: &str,
    peer: SocketAddr,
    side: &str,
    cert: &crate::tls::CertInfo,
) {
    tracing::info!(
        target: PROTOCOL,
        session,
        %listener,
        %peer,
        side,
        subject = %cert.subject,
        issuer = %cert.issuer,
        serial = %cert.serial,
        sha1 = %cert.sha1,
        sans = %cert.names_shown(","),
        not_before = %cert.not_before_rfc3339(),
        not_after = %cert.not_after_rfc3339(),
        "certificate"
    );
}

fn handshake_failed(
    l: &ListenerRuntime,
    peer: SocketAddr,
    reason: &str,
    side: &str,
    kind: HandshakeError,
) {
    let server = side == "server";
    l.metrics.handshake_error(server, kind);
    if server && l.quiet_handshake_failure() {
        return;
    }
    tracing::info!(listener = %l.name, %peer, reason, side, kind = kind.as_str(), "TLS handshake failed");
}

/// A handshake that failed with an error: with `client_certificates: require`, a client
/// certificate that was missing or did not verify is named (`expired`, `revoked`,
/// `untrusted issuer`...).
fn handshake_error(l: &ListenerRuntime, peer: SocketAddr, session: u64, e: &std::io::Error) {
    match crate::tls::refused_certificate(e) {
        Some(client_certificate) => {
            // The protocol log records every certificate received, a refused one too.
            if l.protocol_log() {
                log_remote_certificate(
                    l,
                    crate::tls::refused_leaf(e).map(std::slice::from_ref),
                    session,
                    peer,
                );
            }
            tracing::info!(listener = %l.name, %peer, client_certificate, reason = %e,
                "TLS handshake failed: client certificate refused");
            let kind = HandshakeError::client_certificate(client_certificate);
            l.metrics.handshake_error(true, kind);
        }
        None => {
            let kind = if crate::io::turn::was_stalled(e) {
                HandshakeError::Timeout
            } else {
                HandshakeError::Protocol
            };
            handshake_failed(l, peer, &e.to_string(), "server", kind);
        }
    }
}

/// A completed server handshake on a client connection.
pub(crate) struct Accepted {
    pub stream: Stream,
    pub info: TlsInfo,
    /// The half-RTT data the handshake was given went with it ([`ServerTls::accept`]).
    pub sent_half_rtt: bool,
}

/// The server side of a TLS handshake on `tcp` (implicit TLS, or after STARTTLS) by
/// `deadline`, in one of the listener's `max_handshakes` slots, sending `half_rtt` (an
/// implicit-TLS listener's greeting, or nothing) with its last flight if it can; a failure is
/// logged and counted, and ends in `None`.
pub(crate) async fn accept_tls(
    l: &ListenerRuntime,
    acceptor: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    half_rtt: Vec<u8>,
    id: u64,
    peer: SocketAddr,
) -> Option<Accepted> {
    // One of `max_handshakes` slots for the handshake's CPU work, taken once the ClientHello
    // is in, both awaited within the deadline; released when the handshake is over.
    let slot = match &l.handshakes {
        None => None,
        Some(slots) => {
            let (whole, why) = match timeout_at(deadline, crate::io::client_hello(&tcp)).await {
                Ok(Ok(whole)) => (whole, None),
                Ok(Err(why)) => (false, Some((why, HandshakeError::Protocol))),
                Err(_) => (
                    false,
                    Some(("no ClientHello in time", HandshakeError::Timeout)),
                ),
            };
            if let Some((why, kind)) = why {
                handshake_failed(l, peer, why, "server", kind);
                return None;
            }
            // With no slot free, the address the accept loop saw: a connection it let in on
            // a stalled handshake's slot takes that one.
            let socket = || {
                let socket = tcp.peer_addr().ok()?;
                Some(SocketAddr::new(socket.ip().to_canonical(), socket.port()))
            };
            // What is no whole ClientHello (warning alerts before one, one followed by a FIN)
            // rustls may still answer: a slot as for any handshake, but no stalled one cut.
            match timeout_at(deadline, slots.take(socket, whole)).await {
                Ok(Some(slot)) => Some(slot),
                _ => {
                    let why = "no handshake slot free in time (max_handshakes)";
                    handshake_failed(l, peer, why, "server", HandshakeError::Timeout);
                    return None;
                }
            }
        }
    };
    let turn = slot.as_ref().map(crate::snapshot::Slot::turn);
    match handshake(l, acceptor, tcp, deadline, half_rtt, turn).await {
        Ok(Ok(tls)) => {
            let info = handshake_done(l, &tls, id, peer)?;
            let sent_half_rtt = tls.sent_half_rtt();
            Some(Accepted {
                stream: Stream::ServerTls(Box::new(tls)),
                info,
                sent_half_rtt,
            })
        }
        Ok(Err(e)) => {
            handshake_error(l, peer, id, &e);
            None
        }
        Err(Elapsed) => {
            handshake_failed(l, peer, "timed out", "server", HandshakeError::Timeout);
            None
        }
    }
}

/// The server handshake itself, by `deadline`: here, or under handshake pressure on the
/// admission threads, below the established sessions' priority, the session then going on
/// here. A connection started on the admission threads (under pressure) is handshaken where
/// it is.
async fn handshake(
    l: &ListenerRuntime,
    acceptor: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    half_rtt: Vec<u8>,
    turn: Option<Arc<crate::io::turn::Turn>>,
) -> Result<std::io::Result<ServerTls>, Elapsed> {
    let acceptor = Arc::clone(acceptor);
    let admission = match crate::io::admission::handle() {
        Ok(admission) if l.handshakes_pressed() && !crate::io::admission::here() => admission,
        _ => {
            let accept = ServerTls::accept(tcp, acceptor, &half_rtt, turn);
            return timeout_at(deadline, accept).await.map_err(|_| Elapsed);
        }
    };
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => return Ok(Err(e)),
    };
    let mut there = Abandoned(admission.spawn(async move {
        let accept =
            async { ServerTls::accept(TcpStream::from_std(tcp)?, acceptor, &half_rtt, turn).await };
        timeout_at(deadline, accept).await.map_err(|_| Elapsed)
    }));
    match (&mut there.0).await {
        Ok(Ok(done)) => Ok(done.and_then(ServerTls::rebind)),
        Ok(Err(Elapsed)) => Err(Elapsed),
        Err(e) => Ok(Err(std::io::Error::other(e))),
    }
}

/// A handshake's deadline passed.
struct Elapsed;

/// A task that ends when its result is no longer awaited (the session that waits for it on
/// the admission threads ended).
struct Abandoned<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Abandoned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client side of a TLS handshake with a next hop on `tcp` by `deadline`. The handshake
/// accepts any certificate; the next hop's is judged here (when the session asked) and
/// reported for the session to decide. A failure is logged and counted, and ends in `None`.
pub(crate) async fn connect_tls(
    l: &ListenerRuntime,
    tcp: TcpStream,
    ask: &TlsClient,
    deadline: tokio::time::Instant,
    id: u64,
    peer: SocketAddr,
) -> Option<(Stream, TlsInfo)> {
    let originate = l.originate();
    let client_tls = originate.map(|o| &o.client_tls);
    let (Some(client_tls), Some(name)) = (client_tls, crate::tls::server_name(&ask.server_name))
    else {
        let why = "no TLS client configuration or unusable server name";
        handshake_failed(l, peer, why, "client", HandshakeError::Protocol);
        return None;
    };
    let (config, record) = client_tls.for_handshake(ask.present_certificate);
    let connect = TlsConnector::from(config).connect(name, tcp);
    let stream = match timeout_at(deadline, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let kind = HandshakeError::Protocol;
            handshake_failed(l, peer, &e.to_string(), "client", kind);
            return None;
        }
        Err(_) => {
            handshake_failed(l, peer, "timed out", "client", HandshakeError::Timeout);
            return None;
        }
    };
    let conn = stream.get_ref().1;
    let (version, cipher) = crate::tls::session_tls_info(conn);
    l.metrics.handshake(false, Handshake::ok(&version));
    // `domain-secure`: whether ours went (the next hop asked, we had one); the session
    // decides whether that makes the level.
    let our_cert = record.map_or(OurCert::NotOffered, |r| r.our_cert());
    let next_hop_cert = if ask.verify {
        let names: Vec<&str> = ask.names.iter().map(String::as_str).collect();
        client_tls.judge_server_cert(conn, &names, UnixTime::now())
    } else {
        ClientCert::None
    };
    if l.protocol_log() {
        let listener = &l.name;
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let next_hop = &ask.server_name;
        tracing::info!(target: PROTOCOL, session = id, %listener, %peer, %next_hop, version, cipher, resumed, "TLS established with the next hop");
        match our_cert {
            OurCert::NotOffered => {}
            OurCert::Sent => {
                if let Some(cert) = originate.and_then(|o| o.client_certificate.as_ref()) {
                    log_certificate(id, listener, peer, "local", cert);
                }
            }
            OurCert::NotRequested => {
                tracing::info!(target: PROTOCOL, session = id, %listener, %peer,
                    "no local certificate sent: the next hop did not ask for one");
            }
            OurCert::NoneToPresent => {
                tracing::info!(target: PROTOCOL, session = id, %listener, %peer,
                    "no local certificate sent: none to present");
            }
        }
        log_remote_certificate(l, conn.peer_certificates(), id, peer);
    }
    let info = TlsInfo {
        version,
        cipher,
        client_cert: next_hop_cert,
        our_cert,
    };
    Some((Stream::ClientTls(Box::new(stream)), info))
}

/// Record a completed handshake with a terminate listener's backend (implicit TLS, or after
/// its STARTTLS): the metric, and in the protocol log the certificate it sent (ours it did
/// not ask for). Whether that certificate was acceptable was decided in the handshake
/// (`backend.tls_verify`).
pub(crate) fn backend_tls_done(
    l: &ListenerRuntime,
    conn: &rustls::ClientConnection,
    id: u64,
    peer: SocketAddr,
) -> TlsInfo {
    let (version, cipher) = crate::tls::session_tls_info(conn);
    l.metrics.handshake(false, Handshake::ok(&version));
    if l.protocol_log() {
        let listener = &l.name;
        tracing::info!(target: PROTOCOL, session = id, %listener, %peer, version, cipher, "TLS established with the backend");
        log_remote_certificate(l, conn.peer_certificates(), id, peer);
    }
    TlsInfo {
        version,
        cipher,
        client_cert: ClientCert::None,
        our_cert: OurCert::NotOffered,
    }
}
