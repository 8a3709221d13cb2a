//! The terminate-mode driver: moves bytes between the client socket (plain, STARTTLS or
//! implicit TLS), the backend socket and `smtp_core::inbound::Session`, and carries out the
//! session's actions in order. It decides nothing about SMTP itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::inbound::{Action, ClientCert, Event, Session, TlsInfo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use crate::backend;
use crate::io::{read_now, readable, Client, Read};
use crate::runtime::{ListenerRuntime, Shutdown};

/// Numbers the sessions of this process, for the protocol log.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Where protocol log lines go: filter them with `smtp_sidecar::protocol=info`.
const PROTOCOL: &str = "smtp_sidecar::protocol";

/// Record a completed server-side handshake; returns what the session needs to know.
fn handshake_done(
    l: &ListenerRuntime,
    conn: &rustls::ServerConnection,
    session: u64,
    peer: SocketAddr,
) -> TlsInfo {
    let (version, cipher) = crate::tls::session_tls_info(conn);
    l.metrics
        .tls_handshakes_total
        .with_label_values(&[&l.name, "server", "ok", &version])
        .inc();
    if l.session.protocol_log {
        log_handshake(l, conn, session, peer, &version, &cipher);
    }
    let client_cert = l.client_auth.client_cert(conn);
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
    TlsInfo {
        version,
        cipher,
        client_cert,
    }
}

/// The protocol log's handshake lines: the certificate we sent and the client's, if any
/// (Exchange's verbose log records both).
fn log_handshake(
    l: &ListenerRuntime,
    conn: &rustls::ServerConnection,
    session: u64,
    peer: SocketAddr,
    version: &str,
    cipher: &str,
) {
    let listener = &l.name;
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    tracing::info!(target: PROTOCOL, session, %listener, %peer, version, cipher, sni = conn.server_name(), resumed, "TLS established");
    if resumed {
        // No certificate crossed the wire: what the first handshake exchanged was logged then.
        return;
    }
    if let Some(cert) = l.certificates.served(conn.server_name()) {
        log_certificate(session, listener, peer, "local", &cert.info);
    }
    let leaf = conn.peer_certificates().and_then(|chain| chain.first());
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
        sans = %cert.sans.join(","),
        not_before = %cert.not_before_rfc3339(),
        not_after = %cert.not_after_rfc3339(),
        "certificate"
    );
}

fn handshake_failed(l: &ListenerRuntime, peer: SocketAddr, reason: &str) {
    tracing::info!(listener = %l.name, %peer, reason, "TLS handshake failed");
    count_handshake_error(l);
}

/// A handshake that failed with an error: with `client_certificates: require`, a client
/// certificate that was missing or did not verify is named (`expired`, `revoked`,
/// `untrusted issuer`...).
fn handshake_error(l: &ListenerRuntime, peer: SocketAddr, e: &std::io::Error) {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(
            err @ (rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)),
        ) => {
            let client_certificate = crate::tls::failure_reason(err);
            tracing::info!(listener = %l.name, %peer, client_certificate, reason = %e,
                "TLS handshake failed: client certificate refused");
            count_handshake_error(l);
        }
        _ => handshake_failed(l, peer, &e.to_string()),
    }
}

fn count_handshake_error(l: &ListenerRuntime) {
    l.metrics
        .tls_handshakes_total
        .with_label_values(&[&l.name, "server", "error", ""])
        .inc();
}

/// The server side of a TLS handshake on `tcp` (implicit TLS, or after STARTTLS) by
/// `deadline`; a failure is logged and counted, and ends in `None`.
async fn accept_tls(
    l: &ListenerRuntime,
    acceptor: &Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
    id: u64,
    peer: SocketAddr,
) -> Option<(Client, TlsInfo)> {
    let accept = TlsAcceptor::from(Arc::clone(acceptor)).accept(tcp);
    match timeout_at(deadline, accept).await {
        Ok(Ok(stream)) => {
            let info = handshake_done(l, stream.get_ref().1, id, peer);
            Some((Client::Tls(Box::new(stream)), info))
        }
        Ok(Err(e)) => {
            handshake_error(l, peer, &e);
            None
        }
        Err(_) => {
            handshake_failed(l, peer, "timed out");
            None
        }
    }
}

