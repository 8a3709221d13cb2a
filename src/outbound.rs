//! The originate-mode entry: a connection from the legacy MTA becomes an
//! `smtp_core::outbound::Session` run by the one driver loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::outbound::Session;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::driver::Driver;
use crate::io::Stream;
use crate::shutdown::Shutdown;
use crate::snapshot::ListenerRuntime;

/// Serve one connection of an originate listener until it ends; the connection is returned
/// when it is to close with a linger ([`Driver::lingering`]).
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    l: Arc<ListenerRuntime>,
    cfg: Arc<smtp_core::outbound::Config>,
    shutdown: watch::Receiver<Shutdown>,
) -> Option<Stream> {
    let started = Instant::now();
    let mut driver = Driver::new(&l, peer, crate::driver::next_session_id());
    let mut session = Session::new(cfg, peer.ip(), started, SystemTime::now());
    driver.run(&mut session, Stream::Plain(tcp), shutdown).await;
    driver.ended(started, None);
    driver.lingering()
}
