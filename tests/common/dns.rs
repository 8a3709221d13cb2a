//! A DNS server on 127.0.0.1 for the MX tests (issue 13): authoritative for whatever names it is
//! given, on one ephemeral port over UDP and TCP, built on hickory-server. A name it was not
//! given is NXDOMAIN; a name it has but not of the asked type is NODATA; a name marked
//! `servfail` answers SERVFAIL, one marked `no_answer` is never answered. A CNAME is in every
//! answer for its name; a record can be slipped into the answers for a name not its own.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, MX};
use hickory_server::proto::rr::{Name, RData, Record as Rr, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use smtp_sidecar::mx::MxResolver;
use tokio::net::{TcpListener, UdpSocket};

/// One entry of the test zone.
#[derive(Debug, Clone)]
pub enum Record {
    Data(Box<Rr>),
    /// A record served in the answers to queries for another name (the `String`, as [`key`]
    /// makes it): [`Record::slipped_into`].
    Slipped(String, Box<Rr>),
    ServFail(String),
    NoAnswer(String),
}

impl Record {
    pub fn mx(name: &str, preference: u16, exchange: &str) -> Record {
        Record::data(name, RData::MX(MX::new(preference, fqdn(exchange))))
    }

    /// RFC 7505: `name. MX 0 .`
    pub fn null_mx(name: &str) -> Record {
        Record::data(name, RData::MX(MX::new(0, Name::root())))
    }

    pub fn a(name: &str, ip: &str) -> Record {
        Record::data(name, RData::A(A(ip.parse().expect("an IPv4 address"))))
    }

    pub fn aaaa(name: &str, ip: &str) -> Record {
        Record::data(
            name,
            RData::AAAA(AAAA(ip.parse().expect("an IPv6 address"))),
        )
    }

    /// `name. CNAME target.`: in the answer to every query for `name`, whatever its type. A
    /// recursive resolver sends the records at the end of the chain with it: a test gives
    /// those as [`Record::slipped_into`] `name`'s answers.
    pub fn cname(name: &str, target: &str) -> Record {
        Record::data(name, RData::CNAME(CNAME(fqdn(target))))
    }

    /// `record` (a [`Record::Data`]) in the answers to queries of its type for `queried`,
    /// though another name owns it: what a hostile server or a careless forwarder may send.
    pub fn slipped_into(queried: &str, record: Record) -> Record {
        match record {
            Record::Data(rr) => Record::Slipped(key(queried), rr),
            other => panic!("only data can be slipped into an answer: {other:?}"),
        }
    }

    /// Every query for `name`, of any type, gets SERVFAIL.
    pub fn servfail(name: &str) -> Record {
        Record::ServFail(key(name))
    }

    /// Queries for `name` are read and never answered (a timeout).
    pub fn no_answer(name: &str) -> Record {
        Record::NoAnswer(key(name))
    }

    fn data(name: &str, rdata: RData) -> Record {
        Record::Data(Box::new(Rr::from_rdata(fqdn(name), 60, rdata)))
    }
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).expect("a domain name")
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Default)]
enum Entry {
    #[default]
    ServFail,
    NoAnswer,
    Records(Vec<Rr>),
}

struct Zone {
    names: HashMap<String, Entry>,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
}

#[async_trait::async_trait]
impl RequestHandler for Zone {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let Ok(info) = request.request_info() else {
            metadata.response_code = ResponseCode::FormErr;
            return not_sent(metadata);
        };
        let name = key(&info.query.name().to_ascii());
        let qtype = info.query.query_type();
        self.queries.lock().unwrap().push((name.clone(), qtype));

        let answers: Vec<&Rr> = match self.names.get(&name) {
            None => {
                metadata.response_code = ResponseCode::NXDomain;
                vec![]
            }
            Some(Entry::NoAnswer) => return not_sent(metadata),
            Some(Entry::ServFail) => {
                metadata.response_code = ResponseCode::ServFail;
                vec![]
            }
            // NOERROR, possibly with no answers (NODATA).
            Some(Entry::Records(records)) => records
                .iter()
                .filter(|r| r.record_type() == qtype || r.record_type() == RecordType::CNAME)
                .collect(),
        };
        let none: &[Rr] = &[];
        let response = MessageResponseBuilder::from_message_request(request)
            .build(metadata, answers, none, none, none);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => panic!("test DNS server could not answer: {e}"),
        }
    }
}

fn not_sent(metadata: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// A running test DNS server; stopped when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<Mutex<Vec<(String, RecordType)>>>,
    server: Server<Zone>,
}

impl TestDns {
    pub async fn start(records: Vec<Record>) -> TestDns {
        let mut names: HashMap<String, Entry> = HashMap::new();
        for record in records {
            let (queried, rr) = match record {
                Record::Data(rr) => (key(&rr.name.to_ascii()), rr),
                Record::Slipped(queried, rr) => (queried, rr),
                Record::ServFail(name) => {
                    names.insert(name, Entry::ServFail);
                    continue;
                }
                Record::NoAnswer(name) => {
                    names.insert(name, Entry::NoAnswer);
                    continue;
                }
            };
            match names.entry(queried).or_default() {
                Entry::Records(all) => all.push(*rr),
                entry => *entry = Entry::Records(vec![*rr]),
            }
        }
        let queries = Arc::default();
        let mut server = Server::new(Zone {
            names,
            queries: Arc::clone(&queries),
        });
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 32);
        TestDns {
            addr,
            queries,
            server,
        }
    }

    /// Every query received so far: (lowercase name without the dot, type such as "MX").
    pub fn queries(&self) -> Vec<(String, String)> {
        self.queries
            .lock()
            .unwrap()
            .iter()
            .map(|(name, qtype)| (name.clone(), qtype.to_string()))
            .collect()
    }

    /// An MX resolver that asks only this server, and delivers to loopback addresses (all
    /// a test has).
    pub fn resolver(&self, timeout: Duration) -> MxResolver {
        self.resolver_with(timeout, true)
    }

    /// The same, `allow_loopback` as given.
    pub fn resolver_with(&self, timeout: Duration, allow_loopback: bool) -> MxResolver {
        MxResolver::new(&smtp_sidecar::config::ResolverConfig {
            nameservers: vec![self.addr],
            timeout,
            allow_loopback,
        })
        .unwrap()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}

/// A UDP socket and a TCP listener on the same ephemeral port of 127.0.0.1.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// A name server that never answers: a bound UDP socket nobody reads, and a TCP listener on the
/// same port whose connections are never accepted (so neither transport fails fast).
pub struct SilentDns {
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: TcpListener,
}

impl SilentDns {
    pub async fn start() -> SilentDns {
        let (udp, tcp) = bind_pair().await;
        SilentDns {
            addr: udp.local_addr().unwrap(),
            _udp: udp,
            _tcp: tcp,
        }
    }
}

/// `ip:port` as a `SocketAddr`, for comparing next hops.
pub fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}
