//! The originate-mode entry: a connection from the legacy MTA becomes an
//! `smtp_core::outbound::Session` run by the one driver loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use smtp_core::outbound::Session;
use tokio::net::TcpStream;

use crate::driver::Served;
use crate::io::Stream;
use crate::snapshot::ListenerRuntime;

/// Serve one connection of an originate listener ([`crate::driver::serve`]).
pub fn serve<'a>(
    tcp: TcpStream,
    peer: SocketAddr,
    l: &'a Arc<ListenerRuntime>,
    cfg: Arc<smtp_core::outbound::Config>,
    shutdown: &'a mut crate::shutdown::Watch,
) -> impl Future<Output = Served> + Send + 'a {
    let started = Instant::now();
    let id = crate::driver::next_session_id();
    let session = Session::new(cfg, peer.ip(), started, SystemTime::now());
    crate::driver::serve(l, session, Stream::Plain(tcp), (peer, id), shutdown)
}
