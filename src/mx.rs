//! MX look-ups for originate mode (SPEC §3 `resolver`, issue 13): for a recipient domain, the
//! hosts to try in order and their addresses (RFC 5321 §5.1), or why there are none and the SMTP
//! reply that says so: null MX (RFC 7505), no such domain, no address, DNS failing for now.
//! This module only answers "where"; connecting, and the next MX on failure, is the driver's.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use smtp_core::session::DnsFailure;

use crate::config::ResolverConfig as Settings;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

/// At most this many MX hosts are considered: a hostile zone must not make us try hundreds.
pub const MAX_MX_HOSTS: usize = 10;
/// At most this many addresses per host.
pub const MAX_ADDRS_PER_HOST: usize = 4;
/// DNS answers kept at once per resolver (one per originate listener), and for how long at
/// most ([`MxResolver::new`]).
const CACHE_ANSWERS: u64 = 256;
const CACHE_TTL_MAX: Duration = Duration::from_secs(3600);

/// One host to try: the MX exchange (or the domain itself for an implicit MX) and its
/// addresses (IPv6 and IPv4 interleaved, IPv6 first, RFC 8305 §4), as the session takes it.
pub type NextHop = smtp_core::session::Route;

/// Why a domain has no next hop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MxError {
    /// RFC 7505: the domain publishes a null MX, it accepts no mail.
    #[error("the domain publishes a null MX (RFC 7505)")]
    NullMx,
    /// NXDOMAIN for the recipient domain.
    #[error("the domain does not exist (NXDOMAIN)")]
    NoSuchDomain,
    /// No MX, and no A/AAAA for the implicit MX; or no MX host has an address.
    #[error("no mail server address for the domain")]
    NoAddress,
    /// Not a domain name we can look up (empty, too long, a bad label, an invalid IDN).
    #[error("not a valid domain name: {0}")]
    InvalidDomain(String),
    /// SERVFAIL, REFUSED, timeouts, unreachable name servers: try again later.
    #[error("temporary DNS failure: {0}")]
    TempFail(String),
    /// Every address of every mail server is one mail is never sent to ([`routable`]): this
    /// host (loopback, unspecified) or no host (link-local, multicast, broadcast, reserved).
    #[error("no mail server has a routable address (skipped: {0})")]
    Unroutable(String),
}

impl MxError {
    /// What the session is told (it decides the reply: `DnsFailure::reply`).
    pub fn failure(&self) -> DnsFailure {
        match self {
            MxError::NullMx => DnsFailure::NullMx,
            MxError::NoSuchDomain => DnsFailure::NoSuchDomain,
            MxError::NoAddress => DnsFailure::NoAddress,
            MxError::InvalidDomain(_) => DnsFailure::InvalidDomain,
            MxError::TempFail(_) => DnsFailure::Temporary,
            MxError::Unroutable(_) => DnsFailure::Unroutable,
        }
    }

    /// The reply to the RCPT that needed this look-up.
    pub fn reply(&self) -> &'static str {
        self.failure().reply()
    }

    /// True for failures the sending MTA should retry (4xx).
    pub fn is_temporary(&self) -> bool {
        matches!(self, MxError::TempFail(_))
    }
}

/// The system DNS configuration (/etc/resolv.conf) could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the system DNS configuration (/etc/resolv.conf): {0}")]
pub struct ResolverSetupError(String);

/// An MX resolver: cheap to clone, one per `resolver:` section.
#[derive(Debug, Clone)]
pub struct MxResolver {
    resolver: TokioResolver,
    timeout: Duration,
    /// `resolver.allow_loopback`: loopback addresses are next hops (a test rig).
    allow_loopback: bool,
}

