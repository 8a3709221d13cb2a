//! The accept loop of one listener: connection limits (SPEC §4: `421 4.7.0`), one task per
//! session, and a stop when shutdown begins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::runtime::{ListenerRuntime, ModeRuntime, Shutdown};

/// Counts of open sessions, total and per client address. The maximums are the current
/// runtime's, given at each admission (a reload may change them).
#[derive(Debug)]
struct Limits {
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// One admitted connection; releases its place when dropped.
#[derive(Debug)]
struct Admitted {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    fn admit(self: &Arc<Self>, ip: IpAddr, l: &ListenerRuntime) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        let this_ip = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= l.max_connections || this_ip >= l.max_connections_per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, this_ip + 1);
        Some(Admitted {
            limits: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accept connections until shutdown begins or `stop` turns true (the listener was removed
/// by a reload); the socket closes when the loop ends. Each accepted connection reads the
/// listener's current runtime once and its session keeps that `Arc`: a reload swaps `current`
/// for new sessions only. Every session task holds a clone of `alive`, so the runtime knows
/// when the last one has finished.
pub async fn accept_loop(
    tcp: TcpListener,
    current: Arc<ArcSwap<ListenerRuntime>>,
    mut shutdown: watch::Receiver<Shutdown>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let limits = Arc::new(Limits {
        open: Mutex::new((0, HashMap::new())),
    });
    loop {
        tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                let l = current.load_full();
                match limits.admit(peer.ip(), &l) {
                    Some(admitted) => {
                        let (l, shutdown, alive) = (Arc::clone(&l), shutdown.clone(), alive.clone());
                        tokio::spawn(async move {
                            l.metrics.connections.inc();
                            l.metrics.active.inc();
                            // The gauge alone, not the listener's whole handle: an idle
                            // session must cost little (C of ../shared/bench).
                            let active = l.metrics.active.clone();
                            match &l.mode {
                                ModeRuntime::Terminate(cfg) => {
                                    let cfg = Arc::clone(cfg);
                                    crate::inbound::serve(stream, peer, l, cfg, shutdown).await;
                                }
                                ModeRuntime::Originate(o) => {
                                    let cfg = Arc::clone(&o.session);
                                    crate::outbound::serve(stream, peer, l, cfg, shutdown).await;
                                }
                            }
                            active.dec();
                            drop((admitted, alive));
                        });
                    }
                    None => {
                        l.metrics.refused.inc();
                        tracing::info!(listener = %l.name, %peer, "too many connections");
                        tokio::spawn(refuse(stream, l.implicit_tls));
                    }
                }},
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %current.load().name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() != Shutdown::Running {
                    break;
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

/// `421 4.7.0` and close. On an implicit-TLS port a plaintext reply would be noise, and a
/// handshake is what an overloaded listener can least afford: just close.
async fn refuse(mut stream: TcpStream, implicit_tls: bool) {
    if !implicit_tls {
        let reply = b"421 4.7.0 Too many connections, try again later\r\n";
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply)).await;
    }
    let _ = stream.shutdown().await;
}
