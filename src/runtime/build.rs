//! **build**: a validated configuration, its certificate store and trust become one
//! immutable [`Snapshot`], or every problem that stops it, each named by its key path. `run`,
//! `check` and a reload all build through here, so `check` cannot pass what `run` refuses.
//!
//! Pure apart from reading files (certificates, CA files, CRLs, the resolver's
//! `/etc/resolv.conf`): no socket is bound and nothing is logged; what the operator must hear
//! of comes back as the snapshot's [`Warning`]s.

use std::sync::Arc;

use crate::backend::{check_reply_timeout, HopTls, Pool};
use crate::config::{BackendTls, Config, Listener, ListenerMode, ListenerTls, TerminateListener};
use crate::metrics::Metrics;
use crate::snapshot::{Bound, HandshakeSlots, ListenerRuntime, ModeRuntime, Snapshot, Warning};
use crate::tls::{CertPlan, CertStore, ClientAuth, Trust, Unsaved};

mod originate;

/// The certificate store of `config`: its `certificates`, or with none, the self-signed
/// certificate kept in `state_dir` (generated the first time, SPEC §3), with what is still
/// to be written there ([`Unsaved::save`]) once the store is in force.
pub fn load_certificates(config: &Config) -> Result<(CertStore, Option<Unsaved>), Vec<String>> {
    if config.certificates.is_empty() {
        let (cert, unsaved) = crate::tls::self_signed_in(&config.state_dir, &config.hostname)
            .map_err(|e| vec![format!("state_dir {}: {e}", config.state_dir.display())])?;
        return Ok((CertStore { certs: vec![cert] }, unsaved));
    }
    CertStore::load(&config.certificates).map(|store| (store, None))
}

/// The store and the trust of `config`, both read so that every problem of either is
/// reported, and the store's certificate still to be written.
pub fn load_files(config: &Config) -> Result<(CertStore, Trust, Option<Unsaved>), Vec<String>> {
    match (load_certificates(config), Trust::load(&config.trust)) {
        (Ok((store, unsaved)), Ok(trust)) => Ok((store, trust, unsaved)),
        (store, trust) => {
            let mut problems = store.err().unwrap_or_default();
            problems.extend(trust.err().unwrap_or_default());
            Err(problems)
        }
    }
}

/// Builds the [`Snapshot`] of `config` over `store` and `trust`, with each listener's series
/// in `metrics`, or every problem that stops it. A `certificate` rule that matches nothing
/// costs that listener its STARTTLS (SPEC §4 `454 4.7.0`), not the whole process: a warning;
/// only an implicit-TLS listener, which cannot speak without a certificate, is a problem.
///
/// `previous`, the snapshot in force when reloading: a listener whose pool would be built
/// from the same inputs keeps that pool, with what its health checks know.
pub fn build(
    config: &Config,
    store: CertStore,
    trust: Trust,
    metrics: &Metrics,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<String>> {
    let mut problems = Vec::new();
    let mut listeners = Vec::new();
    let mut warnings = Vec::new();
    // Shared with the snapshot in force: its sessions see where a reload's listeners are.
    let bound = previous.map_or_else(Arc::default, |p| Arc::clone(&p.bound));
    for (i, l) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}] ({})", l.name);
        let mut b = Builder {
            config,
            l,
            at: &at,
            store: &store,
            trust: &trust,
            metrics,
            kept: kept_pool(previous, config, l, &trust),
            warnings: &mut warnings,
            bound: &bound,
        };
        let built = match &l.mode {
            ListenerMode::Terminate(term) => b.terminate(term),
            ListenerMode::Originate(o) => b.originate(o),
        };
        match built {
            Ok(rt) => listeners.push((l.listen, Arc::new(rt))),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Snapshot {
        config: config.clone(),
        store: Arc::new(store),
        trust: Arc::new(trust),
        listeners,
        warnings,
        bound,
    })
}

/// The pool `previous` gave the listener called like `l`, if this configuration would build
/// the same one: same backend servers and settings (or relay), same `hostname` (the health
/// checks' EHLO) and wait for each reply (from `timeouts.backend_reply`), and for a hop that
/// verifies the backend's certificate, the same anchors
/// and CRLs.
fn kept_pool(
    previous: Option<&Snapshot>,
    config: &Config,
    l: &Listener,
    trust: &Trust,
) -> Option<Arc<Pool>> {
    let previous = previous?;
    let old = previous
        .config
        .listeners
        .iter()
        .find(|o| o.name == l.name)?;
    let same = previous.config.hostname == config.hostname
        && match (&old.mode, &l.mode) {
            (ListenerMode::Terminate(a), ListenerMode::Terminate(b)) => {
                let verifies = b.backend.tls != BackendTls::None && b.backend.tls_verify;
                a.backend == b.backend
                    && check_reply_timeout(a.policy.timeouts.backend_reply)
                        == check_reply_timeout(b.policy.timeouts.backend_reply)
                    && (!verifies || previous.trust.same_anchors(trust))
            }
            (ListenerMode::Originate(a), ListenerMode::Originate(b)) => a.next_hop == b.next_hop,
            _ => false,
        };
    if !same {
        return None;
    }
    previous.listener(&l.name).map(|rt| Arc::clone(&rt.pool))
}

