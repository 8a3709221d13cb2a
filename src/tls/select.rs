//! Which certificate a listener serves (SPEC §3 `listeners[].certificate`): the one named or
//! pinned by thumbprint, or, with neither, a choice per ClientHello by the client's SNI, then
//! by `hostname`, in Exchange's order among candidates (valid before expired, CA-issued before
//! self-signed, newest notBefore first).
//!
//! Everything that can be decided ahead is decided when the listener is built: names are
//! lowercased and split into exact and wildcard patterns and the candidates sorted, so a
//! handshake only compares a few strings and reads the clock (validity changes while the
//! process runs, so "valid" is judged per handshake).

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::store::{CertStore, LoadedCert};
use crate::clock::unix_now;
use crate::config::CertificateSelection;

/// What a listener's `certificate` rule yields from a store.
#[derive(Debug, Clone)]
pub enum CertPlan {
    /// `name` and/or `thumbprint` found this entry; it is served whatever the client asks,
    /// even expired (as Exchange does; a warning is logged at start and daily).
    Explicit(LoadedCert),
    /// No key given: chosen per ClientHello among these candidates.
    Automatic(Arc<Candidates>),
    /// `name`/`thumbprint` matches nothing; the text says what was looked for.
    NoMatch(String),
    /// The store is empty.
    NoCertificate,
}

impl CertPlan {
    /// The plan for `selection` from `store`; `hostname` is the fallback name when the client
    /// sends no SNI or an SNI no certificate has.
    pub fn new(store: &CertStore, selection: &CertificateSelection, hostname: &str) -> CertPlan {
        let found = match selection {
            CertificateSelection::Automatic if store.certs.is_empty() => {
                return CertPlan::NoCertificate
            }
            CertificateSelection::Automatic => {
                return CertPlan::Automatic(Arc::new(Candidates::new(store, hostname)))
            }
            CertificateSelection::Name(name) => {
                store.certs.iter().find(|c| c.name == *name).ok_or_else(|| {
                    format!("certificate.name {name:?}: no certificate of that name")
                })
            }
            CertificateSelection::Thumbprint(thumbprint) => {
                store.by_thumbprint(thumbprint).ok_or_else(|| {
                    format!("certificate.thumbprint {thumbprint}: no certificate has it")
                })
            }
            CertificateSelection::NameAndThumbprint { name, thumbprint } => {
                match store.certs.iter().find(|c| c.name == *name) {
                    None => Err(format!(
                        "certificate.name {name:?}: no certificate of that name"
                    )),
                    Some(c) if c.info.matches_thumbprint(thumbprint) => Ok(c),
                    Some(c) => Err(format!(
                        "certificate.thumbprint {thumbprint}: certificate {name:?} has SHA-1 {} \
                         and SHA-256 {}",
                        c.info.sha1, c.info.sha256
                    )),
                }
            }
        };
        match found {
            Ok(cert) => CertPlan::Explicit(cert.clone()),
            Err(why) => CertPlan::NoMatch(why),
        }
    }

    /// The certificate a handshake served: an explicit one, or the candidate the SNI
    /// resolver chose in it (`chosen`: [`take_chosen_certificate`]'s index, which also
    /// reflects the client's signature schemes and the time of the handshake). Without an
    /// index, what the resolver would choose for `sni` now.
    pub fn served_in(&self, chosen: Option<u16>, sni: Option<&str>) -> Option<&LoadedCert> {
        match (self, chosen) {
            (CertPlan::Automatic(candidates), Some(i)) => {
                candidates.all.get(usize::from(i)).map(|c| &c.cert)
            }
            _ => self.served(sni),
        }
    }

    /// The certificate served to a client that sent `sni`, as the resolver chooses it now.
    pub fn served(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        match self {
            CertPlan::Explicit(cert) => Some(cert),
            CertPlan::Automatic(candidates) => candidates.choose(sni, unix_now()),
            CertPlan::NoMatch(_) | CertPlan::NoCertificate => None,
        }
    }

    /// The resolver rustls asks on every ClientHello; `None` when there is nothing to serve.
    pub fn resolver(&self) -> Option<Arc<dyn ResolvesServerCert>> {
        match self {
            CertPlan::Explicit(cert) => Some(Arc::new(FixedCert(cert.certified_key.clone()))),
            CertPlan::Automatic(candidates) => Some(Arc::new(SniResolver(candidates.clone()))),
            CertPlan::NoMatch(_) | CertPlan::NoCertificate => None,
        }
    }
}

