//! The sidecar's runtime, in two parts (DESIGN.md §1):
//!
//! - **build** (`build.rs`): configuration, certificate store and trust → one immutable
//!   [`Snapshot`], or every problem. Pure apart from reading files; `run`, `check` and a
//!   reload all use it.
//! - **run** (this file, and `reload.rs`): what lives for the process — the bound sockets
//!   and their accept loops (with their connection limits), the metrics registry and admin
//!   endpoint, the health checks, the drain on shutdown — and the snapshot in force, which
//!   a reload replaces whole. Each accept loop holds its listener's runtime in an `ArcSwap`
//!   that a new session reads once.
//!
//! The dependency runs one way: runtime → listener → inbound/outbound → driver, all of them
//! reading [`crate::snapshot`] types, none of them this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::clock::unix_now;
use crate::config::Config;
use crate::listener::Limits;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::tls::{CertPlan, CertStore, LoadedCert, Trust};

mod build;
mod reload;

pub use build::{build, load_certificates, load_files};
pub use reload::FileWatch;

/// Why [`start`] could not: every problem of the trust or of the build, or a port.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.join("\n"))]
    Trust(Vec<String>),
    /// The configuration cannot run over the store and trust given (see [`build`]).
    #[error("{}", .0.join("\n"))]
    Build(Vec<String>),
    #[error("listener {name}: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: cannot listen on {addr}: {source}")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the build found for the operator, at the level each asks for.
fn log_warnings(snapshot: &Snapshot) {
    for w in &snapshot.warnings {
        if w.error {
            tracing::error!(listener = %w.listener, "{}", w.message);
        } else {
            tracing::warn!(listener = %w.listener, "{}", w.message);
        }
    }
}

/// An expired certificate is still served (as Exchange does: refusing TLS would push mail to
/// plaintext), but the operator hears of it at start, on reload and daily.
fn warn_if_expired(listener: &str, cert: &LoadedCert, now: i64) {
    if now > cert.info.not_after {
        tracing::warn!(
            listener,
            certificate = %cert.name,
            thumbprint = %cert.info.sha1,
            not_after = %cert.info.not_after_rfc3339(),
            "the certificate served has expired; serving it anyway"
        );
    }
}

/// The certificate each listener serves a client without SNI, warned of if expired.
fn warn_expired(snapshot: &Snapshot) {
    let now = unix_now();
    for (_, rt) in &snapshot.listeners {
        if let Some(cert) = rt.certificates.served(None) {
            warn_if_expired(&rt.name, cert, now);
        }
    }
}

/// Each listener's explicitly selected certificate, whose expiry is checked daily.
fn explicit_certificates(snapshot: &Snapshot) -> Vec<(String, LoadedCert)> {
    snapshot
        .listeners
        .iter()
        .filter_map(|(_, rt)| match &rt.certificates {
            CertPlan::Explicit(cert) => Some((rt.name.clone(), cert.clone())),
            _ => None,
        })
        .collect()
}

/// A started sidecar: listeners bound and accepting.
#[derive(Debug)]
pub struct Running {
    /// Each listener's name and the address it is bound to (useful with port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    /// What the listeners were built from, the configuration in force included (the unit a
    /// reload replaces).
    pub snapshot: Arc<Snapshot>,
    /// The file a reload re-reads (`None`: started from a configuration in memory, which
    /// cannot be reloaded).
    config_path: Option<PathBuf>,
    /// The bound listeners, by the `listen` address of the configuration.
    active: Vec<(SocketAddr, Active)>,
    /// What the status page knows of each listener.
    infos: Arc<ArcSwap<Vec<crate::status::ListenerInfo>>>,
    shutdown: crate::shutdown::Sender,
    /// Given to the accept loops a reload starts; dropped when shutdown begins.
    alive_tx: Option<mpsc::Sender<()>>,
    alive: mpsc::Receiver<()>,
    grace: Duration,
    /// Dropped: the expiry warnings of the snapshot replaced end.
    expiry: watch::Sender<bool>,
    /// The counts of listeners a reload removed, by name, while their sessions run.
    retired: Vec<(String, Weak<Limits>)>,
    /// How long a reload may take to read and build its configuration ([`RELOAD_DEADLINE`]).
    reload_deadline: Duration,
}