/// Serve one client connection until it ends.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    l: Arc<ListenerRuntime>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let started = Instant::now();
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY on client socket");
    }
    let (mut client, tls) = match (&l.acceptor, l.implicit_tls) {
        (Some(acceptor), true) => {
            let deadline = tokio::time::Instant::now() + l.session.timeouts.tls_handshake;
            match accept_tls(&l, acceptor, tcp, deadline, id, peer).await {
                Some((client, info)) => (client, Some(info)),
                None => return,
            }
        }
        _ => (Client::Plain(tcp), None),
    };
    let mut session = Session::new(
        l.session.clone(),
        peer.ip(),
        tls,
        started,
        SystemTime::now(),
    );
    let mut backend: Option<TcpStream> = None;
    // Try a read before waiting for readiness: after a TLS handshake or a full read, bytes
    // may already be buffered (in rustls or the kernel) with no new readiness to come.
    let (mut client_more, mut backend_more) = (true, false);
    let mut messages = 0u32;

    'session: loop {
        while let Some(action) = session.poll_action() {
            // Events first: protocol log lines must be written before a handshake's.
            while let Some(event) = session.poll_event() {
                messages += record(&l, &session, event, peer, id);
            }
            match action {
                Action::WriteClient(bytes) => {
                    let write = timeout(l.write_timeout, client.write(&bytes));
                    if !matches!(write.await, Ok(Ok(()))) {
                        session.handle_client_lost(Instant::now());
                    }
                }
                Action::WriteBackend(bytes) => {
                    let ok = match backend.as_mut() {
                        Some(b) => matches!(
                            timeout(l.write_timeout, b.write_all(&bytes)).await,
                            Ok(Ok(()))
                        ),
                        None => false,
                    };
                    if !ok {
                        session.handle_backend_eof(Instant::now());
                    }
                }
                Action::ConnectBackend => {
                    match backend::connect(&l.servers, l.connect_timeout).await {
                        Ok(stream) => {
                            backend = Some(stream);
                            session.handle_backend_connected(Instant::now());
                        }
                        Err(reason) => {
                            tracing::warn!(listener = %l.name, %peer, %reason, "backend unreachable");
                            session.handle_backend_connect_failed(&reason, Instant::now());
                        }
                    }
                }
                Action::CloseBackend => {
                    // An abortive close (RST): the backend discards the message in flight, and
                    // no TIME_WAIT is left behind, so sessions that have many messages refused
                    // cannot use up the ports toward a backend on another host.
                    if let Some(b) = backend.take() {
                        if let Err(e) = b.set_zero_linger() {
                            tracing::debug!(error = %e, "SO_LINGER on backend socket");
                        }
                    }
                }
                Action::StartTls => {
                    let Client::Plain(tcp) = std::mem::replace(&mut client, Client::Taken) else {
                        session.handle_tls_failed(Instant::now());
                        continue;
                    };
                    let Some(acceptor) = &l.acceptor else {
                        session.handle_tls_failed(Instant::now());
                        continue;
                    };
                    // The plain stream is moved into the TLS stream: no plaintext buffer
                    // survives the upgrade (DESIGN.md rule 4). The session's deadline, or
                    // the handshake timeout if it set none: every wait has one.
                    let deadline = session.poll_timeout().map_or_else(
                        || tokio::time::Instant::now() + l.session.timeouts.tls_handshake,
                        tokio::time::Instant::from_std,
                    );
                    match accept_tls(&l, acceptor, tcp, deadline, id, peer).await {
                        Some((tls, info)) => {
                            client = tls;
                            client_more = true;
                            session.handle_tls_established(info, Instant::now());
                        }
                        None => session.handle_tls_failed(Instant::now()),
                    }
                }
                Action::Close => {
                    if let Some(mut b) = backend.take() {
                        let _ = timeout(l.write_timeout, b.shutdown()).await;
                    }
                    let _ = timeout(l.write_timeout, client.shutdown()).await;
                    break 'session;
                }
            }
        }
        while let Some(event) = session.poll_event() {
            messages += record(&l, &session, event, peer, id);
        }
        if session.is_closed() {
            break;
        }
        if client_more && session.wants_client_bytes() {
            match client.read_now(|data| session.handle_client_bytes(data, Instant::now())) {
                Read::Data { more } => {
                    client_more = more;
                    continue;
                }
                Read::Closed => {
                    session.handle_client_eof(Instant::now());
                    continue;
                }
                Read::WouldBlock => client_more = false,
            }
        }
        if backend_more {
            let read = match backend.as_mut() {
                Some(b) => read_now(b, |data| session.handle_backend_bytes(data, Instant::now())),
                None => Read::WouldBlock,
            };
            match read {
                Read::Data { more } => {
                    backend_more = more;
                    continue;
                }
                Read::Closed => {
                    backend = None;
                    session.handle_backend_eof(Instant::now());
                    continue;
                }
                Read::WouldBlock => backend_more = false,
            }
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            () = client.readable(), if session.wants_client_bytes() => client_more = true,
            () = readable(&backend) => backend_more = true,
            _ = sleep_until(deadline.unwrap_or_else(far_future)), if deadline.is_some() => {
                session.handle_timeout(Instant::now());
            }
            r = shutdown.changed() => {
                let state = if r.is_ok() { *shutdown.borrow_and_update() } else { Shutdown::GraceOver };
                match state {
                    Shutdown::Running => {}
                    Shutdown::Draining => session.handle_shutdown(Instant::now()),
                    Shutdown::GraceOver => session.handle_grace_expired(Instant::now()),
                }
            }
        }
    }
    while let Some(event) = session.poll_event() {
        messages += record(&l, &session, event, peer, id);
    }
    let elapsed = started.elapsed();
    l.metrics
        .session_duration_seconds
        .with_label_values(&[&l.name])
        .observe(elapsed.as_secs_f64());
    tracing::debug!(listener = %l.name, %peer, messages, tls = session.tls().is_some(), ?elapsed, "session ended");
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// Count or log an event; returns 1 for an accepted message.
fn record(l: &ListenerRuntime, session: &Session, event: Event, peer: SocketAddr, id: u64) -> u32 {
    let tls = if session.tls().is_some() { "yes" } else { "no" };
    let m = &l.metrics;
    match event {
        Event::MessageAccepted { bytes } => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "accepted"])
                .inc();
            m.message_bytes_total
                .with_label_values(&[&l.name])
                .inc_by(bytes);
            return 1;
        }
        Event::MessageRejected => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "rejected"])
                .inc();
        }
        Event::MessageFailed => {
            m.messages_total
                .with_label_values(&[&l.name, tls, "failed"])
                .inc();
        }
        Event::PolicyRejection { reason, enforced } => {
            tracing::info!(listener = %l.name, %peer, reason, enforced, "policy refusal");
            let enforced = if enforced { "true" } else { "false" };
            m.policy_rejections_total
                .with_label_values(&[&l.name, reason, enforced])
                .inc();
        }
        Event::DomainSecureRefused(refusal) => {
            let enforced = l.session.enforce;
            tracing::info!(listener = %l.name, %peer, domain = %refusal.domain,
                missing = %refusal.text(), subject = refusal.subject.as_deref().unwrap_or("-"),
                enforced, "Domain Security not met");
        }
        Event::DomainSecureAccepted { domain } => {
            // `domain` is the listed domain as configured: a bounded label.
            m.domain_secure_messages_received_total
                .with_label_values(&[&l.name, &domain])
                .inc();
        }
        Event::BackendFailed { reason } => {
            tracing::warn!(listener = %l.name, %peer, %reason, "backend failed; client told 421 4.4.2");
            m.backend_failures_total.with_label_values(&[&l.name]).inc();
        }
        Event::Protocol { direction, line } => {
            let listener = &l.name;
            let dir = direction.as_str();
            tracing::info!(target: PROTOCOL, session = id, %listener, %peer, "{dir} {line}");
        }
    }
    0
}
