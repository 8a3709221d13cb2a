//! The EHLO reply rewrite (SPEC §4): the client sees the backend's extensions through an
//! allow-list, with STARTTLS and AUTH decided by the sidecar and SIZE capped.

use crate::reply::Reply;

/// What the sidecar can offer at the moment the EHLO reply is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EhloPolicy {
    /// Our own name: the first line of the rewritten reply.
    pub hostname: String,
    /// Advertise STARTTLS (not yet in TLS, STARTTLS mode, a certificate available).
    pub offer_starttls: bool,
    /// Pass the backend's AUTH line (false before TLS under `auth_requires_tls`).
    pub offer_auth: bool,
    /// `max_message_size`: SIZE is capped at it (and added when the backend has none).
    pub max_size: u64,
    /// Pass CHUNKING (only when the sidecar carries BDAT itself).
    pub chunking: bool,
}

/// Rewrite a positive EHLO reply of the backend. Non-2xx replies are returned unchanged.
pub fn rewrite_ehlo(backend: &Reply, policy: &EhloPolicy) -> Reply {
    let _ = (backend, policy);
    todo!()
}
