//! Building and running everything from a validated configuration: the TLS configuration and
//! session policy of each listener (one immutable [`ListenerRuntime`] each, shared by its
//! sessions), the bound sockets, the admin endpoint, and the drain on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::config::{BackendTls, Config, Listener, ListenerMode, ListenerTls, TerminateListener};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::tls::{CertPlan, CertStore, ClientAuth, LoadedCert, Trust};

mod originate;
mod reload;

pub use reload::FileWatch;

/// Where shutdown stands; every session watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Stop accepting; sessions finish their transaction, then get `421 4.3.2`.
    Draining,
    /// `shutdown_grace` is over: `421 4.3.2` to whatever is left.
    GraceOver,
}

/// Everything a session of one listener needs, fixed when the listener starts.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub name: String,
    pub implicit_tls: bool,
    /// `None`: no certificate, so no STARTTLS (`454 4.7.0`).
    pub acceptor: Option<Arc<rustls::ServerConfig>>,
    /// `client_certificates`: what a session learns of the client's certificate.
    pub client_auth: ClientAuth,
    /// What each session is given, by mode.
    pub mode: ModeRuntime,
    /// Where `ConnectBackend` goes: the legacy server(s), or an originate listener's relay,
    /// with what the health checks know of each.
    pub pool: crate::backend::Pool,
    pub connect_timeout: Duration,
    /// Deadline for writing to either peer.
    pub write_timeout: Duration,
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    /// `proxy_protocol: true`: the deadline of the PROXY header each connection begins with.
    pub proxy_header: Option<Duration>,
    /// This listener's series, labels resolved.
    pub metrics: ListenerMetrics,
    /// How the certificate is chosen, to name the one served in the protocol log.
    pub certificates: CertPlan,
}

/// The mode-specific part of a listener's runtime.
#[derive(Debug)]
pub enum ModeRuntime {
    Terminate(Arc<smtp_core::inbound::Config>),
    Originate(Box<OriginateRuntime>),
}

/// What an originate listener's sessions need beyond their policy.
#[derive(Debug)]
pub struct OriginateRuntime {
    pub session: Arc<smtp_core::outbound::Config>,
    /// `next_hop: mx`: the MX resolver and the port next hops are contacted on.
    pub resolver: Option<crate::mx::MxResolver>,
    pub mx_port: u16,
    /// The TLS client toward next hops, and the certificate it presents (for the log).
    pub client_tls: crate::tls::ClientTls,
    pub client_certificate: Option<crate::tls::CertInfo>,
}

impl ListenerRuntime {
    /// `log.protocol_log`: command, reply and certificate lines of every session.
    pub fn protocol_log(&self) -> bool {
        match &self.mode {
            ModeRuntime::Terminate(c) => c.protocol_log,
            ModeRuntime::Originate(o) => o.session.protocol_log,
        }
    }

    fn timeouts(&self) -> &smtp_core::session::Timeouts {
        match &self.mode {
            ModeRuntime::Terminate(c) => &c.timeouts,
            ModeRuntime::Originate(o) => &o.session.timeouts,
        }
    }

    /// Our name, as the sessions give it (and the health checks' EHLO).
    pub fn hostname(&self) -> &str {
        match &self.mode {
            ModeRuntime::Terminate(c) => &c.hostname,
            ModeRuntime::Originate(o) => &o.session.hostname,
        }
    }

    /// The originate part, for an originate listener.
    pub fn originate(&self) -> Option<&OriginateRuntime> {
        match &self.mode {
            ModeRuntime::Originate(o) => Some(o),
            ModeRuntime::Terminate(_) => None,
        }
    }

    /// The deadline of a TLS handshake (either leg).
    pub fn tls_handshake_timeout(&self) -> Duration {
        self.timeouts().tls_handshake
    }

