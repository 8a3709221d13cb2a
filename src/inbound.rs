//! The terminate-mode entry: a client connection becomes an `smtp_core::inbound::Session`
//! (after the implicit TLS handshake on an SMTPS listener) run by the one driver loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::inbound::Session;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::driver::{accept_tls, Driver};
use crate::io::Stream;
use crate::shutdown::Shutdown;
use crate::snapshot::ListenerRuntime;

/// Serve one client connection of a terminate listener until it ends; the connection is
/// returned when it is to close with a linger ([`Driver::lingering`]).
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    l: Arc<ListenerRuntime>,
    cfg: Arc<smtp_core::inbound::Config>,
    shutdown: watch::Receiver<Shutdown>,
) -> Option<Stream> {
    let started = Instant::now();
    let mut driver = Driver::new(&l, peer);
    let (client, tls) = match (&l.acceptor, l.implicit_tls) {
        (Some(acceptor), true) => {
            let deadline = tokio::time::Instant::now() + l.tls_handshake_timeout();
            let handshake = accept_tls(&l, acceptor, tcp, deadline, driver.id, peer);
            match Box::pin(handshake).await {
                Some((client, info)) => (client, Some(info)),
                None => return None,
            }
        }
        _ => (Stream::Plain(tcp), None),
    };
    let mut session = Session::new(cfg, peer, tls, started, SystemTime::now());
    driver.run(&mut session, client, shutdown).await;
    driver.ended(started, session.tls());
    driver.lingering()
}