impl MxResolver {
    /// `nameservers` over UDP and TCP, or the system's when empty. `timeout` bounds a whole
    /// `next_hops` call (the MX query and the address queries after it).
    pub fn new(config: &Settings) -> Result<Self, ResolverSetupError> {
        let Settings {
            nameservers,
            timeout,
            allow_loopback,
        } = config;
        let (timeout, allow_loopback) = (*timeout, *allow_loopback);
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| ResolverSetupError(e.to_string()))?
        } else {
            let servers = nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut ns.connections {
                        connection.port = addr.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
            .with_options(ResolverOpts::default())
        };
        let options = builder.options_mut();
        // Two tries per query (hickory's `attempts` counts retries), each half the budget: one
        // lost UDP datagram is survivable. The whole call is bounded by `timeout` regardless.
        options.timeout = (timeout / 2).max(Duration::from_millis(50));
        options.attempts = 1;
        // Mail routing is DNS only: /etc/hosts has no MX records and must not shadow MX hosts.
        options.use_hosts_file = ResolveHosts::Never;
        // The cache counts answers, not octets, and keeps each whole: hickory's 8,192 answers
        // of up to 64 KiB each (a hostile zone's thousand A records: ~270 KB of memory
        // apiece, measured), for up to a day, are gigabytes for an attacker's few hundred
        // RCPTs. A mail relay asks again cheaply (Postfix keeps no DNS cache of its own).
        options.cache_size = CACHE_ANSWERS;
        options.positive_max_ttl = Some(CACHE_TTL_MAX);
        options.negative_max_ttl = Some(CACHE_TTL_MAX);
        let resolver = builder
            .build()
            .map_err(|e| ResolverSetupError(e.to_string()))?;
        Ok(MxResolver {
            resolver,
            timeout,
            allow_loopback,
        })
    }

    /// The hosts to try for `domain`, most preferred first, each with at least one address.
    /// `domain` is a name, an internationalised one in Unicode (a U-label, as SMTPUTF8 mail
    /// has it) or as its A-labels; address literals are the caller's.
    /// Within the timeout: a host whose addresses are not known by then is left out, and if
    /// that leaves none, the answer is `TempFail`.
    pub async fn next_hops(&self, domain: &str, port: u16) -> Result<Vec<NextHop>, MxError> {
        let domain = smtp_core::idn::routable(domain)
            .map_err(|why| MxError::InvalidDomain(format!("{domain:?}: {why}")))?;
        let name = fqdn(&domain)?;
        let deadline = Instant::now() + self.timeout;
        let mx = timeout_at(deadline, self.resolver.lookup(name.clone(), RecordType::MX))
            .await
            .map_err(|_| {
                MxError::TempFail(format!("MX {domain}: no answer within {:?}", self.timeout))
            })?;
        let hosts = match mx {
            Ok(lookup) => {
                let answered = answered(&self.resolver, &name, RecordType::MX, &lookup);
                let answered = timeout_at(deadline, answered).await.map_err(|_| {
                    MxError::TempFail(format!("MX {domain}: no answer within {:?}", self.timeout))
                })?;
                let records = answered.map_err(|e| MxError::TempFail(format!("MX {e}")))?;
                let mut mx: Vec<(u16, Name)> = records
                    .iter()
                    .filter_map(|data| match data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_lowercase())),
                        _ => None,
                    })
                    .collect();
                if mx.is_empty() {
                    // Only a CNAME or other types in the answer: the same as no MX.
                    vec![(domain, name)]
                } else {
                    mx_hosts(&mut mx)?
                }
            }
            Err(e) => match classify(&e) {
                // RFC 5321 §5.1: no MX at all, the domain itself is an implicit MX (pref. 0).
                Lookup::NoData => vec![(domain, name)],
                Lookup::NxDomain => return Err(MxError::NoSuchDomain),
                // No falling back to A records here: the MX set may exist, we just can't see it.
                Lookup::Temporary => return Err(MxError::TempFail(format!("MX {domain}: {e}"))),
            },
        };
        self.addresses(hosts, port, deadline).await
    }

    /// Resolve every host at once (a slow first MX must not use up the budget of the others);
    /// keep the order; drop hosts without addresses, addresses already listed, and those mail
    /// is never sent to ([`routable`]).
    async fn addresses(
        &self,
        hosts: Vec<(String, Name)>,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<NextHop>, MxError> {
        let mut tasks = JoinSet::new();
        for (i, (_, name)) in hosts.iter().enumerate() {
            let resolver = self.resolver.clone();
            let name = name.clone();
            let allow_loopback = self.allow_loopback;
            tasks.spawn(async move { (i, host_addresses(&resolver, name, allow_loopback).await) });
        }
        let mut found: Vec<Option<Result<Addresses, String>>> = vec![None; hosts.len()];
        // Past the deadline, the unfinished look-ups are dropped (with `tasks`) and count as
        // temporary failures; so are they once the most preferred hosts have answered with
        // as many addresses as a session tries: a slow spare MX must not hold up every RCPT.
        while let Ok(Some(joined)) = timeout_at(deadline, tasks.join_next()).await {
            if let Ok((i, result)) = joined {
                found[i] = Some(result);
            }
            if enough(&found) {
                break;
            }
        }

        let mut seen = HashSet::new();
        let mut hops = Vec::new();
        let mut temporary = Vec::new();
        let mut skipped = Vec::new();
        for ((host, _), result) in hosts.into_iter().zip(found) {
            match result {
                Some(Ok(Addresses { ips, unroutable })) => {
                    skipped.extend(unroutable.iter().map(|ip| format!("{host} {ip}")));
                    let addrs: Vec<SocketAddr> = ips
                        .into_iter()
                        .filter(|ip| seen.insert(*ip))
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect();
                    if !addrs.is_empty() {
                        hops.push(NextHop { host, addrs });
                    }
                }
                Some(Err(e)) => temporary.push(e),
                None => temporary.push(format!(
                    "{host}: no address answer within {:?}",
                    self.timeout
                )),
            }
        }
        if !hops.is_empty() {
            Ok(hops)
        } else if !temporary.is_empty() {
            Err(MxError::TempFail(temporary.join("; ")))
        } else if !skipped.is_empty() {
            Err(MxError::Unroutable(skipped.join(", ")))
        } else {
            Err(MxError::NoAddress)
        }
    }
}