/// The certificates an automatic listener chooses from, best first by the static part of
/// Exchange's order, with their names as patterns.
pub struct Candidates {
    all: Box<[Candidate]>,
    /// Indexes into `all` (still best first) of those valid for `hostname`.
    for_hostname: Box<[usize]>,
}

struct Candidate {
    cert: LoadedCert,
    patterns: Box<[Pattern]>,
    ca_issued: bool,
}

/// A DNS name of a certificate, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(Box<str>),
    /// `*.example.com` kept as `example.com`: any one label in front of it (RFC 6125 §6.4.3).
    Wildcard(Box<str>),
}

impl Pattern {
    fn parse(name: &str) -> Option<Pattern> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return None;
        }
        match name.strip_prefix("*.") {
            // A wildcard for a whole registered domain or a bare label is not one.
            Some(rest) if !rest.contains('*') && rest.contains('.') => {
                Some(Pattern::Wildcard(rest.into()))
            }
            Some(_) => None,
            // A partial-label wildcard (`w*.example.com`) is not honoured (RFC 6125 allows
            // refusing it, and CAs no longer issue it).
            None if name.contains('*') => None,
            None => Some(Pattern::Exact(name.into())),
        }
    }

    fn matches(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            Pattern::Exact(name) => host.eq_ignore_ascii_case(name),
            Pattern::Wildcard(parent) => host.split_once('.').is_some_and(|(label, rest)| {
                !label.is_empty() && rest.eq_ignore_ascii_case(parent)
            }),
        }
    }
}

impl Candidate {
    fn new(cert: &LoadedCert) -> Candidate {
        let (names, ca_issued) = leaf_names(cert);
        Candidate {
            cert: cert.clone(),
            patterns: names.iter().filter_map(|n| Pattern::parse(n)).collect(),
            ca_issued,
        }
    }

    fn matches(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }

    fn valid_at(&self, now: i64) -> bool {
        self.cert.info.is_valid_at(now)
    }
}

/// The DNS names a leaf answers to (its DNS SANs; its CN only without any, RFC 6125 §6.4.4)
/// and whether a CA issued it (issuer differs from subject).
fn leaf_names(cert: &LoadedCert) -> (Vec<String>, bool) {
    let Some(der) = cert.certified_key.cert.first() else {
        return (Vec::new(), false);
    };
    let Ok((_, x509)) = X509Certificate::from_der(der) else {
        return (Vec::new(), false);
    };
    let ca_issued = x509.issuer().as_raw() != x509.subject().as_raw();
    let mut names: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(dns) => Some((*dns).to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = x509
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect();
    }
    (names, ca_issued)
}

impl Candidates {
    /// Every certificate of `store`, CA-issued before self-signed, then newest notBefore
    /// first, then configuration order.
    pub fn new(store: &CertStore, hostname: &str) -> Candidates {
        let mut all: Vec<Candidate> = store.certs.iter().map(Candidate::new).collect();
        all.sort_by_key(|c| (!c.ca_issued, std::cmp::Reverse(c.cert.info.not_before)));
        let for_hostname = (0..all.len())
            .filter(|i| all[*i].matches(hostname))
            .collect();
        Candidates {
            all: all.into_boxed_slice(),
            for_hostname,
        }
    }

    /// How many certificates SNI chooses among.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The certificate for a client that sent `sni` (or none), at `now`: the best whose names
    /// match the SNI, else the best for `hostname`, else the best of all.
    pub fn choose(&self, sni: Option<&str>, now: i64) -> Option<&LoadedCert> {
        self.choose_for(sni, now, None)
    }