/// One bound listener: the runtime its accept loop hands each new session, and what stops
/// the loop and the health checks of the runtime's pool (which a reload may keep).
#[derive(Debug)]
struct Active {
    local: SocketAddr,
    current: Arc<ArcSwap<ListenerRuntime>>,
    /// true, or dropped: the accept loop ends and the socket closes (sessions go on).
    stop: watch::Sender<bool>,
    /// The listener's counts, while its accept loop or a session holds them.
    limits: Weak<Limits>,
    /// Dropped: the health checks of the pool of the runtime it was made for end.
    checks: watch::Sender<bool>,
}

/// Start the health checks of `rt`'s pool; they end with shutdown or when the returned
/// sender is dropped (the pool was replaced, or its listener closed). The task holds the
/// pool and what the checks report with, not the whole runtime.
fn spawn_health_checks(
    rt: &ListenerRuntime,
    shutdown: crate::shutdown::Watch,
) -> watch::Sender<bool> {
    let (tx, mut rx) = watch::channel(false);
    if !rt.pool.is_empty() {
        let pool = Arc::clone(&rt.pool);
        let (name, hostname) = (rt.name.clone(), rt.hostname().to_owned());
        let metrics = rt.metrics.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = pool.health_checks(&name, &hostname, &metrics, shutdown) => {}
                _ = rx.changed() => {}
            }
        });
    }
    tx
}

/// Start accepting on `tcp` with `limits`: new ones, or those of the listener of the same name
/// that a reload moved or removed and whose sessions still run.
fn spawn_listener(
    tcp: TcpListener,
    local: SocketAddr,
    rt: Arc<ListenerRuntime>,
    shutdown: &crate::shutdown::Watch,
    limits: Arc<Limits>,
) -> Active {
    tracing::info!(listener = %rt.name, addr = %local, "listening");
    let checks = spawn_health_checks(&rt, shutdown.clone());
    let current = Arc::new(ArcSwap::new(rt));
    let (stop, stop_rx) = watch::channel(false);
    let weak = Arc::downgrade(&limits);
    tokio::spawn(crate::listener::accept_loop(
        tcp,
        Arc::clone(&current),
        shutdown.clone(),
        stop_rx,
        limits,
    ));
    Active {
        local,
        current,
        stop,
        limits: weak,
        checks,
    }
}

fn listener_infos(active: &[(SocketAddr, Active)]) -> Vec<crate::status::ListenerInfo> {
    active
        .iter()
        .map(|(_, a)| {
            let rt = a.current.load();
            crate::status::ListenerInfo {
                name: rt.name.clone(),
                mode: rt.mode_name().to_owned(),
                listen: a.local.to_string(),
            }
        })
        .collect()
}