/// An address mail may be sent to. Never: the unspecified addresses and 0.0.0.0/8 (a connect
/// to `0.0.0.0` or `::` reaches this host), loopback unless `allow_loopback` (this host: the
/// sidecar's own listeners, or the legacy server that relays through it, a mail loop),
/// link-local (169.254.0.0/16, where cloud metadata services answer; `fe80::/10`, which needs
/// an interface to mean anything), multicast, broadcast and 240.0.0.0/4. Whoever controls a
/// recipient domain's DNS chooses these addresses. (Exim's default `ignore_target_hosts`
/// drops 0.0.0.0 and 127.0.0.0/8 likewise; Postfix refuses mail that loops back to itself.)
/// Private ranges (RFC 1918, ULA) stay: an internal MX is a normal deployment.
pub fn routable(ip: IpAddr, allow_loopback: bool) -> bool {
    let routable_v4 = |v4: Ipv4Addr| {
        let first = v4.octets()[0];
        !(first == 0
            || first >= 240
            || v4.is_link_local()
            || v4.is_multicast()
            || (v4.is_loopback() && !allow_loopback))
    };
    match ip.to_canonical() {
        IpAddr::V4(v4) => routable_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return routable_v4(v4);
            }
            let link_local = v6.segments()[0] & 0xffc0 == 0xfe80;
            // `::a.b.c.d`, IPv4-compatible (deprecated by RFC 4291): never a real address.
            let compatible = v6.segments()[..6] == [0; 6] && !v6.is_loopback();
            !(v6.is_unspecified()
                || compatible
                || link_local
                || v6.is_multicast()
                || (v6.is_loopback() && !allow_loopback))
        }
    }
}

