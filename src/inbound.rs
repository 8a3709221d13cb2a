//! The terminate-mode entry: a client connection becomes an `smtp_core::inbound::Session`
//! (after the implicit TLS handshake on an SMTPS listener) run by the one driver loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::inbound::Session;
use smtp_core::session::TlsInfo;
use tokio::net::TcpStream;

use crate::driver::{accept_tls, next_session_id, Served};
use crate::io::Stream;
use crate::snapshot::ListenerRuntime;

/// A client connection of a terminate listener, ready for its session: on an implicit-TLS
/// listener, its handshake done.
#[derive(Debug)]
pub struct Opened {
    client: Stream,
    tls: Option<TlsInfo>,
    /// The greeting went with the handshake (TLS 1.3 half-RTT data).
    greeted: bool,
    peer: SocketAddr,
    id: u64,
    started: Instant,
    cfg: Arc<smtp_core::inbound::Config>,
}

/// Open a client connection of a terminate listener: the TLS handshake of an implicit-TLS
/// listener. `None` if it failed (logged and counted).
///
/// The handshake sends our greeting with its last flight when it can (TLS 1.3, and no client
/// certificate asked for in a full handshake: [`crate::io::ServerTls::accept`]), unless every
/// backend server is marked down, when the client is better told `421 4.4.2` at once, or the
/// listener requires a client certificate (a resumed session may still be refused). The
/// session then connects to the backend as soon as the handshake ends, while the client sends
/// its first command: one write and one round trip fewer before that command.
pub async fn open(
    tcp: TcpStream,
    peer: SocketAddr,
    l: &ListenerRuntime,
    cfg: Arc<smtp_core::inbound::Config>,
) -> Option<Opened> {
    let started = Instant::now();
    let id = next_session_id();
    let (client, tls, greeted) = match (&l.acceptor, l.implicit_tls) {
        (Some(acceptor), true) => {
            let deadline = tokio::time::Instant::now() + l.tls_handshake_timeout();
            // Under `client_certificates: require` the session may yet be refused after the
            // handshake (a resumed one whose certificate no longer verifies): no greeting
            // before that.
            let greeting = match l.pool.any_up() && !l.client_auth.required() {
                true => cfg.greeting().into_bytes(),
                false => Vec::new(),
            };
            let length = greeting.len();
            let handshake = accept_tls(l, acceptor, tcp, deadline, greeting, id, peer);
            let accepted = Box::pin(handshake).await?;
            if accepted.sent_half_rtt {
                // Written by the handshake, not by a write of the session's.
                l.metrics.bytes(true, false, length);
            }
            (accepted.stream, Some(accepted.info), accepted.sent_half_rtt)
        }
        _ => (Stream::Plain(tcp), None, false),
    };
    Some(Opened {
        client,
        tls,
        greeted,
        peer,
        id,
        started,
        cfg,
    })
}

/// Serve an opened client connection of a terminate listener ([`crate::driver::serve`]).
pub fn serve<'a>(
    opened: Opened,
    l: &'a Arc<ListenerRuntime>,
    shutdown: &'a mut crate::shutdown::Watch,
) -> impl Future<Output = Served> + Send + 'a {
    let Opened {
        client,
        tls,
        greeted,
        peer,
        id,
        started,
        cfg,
    } = opened;
    // Under a handshake flood a STARTTLS session greets without waiting for the backend,
    // and connects to it once TLS is up (or for a command before TLS that needs it): the
    // flood's connections that never get that far cost the backend nothing, and the
    // sidecar's core the packets of a connection each.
    let known_ehlo = (tls.is_none() && cfg.starttls && l.handshakes_flooded())
        .then(|| l.pool.known_ehlo())
        .flatten();
    let session = match (known_ehlo, tls) {
        (Some(ehlo), _) => Session::new_deferred(cfg, peer, ehlo, started, SystemTime::now()),
        (None, Some(tls)) if greeted => {
            Session::new_greeted(cfg, peer, tls, started, SystemTime::now())
        }
        (None, tls) => Session::new(cfg, peer, tls, started, SystemTime::now()),
    };
    crate::driver::serve(l, session, client, (peer, id), shutdown)
}