    /// The longest any single wait of a session may last: the driver's bound for a session
    /// that set no deadline of its own (DESIGN.md rule 5).
    pub fn longest_wait(&self) -> Duration {
        let t = self.timeouts();
        [
            t.greeting,
            t.command,
            t.data_block,
            t.tls_handshake,
            t.backend_reply,
        ]
        .into_iter()
        .chain([self.connect_timeout, self.write_timeout])
        .max()
        .unwrap_or(Duration::from_secs(300))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.join("\n"))]
    Certificates(Vec<String>),
    #[error("{}", .0.join("\n"))]
    Trust(Vec<String>),
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

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The certificate store of `config`: its `certificates`, or with none, the self-signed
/// certificate kept in `state_dir` (SPEC §3).
pub fn load_certificates(config: &Config) -> Result<CertStore, Vec<String>> {
    if config.certificates.is_empty() {
        let cert = crate::tls::load_or_create_self_signed(&config.state_dir, &config.hostname)
            .map_err(|e| vec![format!("state_dir {}: {e}", config.state_dir.display())])?;
        return Ok(CertStore { certs: vec![cert] });
    }
    CertStore::load(&config.certificates)
}

/// Everything built from one configuration and its certificate store: the store and each
/// listener's immutable runtime (its rustls configuration included). Nothing in it changes
/// once built; a reload builds a new one and swaps it whole.
#[derive(Debug)]
pub struct Snapshot {
    pub store: Arc<CertStore>,
    pub listeners: Vec<(SocketAddr, Arc<ListenerRuntime>)>,
    /// Each listener's explicitly selected certificate, whose expiry is checked daily.
    pub explicit: Vec<(String, LoadedCert)>,
}

/// Builds the [`Snapshot`] of `config` over `store`, or every problem that stops it. A
/// `certificate` rule that matches nothing is logged as an error and costs that listener its
/// STARTTLS (SPEC §4 `454 4.7.0`), not the whole process; only an implicit-TLS listener,
/// which cannot speak without a certificate, is a problem.
pub fn build(
    config: &Config,
    store: CertStore,
    trust: &Trust,
    metrics: &Metrics,
) -> Result<Snapshot, Vec<String>> {
    let now = unix_now();
    let mut problems = Vec::new();
    let mut listeners = Vec::new();
    let mut explicit = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let term = match &l.mode {
            ListenerMode::Terminate(term) => term,
            ListenerMode::Originate(o) => {
                match originate::runtime(config, l, o, &store, trust, metrics) {
                    Ok(rt) => listeners.push((l.listen, Arc::new(rt))),
                    Err(p) => problems.push(format!("listeners[{i}] ({}): {p}", l.name)),
                }
                continue;
            }
        };
        let plan = CertPlan::new(&store, &term.certificate, &config.hostname);
        match &plan {
            CertPlan::Explicit(cert) => {
                warn_if_expired(&l.name, cert, now);
                explicit.push((l.name.clone(), cert.clone()));
            }
            CertPlan::Automatic(candidates) => {
                if let Some((cert, _)) = candidates.default_at(now) {
                    warn_if_expired(&l.name, cert, now);
                }
            }
            CertPlan::NoMatch(_) | CertPlan::NoCertificate => {}
        }
        match listener_runtime(config, l, term, &plan, trust, metrics) {
            Ok(rt) => listeners.push((l.listen, Arc::new(rt))),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Snapshot {
        store: Arc::new(store),
        listeners,
        explicit,
    })
}

/// An expired certificate is still served (as Exchange does: refusing TLS would push mail to
/// plaintext), but the operator hears of it at start and daily.
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

/// The client-certificate policy of a listener over the runtime's trust.
pub fn listener_client_auth(
    l: &Listener,
    term: &TerminateListener,
    trust: &Trust,
) -> Result<ClientAuth, String> {
    ClientAuth::new(term.policy.client_certificates, trust)
        .map_err(|e| format!("listener {}: policy.client_certificates: {e}", l.name))
}