/// The IPv4 address an IPv6 address stands for, which a packet to it reaches: one of the
/// NAT64 well-known prefix `64:ff9b::/96` (RFC 6052), or of 6to4's `2002::/16` (RFC 3056),
/// tunnelled to the address it holds (which must be a global one: nothing real is refused).
/// Not the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215): where its IPv4 address sits
/// depends on the length of the prefix the network chose within it (/48 to /96, RFC 6052
/// §2.2), which the address does not say, and every reading of a real address but one is
/// nonsense (192.0.2.1 under a /48 reads as 0.0.0.0 as a /96), so judging them all would
/// refuse real deployments, and judging the plausible ones can be steered by the DNS that
/// picks the address. Its translator is another host, whose own loopback and link-local
/// addresses those would be.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    match v6.segments() {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// Of a look-up of `name`, the data of the answer records that answer it: owned by `name`, or
/// by a name that the CNAME records of the answer, followed from `name` (at most
/// [`MAX_CNAME_HOPS`] of them), lead to. hickory returns the answer section as the server sent
/// it, and the resolver may be a forwarder with no bailiwick checks: a record for another name
/// in it (an MX for a domain its server does not own, an address for a host nobody asked
/// about) would otherwise choose where mail goes.
fn answering<'a>(
    name: &Name,
    answers: &'a [hickory_resolver::proto::rr::Record],
) -> impl Iterator<Item = &'a RData> {
    let owners = chain(name, answers);
    answers
        .iter()
        .filter(move |r| owners.contains(&r.name))
        .map(|r| &r.data)
}

/// `name`, then the names its CNAME records in `answers` lead to, in order: at most
/// [`MAX_CNAME_HOPS`] links, and none back to a name already in it.
fn chain(name: &Name, answers: &[hickory_resolver::proto::rr::Record]) -> Vec<Name> {
    let mut owners = vec![name.clone()];
    while owners.len() <= MAX_CNAME_HOPS {
        let last = &owners[owners.len() - 1];
        let next = answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == *last => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) if !owners.contains(&target) => owners.push(target),
            _ => break,
        }
    }
    owners
}

/// The data of `lookup`'s records of type `rtype` that answer `name` ([`answering`]). An
/// answer with records of that type but none of them `name`'s is asked about again: hickory
/// answers a name whose CNAME target it already holds in its cache with the target's records
/// alone, without the chain. The chain is then asked for one link at a time (the CNAME of
/// its last name), at most [`MAX_CNAME_HOPS`] links, until it reaches records of the answer.
/// It never does: `Err`, a temporary failure, never taken for no records (that would make
/// the domain itself its MX, or leave its host without addresses).
async fn answered(
    resolver: &TokioResolver,
    name: &Name,
    rtype: RecordType,
    lookup: &hickory_resolver::lookup::Lookup,
) -> Result<Vec<RData>, String> {
    let of_type = |data: &&RData| data.record_type() == rtype;
    let mut records = lookup.answers().to_vec();
    if !records.iter().any(|r| r.record_type() == rtype) {
        return Ok(Vec::new());
    }
    loop {
        let found: Vec<RData> = answering(name, &records).filter(of_type).cloned().collect();
        if !found.is_empty() {
            return Ok(found);
        }
        let owners = chain(name, &records);
        let last = &owners[owners.len() - 1];
        if owners.len() > MAX_CNAME_HOPS {
            return Err(format!(
                "{name}: a CNAME chain longer than {MAX_CNAME_HOPS}"
            ));
        }
        let link = match resolver.lookup(last.clone(), RecordType::CNAME).await {
            Ok(link) => link.answers().to_vec(),
            Err(e) => {
                return Err(format!(
                    "{name}: the {rtype} answer names others; CNAME {last}: {e}"
                ))
            }
        };
        records.extend(link);
        if chain(name, &records).len() == owners.len() {
            return Err(format!(
                "{name}: the {rtype} answer holds only records of other names"
            ));
        }
    }
}

