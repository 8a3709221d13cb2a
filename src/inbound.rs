//! The terminate-mode entry: a client connection becomes an `smtp_core::inbound::Session`
//! (after the implicit TLS handshake on an SMTPS listener) run by the one driver loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::inbound::Session;
use smtp_core::session::TlsInfo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::driver::{accept_tls, next_session_id, Driver};
use crate::io::Stream;
use crate::shutdown::Shutdown;
use crate::snapshot::ListenerRuntime;

/// A client connection of a terminate listener, ready for its session: on an implicit-TLS
/// listener, its handshake done.
#[derive(Debug)]
pub struct Opened {
    client: Stream,
    tls: Option<TlsInfo>,
    peer: SocketAddr,
    id: u64,
    started: Instant,
}

impl Opened {
    /// The same connection, its socket registered with the runtime this is called on (it
    /// was opened on the admission threads).
    pub fn rebind(self) -> std::io::Result<Opened> {
        Ok(Opened {
            client: self.client.rebind()?,
            ..self
        })
    }
}

/// Open a client connection of a terminate listener: the TLS handshake of an implicit-TLS
/// listener. `None` if it failed (logged and counted).
pub async fn open(tcp: TcpStream, peer: SocketAddr, l: &ListenerRuntime) -> Option<Opened> {
    let started = Instant::now();
    let id = next_session_id();
    let (client, tls) = match (&l.acceptor, l.implicit_tls) {
        (Some(acceptor), true) => {
            let deadline = tokio::time::Instant::now() + l.tls_handshake_timeout();
            let handshake = accept_tls(l, acceptor, tcp, deadline, id, peer);
            let (client, info) = Box::pin(handshake).await?;
            (client, Some(info))
        }
        _ => (Stream::Plain(tcp), None),
    };
    Some(Opened {
        client,
        tls,
        peer,
        id,
        started,
    })
}

/// Serve an opened client connection of a terminate listener until it ends; the connection
/// is returned when it is to close with a linger ([`Driver::lingering`]). The session is
/// made before the future: what an async fn is given stays in its future to the end, and an
/// idle session must cost little (C of ../shared/bench).
pub fn serve(
    opened: Opened,
    l: Arc<ListenerRuntime>,
    cfg: Arc<smtp_core::inbound::Config>,
    shutdown: watch::Receiver<Shutdown>,
) -> impl Future<Output = Option<Stream>> + Send {
    let Opened {
        client,
        tls,
        peer,
        id,
        started,
    } = opened;
    let mut session = Session::new(cfg, peer, tls, started, SystemTime::now());
    async move {
        let mut driver = Driver::new(&l, peer, id);
        driver.run(&mut session, client, shutdown).await;
        driver.ended(started, session.tls());
        driver.lingering()
    }
}