fn listener_runtime(
    config: &Config,
    l: &Listener,
    term: &TerminateListener,
    plan: &CertPlan,
    trust: &Trust,
    metrics: &Metrics,
) -> Result<ListenerRuntime, String> {
    let client_auth = listener_client_auth(l, term, trust)?;
    let acceptor = match (plan.resolver(), plan) {
        (Some(resolver), _) => Some(
            crate::tls::server_config(
                resolver,
                term.policy.tls_min_version,
                client_auth.verifier(),
            )
            .map_err(|e| format!("listener {}: {e}", l.name))?,
        ),
        (None, CertPlan::NoMatch(why)) if term.tls == ListenerTls::Implicit => {
            return Err(format!(
                "listener {}: tls: implicit cannot start without its certificate: {why}",
                l.name
            ));
        }
        (None, _) if term.tls == ListenerTls::Implicit => {
            return Err(format!(
                "listener {}: tls: implicit needs a certificate",
                l.name
            ));
        }
        (None, CertPlan::NoMatch(why)) => {
            tracing::error!(
                listener = %l.name,
                "{why}: STARTTLS is not offered on this listener"
            );
            None
        }
        (None, _) => {
            tracing::warn!(listener = %l.name, "no certificate: STARTTLS is not offered");
            None
        }
    };
    if let Some(warning) = term.backend.tls_warning() {
        tracing::warn!(listener = %l.name, "{warning}");
    }
    let hop_tls = match term.backend.tls {
        BackendTls::None => None,
        tls => Some(crate::backend::HopTls {
            implicit: tls == BackendTls::Implicit,
            config: crate::tls::backend_config(trust, term.backend.tls_verify)
                .map_err(|e| format!("listener {}: backend.tls: {e}", l.name))?,
        }),
    };
    let p = &term.policy;
    let t = p.timeouts;
    Ok(ListenerRuntime {
        name: l.name.clone(),
        implicit_tls: term.tls == ListenerTls::Implicit,
        mode: ModeRuntime::Terminate(Arc::new(smtp_core::inbound::Config {
            hostname: config.hostname.clone(),
            starttls: acceptor.is_some() && term.tls == ListenerTls::Starttls,
            require_tls: p.require_tls,
            auth_requires_tls: p.auth_requires_tls,
            bare_newlines: p.bare_newlines,
            long_lines: p.long_lines,
            received_header: p.received_header,
            max_message_size: p.max_message_size,
            max_recipients: p.max_recipients,
            max_errors: p.max_errors,
            domain_secure: p.domain_secure.clone(),
            on_failure: p.on_failure,
            enforce: p.enforce,
            timeouts: smtp_core::inbound::Timeouts {
                greeting: t.greeting,
                command: t.command,
                data_block: t.data_block,
                tls_handshake: t.tls_handshake,
                backend_reply: t.backend_reply,
            },
            hop: smtp_core::inbound::Hop {
                starttls: term.backend.tls == BackendTls::Starttls,
                xclient: term.backend.xclient,
            },
            protocol_log: config.log.protocol_log,
        })),
        pool: crate::backend::Pool::new(&term.backend.servers, term.backend.connect_timeout)
            .with_hop(term.backend.health_check_interval, hop_tls),
        connect_timeout: term.backend.connect_timeout,
        write_timeout: t.command,
        acceptor,
        client_auth,
        max_connections: p.max_connections,
        max_connections_per_ip: p.max_connections_per_ip,
        proxy_header: l.proxy_protocol.then_some(t.proxy_header),
        metrics: metrics.listener(&l.name, &p.domain_secure, &[], &term.backend.servers),
        certificates: plan.clone(),
    })
}

/// A started sidecar: listeners bound and accepting.
#[derive(Debug)]
pub struct Running {
    /// Each listener's name and the address it is bound to (useful with port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub metrics_addr: Option<SocketAddr>,
    pub metrics: Metrics,
    /// What the listeners were built from (the unit a reload replaces).
    pub snapshot: Arc<Snapshot>,
    /// The configuration in force, and the file a reload re-reads (`None`: started from a
    /// configuration in memory, which cannot be reloaded).
    config: Config,
    config_path: Option<PathBuf>,
    /// The bound listeners, by the `listen` address of the configuration.
    active: Vec<(SocketAddr, Active)>,
    /// What the status page knows of each listener.
    infos: Arc<ArcSwap<Vec<crate::status::ListenerInfo>>>,
    shutdown: watch::Sender<Shutdown>,
    /// Given to the accept loops a reload starts; dropped when shutdown begins.
    alive_tx: Option<mpsc::Sender<()>>,
    alive: mpsc::Receiver<()>,
    grace: Duration,
    /// Dropped: the expiry warnings of the snapshot replaced end.
    expiry: watch::Sender<bool>,
}