/// Bind every listener and the admin endpoint, then accept in the background.
pub async fn start(config: &Config, store: &CertStore) -> Result<Running, StartError> {
    let mut registry = prometheus::Registry::new();
    let metrics = Metrics::register(&mut registry);
    metrics.set_certificates(store);
    metrics.config_generation.set(1);
    metrics.config_last_reload_timestamp_seconds.set(unix_now());
    // Loaded once per snapshot and shared by its listeners.
    let trust = Trust::load(&config.trust).map_err(StartError::Trust)?;
    log_trust(&trust);
    let snapshot =
        build(config, store.clone(), trust, &metrics, None).map_err(StartError::Build)?;
    log_warnings(&snapshot);
    warn_expired(&snapshot);
    let snapshot = Arc::new(snapshot);
    let mut bound = Vec::new();
    for (addr, rt) in &snapshot.listeners {
        let tcp = crate::listener::bind(addr).map_err(|source| StartError::Bind {
            name: rt.name.clone(),
            addr: *addr,
            source,
        })?;
        let local = tcp.local_addr().unwrap_or(*addr);
        bound.push((*addr, tcp, local, Arc::clone(rt)));
    }
    snapshot
        .bound
        .set(bound.iter().map(|(_, _, local, _)| *local).collect());
    // Bound before any listener says it is listening: whoever waits for that line can ask
    // the admin endpoint at once (it answers once serving starts below).
    let admin = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::BindMetrics { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = admin
        .as_ref()
        .zip(config.metrics_listen)
        .map(|(tcp, addr)| tcp.local_addr().unwrap_or(addr));
    let (shutdown, watch_rx) = crate::shutdown::channel();
    let (alive_tx, alive) = mpsc::channel(1);
    let active: Vec<_> = bound
        .into_iter()
        .map(|(addr, tcp, local, rt)| {
            (
                addr,
                spawn_listener(tcp, local, rt, &watch_rx, Limits::new(alive_tx.clone())),
            )
        })
        .collect();
    let infos = Arc::new(ArcSwap::from_pointee(listener_infos(&active)));
    if let Some(tcp) = admin {
        tokio::spawn(crate::admin::serve(
            tcp,
            metrics.clone(),
            Arc::clone(&infos),
            watch_rx.clone(),
        ));
    }
    let expiry = spawn_expiry_warnings(&snapshot, &watch_rx);
    Ok(Running {
        listeners: names(&active),
        metrics_addr,
        metrics,
        snapshot,
        config_path: None,
        active,
        infos,
        shutdown,
        alive_tx: Some(alive_tx),
        alive,
        grace: config.shutdown_grace,
        expiry,
        retired: Vec::new(),
        reload_deadline: reload::RELOAD_DEADLINE,
    })
}

fn names(active: &[(SocketAddr, Active)]) -> Vec<(String, SocketAddr)> {
    active
        .iter()
        .map(|(_, a)| (a.current.load().name.clone(), a.local))
        .collect()
}

fn log_trust(trust: &Trust) {
    let s = &trust.summary;
    tracing::info!(
        anchors = trust.roots.len(),
        system_roots = s.system.as_ref().map_or(0, |(n, _)| *n),
        ca_files = s.ca_files.len(),
        crls = s.crls.len(),
        "trust loaded"
    );
}

/// The daily expiry warnings of `snapshot`'s explicitly selected certificates; they end
/// when shutdown begins or the returned sender is dropped (the snapshot was replaced).
fn spawn_expiry_warnings(
    snapshot: &Snapshot,
    shutdown: &crate::shutdown::Watch,
) -> watch::Sender<bool> {
    let (tx, rx) = watch::channel(false);
    let explicit = explicit_certificates(snapshot);
    if !explicit.is_empty() {
        tokio::spawn(expiry_warnings(explicit, shutdown.clone(), rx));
    }
    tx
}

/// Once a day, the start-up warning again for each explicitly selected certificate that has
/// expired (it may expire while the process runs), until shutdown begins.
async fn expiry_warnings(
    explicit: Vec<(String, LoadedCert)>,
    mut shutdown: crate::shutdown::Watch,
    mut replaced: watch::Receiver<bool>,
) {
    const DAY: Duration = Duration::from_secs(86_400);
    let mut daily = tokio::time::interval_at(tokio::time::Instant::now() + DAY, DAY);
    loop {
        tokio::select! {
            _ = daily.tick() => {
                let now = unix_now();
                for (listener, cert) in &explicit {
                    warn_if_expired(listener, cert, now);
                }
            }
            _ = shutdown.changed() => return,
            _ = replaced.changed() => return,
        }
    }
}

impl Running {
    /// The bound address of the listener called `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Stop accepting, let sessions finish for the grace period, then tell the rest
    /// `421 4.3.2` and wait briefly for them to close.
    pub async fn shutdown(mut self) {
        self.alive_tx = None;
        self.shutdown.send(Shutdown::Draining);
        if tokio::time::timeout(self.grace, self.alive.recv())
            .await
            .is_err()
        {
            // What is left may be only lingering closes, which end by themselves (2 s).
            match self.metrics.sessions_open() {
                0 => tracing::info!("shutdown grace over: no session left, only lingering closes"),
                sessions => {
                    tracing::warn!(sessions, "shutdown grace over: closing the sessions left");
                }
            }
            self.shutdown.send(Shutdown::GraceOver);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.alive.recv()).await;
        }
    }
}