/// What building one listener needs.
struct Builder<'a> {
    config: &'a Config,
    l: &'a Listener,
    /// The listener's key path and name, the head of every problem.
    at: &'a str,
    store: &'a CertStore,
    trust: &'a Trust,
    metrics: &'a Metrics,
    /// The previous snapshot's pool of this listener, if it can stay.
    kept: Option<Arc<Pool>>,
    warnings: &'a mut Vec<Warning>,
    /// Where the listeners in force are bound.
    bound: &'a Arc<Bound>,
}

impl Builder<'_> {
    fn warn(&mut self, error: bool, message: impl Into<String>) {
        self.warnings.push(Warning {
            listener: self.l.name.clone(),
            error,
            message: message.into(),
        });
    }

    /// The server side: what serves STARTTLS or implicit TLS, if anything can.
    fn acceptor(
        &mut self,
        term: &TerminateListener,
        plan: &CertPlan,
        client_auth: &ClientAuth,
    ) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
        let at = self.at;
        let implicit = term.tls == ListenerTls::Implicit;
        match (plan.resolver(), plan) {
            (Some(resolver), _) => crate::tls::server_config(
                resolver,
                term.policy.tls_min_version,
                client_auth.verifier(),
            )
            .map(Some)
            .map_err(|e| format!("{at}: {e}")),
            (None, CertPlan::NoMatch(why)) if implicit => Err(format!(
                "{at}.tls: implicit cannot start without its certificate: {why}"
            )),
            (None, _) if implicit => Err(format!("{at}.tls: implicit needs a certificate")),
            (None, CertPlan::NoMatch(why)) => {
                self.warn(
                    true,
                    format!("{why}: STARTTLS is not offered on this listener"),
                );
                Ok(None)
            }
            (None, _) => {
                self.warn(false, "no certificate: STARTTLS is not offered");
                Ok(None)
            }
        }
    }

    fn terminate(&mut self, term: &TerminateListener) -> Result<ListenerRuntime, String> {
        let (config, l, at) = (self.config, self.l, self.at);
        let plan = CertPlan::new(self.store, &term.certificate, &config.hostname);
        let client_auth = ClientAuth::new(term.policy.client_certificates, self.trust)
            .map_err(|e| format!("{at}.policy.client_certificates: {e}"))?;
        let acceptor = self.acceptor(term, &plan, &client_auth)?;
        if let Some(warning) = term.backend.tls_warning() {
            self.warn(false, warning);
        }
        let pool = match self.kept.take() {
            Some(pool) => pool,
            None => Arc::new(self.pool(term)?),
        };
        let p = &term.policy;
        let t = p.timeouts;
        let handshake_slots = usize::try_from(p.max_handshakes).unwrap_or(usize::MAX);
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
                timeouts: t.session(),
                hop: smtp_core::inbound::Hop {
                    starttls: term.backend.tls == BackendTls::Starttls,
                    xclient: term.backend.xclient,
                },
                protocol_log: config.log.protocol_log,
            })),
            pool,
            connect_timeout: term.backend.connect_timeout,
            write_timeout: t.command,
            client_auth,
            max_connections: p.max_connections,
            max_connections_per_ip: p.max_connections_per_ip,
            proxy_header: l.proxy_protocol.then_some(t.proxy_header),
            handshakes: acceptor
                .as_ref()
                .map(|_| HandshakeSlots::new(handshake_slots)),
            metrics: Arc::new(self.metrics.listener(
                &l.name,
                &p.domain_secure,
                &[],
                &term.backend.servers,
            )),
            acceptor,
            certificates: plan,
        })
    }

    /// The backend servers and the hop to them (`backend.tls`).
    fn pool(&self, term: &TerminateListener) -> Result<Pool, String> {
        let b = &term.backend;
        let hop = match b.tls {
            BackendTls::None => None,
            tls => Some(HopTls {
                implicit: tls == BackendTls::Implicit,
                config: crate::tls::backend_config(self.trust, b.tls_verify)
                    .map_err(|e| format!("{}.backend.tls: {e}", self.at))?,
            }),
        };
        Ok(Pool::new(&b.servers, b.connect_timeout)
            .with_hop(b.health_check_interval, hop)
            .with_reply_timeout(term.policy.timeouts.backend_reply))
    }
}