/// One bound listener: the runtime its accept loop hands each new session, and what stops
/// the loop and the health checks of the runtime's pool.
#[derive(Debug)]
struct Active {
    local: SocketAddr,
    current: Arc<ArcSwap<ListenerRuntime>>,
    /// true, or dropped: the accept loop ends and the socket closes (sessions go on).
    stop: watch::Sender<bool>,
    /// Dropped: the health checks of the pool of the runtime it was made for end.
    checks: watch::Sender<bool>,
}

/// Start the health checks of `rt`'s pool; they end with shutdown or when the returned
/// sender is dropped (the runtime was replaced).
fn spawn_health_checks(
    rt: &Arc<ListenerRuntime>,
    shutdown: watch::Receiver<Shutdown>,
) -> watch::Sender<bool> {
    let (tx, mut rx) = watch::channel(false);
    if !rt.pool.is_empty() {
        let rt = Arc::clone(rt);
        tokio::spawn(async move {
            tokio::select! {
                () = rt.pool.health_checks(&rt.name, rt.hostname(), &rt.metrics, shutdown) => {}
                _ = rx.changed() => {}
            }
        });
    }
    tx
}

fn spawn_listener(
    tcp: TcpListener,
    local: SocketAddr,
    rt: Arc<ListenerRuntime>,
    shutdown: &watch::Receiver<Shutdown>,
    alive: mpsc::Sender<()>,
) -> Active {
    tracing::info!(listener = %rt.name, addr = %local, "listening");
    let checks = spawn_health_checks(&rt, shutdown.clone());
    let current = Arc::new(ArcSwap::new(rt));
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(crate::listener::accept_loop(
        tcp,
        Arc::clone(&current),
        shutdown.clone(),
        stop_rx,
        alive,
    ));
    Active {
        local,
        current,
        stop,
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
                mode: match rt.mode {
                    ModeRuntime::Terminate(_) => "terminate",
                    ModeRuntime::Originate(_) => "originate",
                }
                .to_owned(),
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
    // Loaded once per runtime and shared by every listener.
    let trust = Trust::load(&config.trust).map_err(StartError::Trust)?;
    log_trust(&trust);
    let snapshot =
        Arc::new(build(config, store.clone(), &trust, &metrics).map_err(StartError::Certificates)?);
    let mut bound = Vec::new();
    for (addr, rt) in &snapshot.listeners {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                name: rt.name.clone(),
                addr: *addr,
                source,
            })?;
        let local = tcp.local_addr().unwrap_or(*addr);
        bound.push((*addr, tcp, local, Arc::clone(rt)));
    }
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
    let (shutdown, watch_rx) = watch::channel(Shutdown::Running);
    let (alive_tx, alive) = mpsc::channel(1);
    let active: Vec<_> = bound
        .into_iter()
        .map(|(addr, tcp, local, rt)| {
            (
                addr,
                spawn_listener(tcp, local, rt, &watch_rx, alive_tx.clone()),
            )
        })
        .collect();
    let infos = Arc::new(ArcSwap::from_pointee(listener_infos(&active)));
    if let Some(tcp) = admin {
        tokio::spawn(crate::admin::serve(
            tcp,
            metrics.clone(),
            Arc::clone(&infos),
        ));
    }
    let (expiry, expiry_rx) = watch::channel(false);
    if !snapshot.explicit.is_empty() {
        tokio::spawn(expiry_warnings(
            snapshot.explicit.clone(),
            watch_rx.clone(),
            expiry_rx,
        ));
    }
    Ok(Running {
        listeners: names(&active),
        metrics_addr,
        metrics,
        snapshot,
        config: config.clone(),
        config_path: None,
        active,
        infos,
        shutdown,
        alive_tx: Some(alive_tx),
        alive,
        grace: config.shutdown_grace,
        expiry,
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

/// Once a day, the start-up warning again for each explicitly selected certificate that has
/// expired (it may expire while the process runs), until shutdown begins.
async fn expiry_warnings(
    explicit: Vec<(String, LoadedCert)>,
    mut shutdown: watch::Receiver<Shutdown>,
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
        let _ = self.shutdown.send(Shutdown::Draining);
        if tokio::time::timeout(self.grace, self.alive.recv())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace over: closing the sessions left");
            let _ = self.shutdown.send(Shutdown::GraceOver);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.alive.recv()).await;
        }
    }
}