/// `name`'s addresses of type `rtype` (A or AAAA) in `result`: none if it has none, `Err` if
/// the look-up failed for now ([`answered`] included).
async fn addresses_in(
    resolver: &TokioResolver,
    name: &Name,
    rtype: RecordType,
    result: Result<hickory_resolver::lookup::Lookup, NetError>,
) -> Result<Vec<IpAddr>, String> {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(e) if classify(&e) == Lookup::Temporary => return Err(format!("{name}: {e}")),
        Err(_) => return Ok(Vec::new()),
    };
    let records = answered(resolver, name, rtype, &lookup).await?;
    Ok(records
        .iter()
        .filter_map(|data| match data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect())
}

/// CNAME records followed within one answer ([`answering`]): a recursive resolver chases
/// longer chains than hickory's 8 queries (Unbound restarts a query 11 times).
const MAX_CNAME_HOPS: usize = 16;

/// The MX set in the order to try: RFC 7505 null MX, RFC 5321 §5.1 preference order with equal
/// preferences shuffled, duplicates removed, at most `MAX_MX_HOSTS`.
fn mx_hosts(mx: &mut Vec<(u16, Name)>) -> Result<Vec<(String, Name)>, MxError> {
    // RFC 7505 §3: a null MX is a lone MX whose exchange is the root. (We do not insist on
    // preference 0.) A "." beside real MX records is a misconfiguration: skip it, use the rest.
    if mx.iter().all(|(_, exchange)| exchange.is_root()) {
        return Err(MxError::NullMx);
    }
    mx.retain(|(_, exchange)| !exchange.is_root());
    // RFC 5321 §5.1: equal preferences SHOULD be tried in random order. A fresh RandomState is
    // a randomly keyed SipHash, enough to spread load without a `rand` dependency.
    let random = RandomState::new();
    mx.sort_by_cached_key(|(preference, exchange)| (*preference, random.hash_one(exchange)));
    let mut seen = HashSet::new();
    Ok(mx
        .drain(..)
        .filter(|(_, exchange)| seen.insert(exchange.clone()))
        .take(MAX_MX_HOSTS)
        .map(|(_, exchange)| {
            let host = exchange.to_ascii().trim_end_matches('.').to_string();
            (host, exchange)
        })
        .collect())
}

/// The hosts answered so far, in preference order up to the first still asked, have
/// `smtp_core::outbound::MAX_TARGETS` distinct addresses or more: those after them would not
/// be tried.
fn enough(found: &[Option<Result<Addresses, String>>]) -> bool {
    // Distinct: two MX names for the same servers are no more addresses.
    let mut addresses = HashSet::new();
    for host in found {
        match host {
            None => return false,
            Some(Ok(host)) => addresses.extend(host.ips.iter().copied()),
            Some(Err(_)) => {}
        }
        if addresses.len() >= smtp_core::outbound::MAX_TARGETS {
            return true;
        }
    }
    false
}

/// What one host's A and AAAA records gave: the addresses to try, and those never tried
/// ([`routable`]).
#[derive(Debug, Clone)]
struct Addresses {
    ips: Vec<IpAddr>,
    unroutable: Vec<IpAddr>,
}

