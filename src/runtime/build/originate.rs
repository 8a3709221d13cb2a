//! The runtime of an originate listener: its sessions' policy, the MX resolver, the TLS
//! client toward next hops and the certificate it presents (chosen like a terminate
//! listener's: by name or thumbprint, else the store's default for `hostname`, the one a
//! client without SNI would be served).

use std::sync::Arc;
use std::time::Duration;

use super::Builder;
use crate::backend::Pool;
use crate::config::{NextHopConfig, OriginateListener};
use crate::mx::MxResolver;
use crate::snapshot::{ListenerRuntime, ModeRuntime, OriginateRuntime};
use crate::tls::{CertPlan, ClientAuth, ClientTls};

/// How long one connection attempt to a next hop may take. Postfix waits 30 s; a session
/// tries up to five addresses while the legacy MTA waits for its RCPT reply (5 minutes,
/// RFC 5321 §4.5.3.2), so each gets less.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Builder<'_> {
    /// The runtime of an originate listener.
    pub(super) fn originate(&mut self, o: &OriginateListener) -> Result<ListenerRuntime, String> {
        let (config, l, at) = (self.config, self.l, self.at);
        let plan = CertPlan::new(self.store, &o.client_certificate, &config.hostname);
        if let CertPlan::NoMatch(why) = &plan {
            self.warn(
                true,
                format!("client_{why}: no client certificate will be presented"),
            );
        }
        let certificate = plan.served(None);
        let p = &o.policy;
        let client_tls = ClientTls::new(self.trust, certificate, p.tls_min_version)
            .map_err(|e| format!("{at}.client_certificate: {e}"))?;
        let (resolver, mx_port, servers) = match &o.next_hop {
            NextHopConfig::Mx { port } => {
                let r = &config.resolver;
                let resolver =
                    MxResolver::new(r).map_err(|e| format!("{at}.next_hop: resolver: {e}"))?;
                (Some(resolver), *port, Vec::new())
            }
            NextHopConfig::Relay { .. } => (None, 25, vec![o.next_hop.to_string()]),
        };
        // The domain-secure ones: the only outbound domains counted per domain.
        let listed: Vec<String> = p
            .domains
            .iter()
            .filter(|(_, level)| *level == smtp_core::outbound::Level::DomainSecure)
            .map(|(d, _)| d.clone())
            .collect();
        let metrics = Arc::new(self.metrics.listener(&l.name, &[], &listed, &servers));
        Ok(ListenerRuntime {
            name: l.name.clone(),
            implicit_tls: false,
            acceptor: None,
            client_auth: ClientAuth::none(),
            mode: ModeRuntime::Originate(Box::new(OriginateRuntime {
                session: Arc::new(o.session_config(&config.hostname, config.log.protocol_log)),
                resolver,
                mx_port,
                client_tls,
                client_certificate: certificate.map(|c| c.info.clone()),
                bound: Arc::clone(self.bound),
            })),
            pool: self
                .kept
                .take()
                .unwrap_or_else(|| Arc::new(Pool::new(&servers, CONNECT_TIMEOUT))),
            connect_timeout: CONNECT_TIMEOUT,
            write_timeout: p.timeouts.command,
            max_connections: p.max_connections,
            max_connections_per_ip: p.max_connections_per_ip,
            proxy_header: l.proxy_protocol.then_some(p.timeouts.proxy_header),
            handshakes: None,
            metrics,
            certificates: CertPlan::NoCertificate,
        })
    }
}