    /// [`Candidates::choose`] among the certificates whose key can sign with one of `schemes`
    /// (the client's signature_algorithms): an RSA-only legacy client gets the RSA
    /// certificate of a name that also has an ECDSA one. With none usable, as if unfiltered
    /// (the handshake then fails as it must).
    pub fn choose_for(
        &self,
        sni: Option<&str>,
        now: i64,
        schemes: Option<&[rustls::SignatureScheme]>,
    ) -> Option<&LoadedCert> {
        if let [only] = &*self.all {
            return Some(&only.cert);
        }
        let usable = |c: &&Candidate| {
            schemes.is_none_or(|s| c.cert.certified_key.key.choose_scheme(s).is_some())
        };
        let pick = |filter: bool| {
            let ok = |c: &&Candidate| !filter || usable(c);
            let by_sni = sni
                .and_then(|sni| best(self.all.iter().filter(|c| c.matches(sni)).filter(ok), now));
            by_sni
                .or_else(|| {
                    let named = self.for_hostname.iter().filter_map(|i| self.all.get(*i));
                    best(named.filter(ok), now)
                })
                .or_else(|| best(self.all.iter().filter(ok), now))
        };
        pick(true).or_else(|| pick(false)).map(|c| &c.cert)
    }

    /// What a client without SNI gets at `now`, and whether it matches `hostname`.
    pub fn default_at(&self, now: i64) -> Option<(&LoadedCert, bool)> {
        let cert = self.choose(None, now)?;
        let matched = self.for_hostname.iter().any(|i| {
            self.all
                .get(*i)
                .is_some_and(|c| std::ptr::eq(&c.cert, cert))
        });
        Some((cert, matched))
    }
}

impl fmt::Debug for Candidates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidates")
            .field(
                "all",
                &self.all.iter().map(|c| &c.cert.name).collect::<Vec<_>>(),
            )
            .field("for_hostname", &self.for_hostname)
            .finish()
    }
}

/// The first candidate valid at `now` (the list is already in the static order), else the
/// first of all.
fn best<'a>(candidates: impl Iterator<Item = &'a Candidate>, now: i64) -> Option<&'a Candidate> {
    let mut first = None;
    for c in candidates {
        if c.valid_at(now) {
            return Some(c);
        }
        first.get_or_insert(c);
    }
    first
}

/// Serves one certificate whatever the client asks for (an explicit selection).
struct FixedCert(Arc<CertifiedKey>);

impl fmt::Debug for FixedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FixedCert")
            .field("chain_len", &self.0.cert.len())
            .finish()
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Chooses per ClientHello by SNI (rustls hands it over lowercased, without a trailing dot).
#[derive(Debug)]
struct SniResolver(Arc<Candidates>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = client_hello.signature_schemes();
        let chosen = self
            .0
            .choose_for(client_hello.server_name(), unix_now(), Some(schemes))?;
        let index = self
            .0
            .all
            .iter()
            .position(|c| std::ptr::eq(&c.cert, chosen));
        CHOSEN.set(index.and_then(|i| u16::try_from(i).ok()));
        Some(chosen.certified_key.clone())
    }
}

thread_local! {
    /// The candidate the SNI resolver chose in the handshake step this thread is running:
    /// rustls calls the resolver inside `process_tls_records`, with no connection of its own
    /// to tell, and the server stream takes it right after that call, with no wait in between
    /// ([`take_chosen_certificate`]). What the protocol log names as the certificate we sent.
    static CHOSEN: Cell<Option<u16>> = const { Cell::new(None) };
}

/// The index among a listener's candidates ([`CertPlan::served_in`]) of the certificate the
/// SNI resolver last chose on this thread, if any; taken, so the next handshake starts with
/// none.
pub fn take_chosen_certificate() -> Option<u16> {
    CHOSEN.take()
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn wildcards_match_one_leftmost_label() {
        let w = Pattern::parse("*.Example.com").expect("wildcard");
        assert_eq!(w, Pattern::Wildcard("example.com".into()));
        assert!(w.matches("mx.example.com"));
        assert!(w.matches("MX.EXAMPLE.COM."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches(".example.com"));
        assert!(!w.matches("mx.example.org"));
        assert!(!w.matches("mxexample.com"));
        let e = Pattern::parse("mx.example.com.").expect("exact");
        assert!(e.matches("MX.example.com"));
        assert!(!e.matches("a.mx.example.com"));
        assert_eq!(Pattern::parse("w*.example.com"), None);
        assert_eq!(Pattern::parse("*.com"), None);
        assert_eq!(Pattern::parse("*.*.example.com"), None);
        assert_eq!(Pattern::parse(""), None);
    }
}