/// A and AAAA of one host, interleaved IPv6 first, at most `MAX_ADDRS_PER_HOST` of those mail
/// may go to, in their canonical form (`::ffff:192.0.2.1` is 192.0.2.1), the others apart
/// (filtered before the count, so that they cannot push out the good ones). `Ok` with none:
/// the host has no address (NXDOMAIN/NODATA for both); `Err`: at least one query failed
/// temporarily and the other gave nothing.
async fn host_addresses(
    resolver: &TokioResolver,
    name: Name,
    allow_loopback: bool,
) -> Result<Addresses, String> {
    let (v6, v4) = tokio::join!(
        resolver.lookup(name.clone(), RecordType::AAAA),
        resolver.lookup(name.clone(), RecordType::A),
    );
    let (v6, v4) = tokio::join!(
        addresses_in(resolver, &name, RecordType::AAAA, v6),
        addresses_in(resolver, &name, RecordType::A, v4),
    );
    let mut failure = None;
    let mut collect = |found: Result<Vec<IpAddr>, String>| {
        found.unwrap_or_else(|e| {
            failure = Some(e);
            Vec::new()
        })
    };
    let (v6, v4) = (collect(v6), collect(v4));
    let mut unroutable = Vec::new();
    let mut keep = |ips: Vec<IpAddr>| -> Vec<IpAddr> {
        let (ok, not): (Vec<IpAddr>, Vec<IpAddr>) = ips
            .into_iter()
            .map(|ip| ip.to_canonical())
            .partition(|ip| routable(*ip, allow_loopback));
        unroutable.extend(not.into_iter().take(MAX_ADDRS_PER_HOST));
        ok
    };
    let (v6, v4) = (keep(v6), keep(v4));
    let mut ips = Vec::new();
    let (mut v6, mut v4) = (v6.into_iter(), v4.into_iter());
    while ips.len() < MAX_ADDRS_PER_HOST {
        let (a, b) = (v6.next(), v4.next());
        if a.is_none() && b.is_none() {
            break;
        }
        ips.extend(a);
        if ips.len() < MAX_ADDRS_PER_HOST {
            ips.extend(b);
        }
    }
    match failure {
        Some(e) if ips.is_empty() => Err(e),
        _ => Ok(Addresses { ips, unroutable }),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// NOERROR with no records of the type (NODATA).
    NoData,
    /// NXDOMAIN: the name does not exist.
    NxDomain,
    /// Anything else: SERVFAIL, REFUSED, timeouts, I/O.
    Temporary,
}

/// hickory reports both NXDOMAIN and NODATA as `NoRecordsFound`, told apart by the response
/// code; SERVFAIL and REFUSED arrive as `ResponseCode`, timeouts as `Timeout`.
fn classify(e: &NetError) -> Lookup {
    if e.is_nx_domain() {
        Lookup::NxDomain
    } else if e.is_no_records_found() {
        Lookup::NoData
    } else {
        Lookup::Temporary
    }
}

/// The fully qualified name, so that no `search` domain of resolv.conf is ever appended.
fn fqdn(domain: &str) -> Result<Name, MxError> {
    Name::from_ascii(format!("{domain}."))
        .map_err(|e| MxError::InvalidDomain(format!("{domain:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// The data of the records of `answers` that [`answering`] keeps for `name`.
    fn kept(name: &str, answers: &[(&str, RData)]) -> Vec<RData> {
        use hickory_resolver::proto::rr::Record;
        let answers: Vec<Record> = answers
            .iter()
            .map(|(owner, data)| Record::from_rdata(n(owner), 60, data.clone()))
            .collect();
        answering(&n(name), &answers).cloned().collect()
    }

    #[test]
    fn answers_are_the_names_and_its_cname_chains() {
        use hickory_resolver::proto::rr::rdata::{A, CNAME};
        let a = |ip: [u8; 4]| RData::A(A(ip.into()));
        let cname = |target: &str| RData::CNAME(CNAME(n(target)));
        // Owner names compare without regard to case; a record of another name is dropped.
        let found = kept(
            "mx.example.test.",
            &[
                ("other.test.", a([192, 0, 2, 9])),
                ("MX.Example.Test.", a([192, 0, 2, 1])),
            ],
        );
        assert_eq!(found, [a([192, 0, 2, 1])]);
        // A chain is followed from the name asked, in any order; a loop ends it.
        let found = kept(
            "a.test.",
            &[
                ("c.test.", a([192, 0, 2, 3])),
                ("b.test.", cname("c.test.")),
                ("a.test.", cname("b.test.")),
                ("c.test.", cname("a.test.")),
                ("d.test.", a([192, 0, 2, 4])),
            ],
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(!found.contains(&a([192, 0, 2, 4])));
        // At most MAX_CNAME_HOPS links are followed.
        let names: Vec<String> = (0..=MAX_CNAME_HOPS + 1)
            .map(|i| format!("h{i}.test."))
            .collect();
        let mut chain: Vec<(&str, RData)> = names
            .windows(2)
            .map(|w| (w[0].as_str(), cname(&w[1])))
            .collect();
        chain.push((names[MAX_CNAME_HOPS].as_str(), a([192, 0, 2, 8])));
        chain.push((names[MAX_CNAME_HOPS + 1].as_str(), a([192, 0, 2, 9])));
        let found = kept("h0.test.", &chain);
        assert!(found.contains(&a([192, 0, 2, 8])));
        assert!(!found.contains(&a([192, 0, 2, 9])));
    }

    #[test]
    fn preference_order_null_mx_and_bounds() {
        let mut mx = vec![(20, n("b.test.")), (10, n("a.test.")), (10, n("a.test."))];
        let hosts: Vec<String> = mx_hosts(&mut mx)
            .unwrap()
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(hosts, ["a.test", "b.test"]);

        assert_eq!(mx_hosts(&mut vec![(0, Name::root())]), Err(MxError::NullMx));
        let mut mixed = vec![(0, Name::root()), (5, n("c.test."))];
        assert_eq!(mx_hosts(&mut mixed).unwrap()[0].0, "c.test");

        let mut many: Vec<(u16, Name)> = (0..50u16)
            .map(|i| (i, n(&format!("mx{i}.test."))))
            .collect();
        let hosts = mx_hosts(&mut many).unwrap();
        assert_eq!(hosts.len(), MAX_MX_HOSTS);
        assert_eq!(hosts[0].0, "mx0.test");
    }

    #[test]
    fn routable_addresses() {
        let never = [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "169.254.169.254",
            "fe80::1",
            "febf::1",
            "224.0.0.1",
            "ff02::1",
            "239.255.255.255",
            "255.255.255.255",
            "240.0.0.1",
            "64:ff9b::169.254.169.254",
            // 6to4 of 0.0.0.1, of 169.254.169.254.
            "2002:0:1::1",
            "2002:a9fe:a9fe::",
            "::192.0.2.1",
            "::0.0.0.2",
        ];
        let loopback = [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "2002:7f00:1::1",
        ];
        let always = [
            "192.0.2.1",
            "10.0.0.25",
            "172.16.0.1",
            "192.168.1.1",
            "2001:db8::25",
            "fd00::25",
            "fec0::1",
            "64:ff9b::192.0.2.1",
            // Local-use NAT64 (RFC 8215), judged as IPv6: 192.0.2.1 under a /48, a /64, a
            // /96.
            "64:ff9b:1:c000:2:100::",
            "64:ff9b:1:0:c0:2:100::",
            "64:ff9b:1::c000:201",
            "64:ff9b:1::7f00:1",
            "2002:c000:201::25",
            "::ffff:192.0.2.1",
            "100.64.0.1",
            "223.255.255.255",
        ];
        for (list, plain, allowed) in [
            (&never[..], false, false),
            (&loopback[..], false, true),
            (&always[..], true, true),
        ] {
            for ip in list {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(routable(ip, false), plain, "{ip}");
                assert_eq!(routable(ip, true), allowed, "{ip} with allow_loopback");
            }
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            MxError::NullMx.reply(),
            "550 5.1.10 Recipient domain does not accept mail (null MX)"
        );
        assert!(MxError::TempFail(String::new())
            .reply()
            .starts_with("451 4.4.3 "));
        assert!(MxError::NoSuchDomain.reply().starts_with("550 5.1.2 "));
        assert!(MxError::NoAddress.reply().starts_with("550 5.1.2 "));
        assert!(!MxError::NoAddress.is_temporary());
    }
}
