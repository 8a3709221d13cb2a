//! The PROXY protocol header (HAProxy's proxy-protocol.txt, v1 text and v2 binary) that a
//! load balancer sends before the client's first byte on a `proxy_protocol: true` listener:
//! read exactly, parsed with the `ppp` crate, turned into the client's address.
//!
//! The reader never reads past the header. Whatever follows it (pipelined SMTP, an implicit-TLS
//! ClientHello) may arrive in the same segment and belongs to the session, so each read asks
//! for no more than the shortest header that could begin with what has been read so far: v1 is
//! a line of at most 107 octets ending in CRLF (§2.1), v2 a 16-octet fixed part whose last two
//! octets give the length of the rest (§2.2).
//!
//! What each kind of header gives the session:
//! - v1 `TCP4`/`TCP6`, v2 `PROXY` over IPv4/IPv6: the source address in it.
//! - v1 `UNKNOWN`, v2 `LOCAL` (the balancer's own health checks), and v2 `PROXY` with the
//!   `UNSPEC` or `UNIX` family: none; the connection's own address stands, as the
//!   specification allows for `UNSPEC` (§2.2) and asks for `UNKNOWN` (§2.1).
//!
//! The transport byte of v2 (stream or datagram) is not checked: only the address is used.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN: usize = 15;
/// The longest v1 header, CRLF included (§2.1).
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// v2's 12-octet signature (§2.2).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// v2's fixed part: the signature, version and command, family and transport, length.
const V2_FIXED: usize = 16;
/// The longest v2 header accepted. Its length field allows 64 KiB; the addresses take at
/// most 216 octets (UNIX) and the TLVs balancers add (cloud endpoint ids, HAProxy's SSL
/// details) a few hundred, so 4 KiB leaves room without letting a connection cost 64 KiB.
pub const V2_MAX: usize = 4096;

/// Which version of the protocol the header was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// What a valid header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The client's address, IPv4-mapped IPv6 written as IPv4; `None`: the header names no
    /// client (v1 `UNKNOWN`, v2 `LOCAL`, `UNSPEC` or `UNIX`) and the socket's address stands.
    pub source: Option<SocketAddr>,
    /// What kind of header it was, for the log: `v1 TCP4`, `v2 IPv6`, `v2 LOCAL`...
    pub kind: &'static str,
}

/// Why a connection did not get past its header.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY header: the connection began with other bytes")]
    Missing,
    #[error("invalid PROXY v1 header: {0}")]
    V1(ppp::v1::BinaryParseError),
    #[error("invalid PROXY v2 header: {0}")]
    V2(ppp::v2::ParseError),
    #[error("PROXY v1 header without CRLF within {V1_MAX} octets")]
    V1TooLong,
    #[error("PROXY v2 header of {0} octets (at most {V2_MAX} accepted)")]
    V2TooLong(usize),
    #[error("connection closed after {0} octets of the PROXY header")]
    Closed(usize),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl HeaderError {
    /// Every [`HeaderError::reason`], for series created at 0.
    pub const REASONS: [&'static str; 4] = ["missing", "invalid", "closed", "timeout"];

    /// The `reason` label of `proxy_header_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            HeaderError::Missing => "missing",
            HeaderError::V1(_)
            | HeaderError::V2(_)
            | HeaderError::V1TooLong
            | HeaderError::V2TooLong(_) => "invalid",
            HeaderError::Closed(_) | HeaderError::Io(_) => "closed",
            HeaderError::Timeout(_) => "timeout",
        }
    }
}

/// Read the header from the connection `tcp` within `limit`, and not one octet more. A
/// balancer sends it whole in its first segment, usually with nothing behind it yet: a peek
/// finds its end and one read takes it. Otherwise (cut across segments, or with more behind
/// it than the peek looks at) it is read a step at a time ([`read_header`]).
pub async fn read_header_from(
    tcp: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Result<Header, HeaderError> {
    let whole = async {
        let mut peeked = [0u8; PEEK];
        let n = tcp.peek(&mut peeked).await?;
        let Some(len) = whole_header_len(&peeked[..n]) else {
            return read_exactly(tcp).await;
        };
        let mut buf = vec![0; len];
        tcp.read_exact(&mut buf).await?;
        match step(&buf)? {
            Step::Done(header) => Ok(header),
            // What ends with the line's end (v1) or the announced length (v2) and is no
            // header is refused as one, below.
            Step::Read(_) => Err(HeaderError::Missing),
        }
    };
    match tokio::time::timeout(limit, whole).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Timeout(limit)),
    }
}

/// What [`read_header_from`] peeks at: a v1 header's longest, and a v2 header with a few
/// TLVs (a cloud balancer's endpoint and connection ids).
const PEEK: usize = 512;

/// The length of the header at the start of `peeked`, if all of it is there: up to its line's
/// end for v1 (its first CR or LF, which must be a CRLF, within its longest), the fixed part
/// and the length it announces for v2.
/// `None`: not whole yet, or not a header (the step-by-step read says which).
fn whole_header_len(peeked: &[u8]) -> Option<usize> {
    if peeked.starts_with(V1_PREFIX) {
        // Where the step-by-step read stops too: the first CR or LF, which must begin a CRLF
        // for the fast read; anything else is the careful read's to judge.
        let line = &peeked[..peeked.len().min(V1_MAX)];
        let end = line.iter().position(|&b| b == b'\r' || b == b'\n')?;
        return (line.get(end..end + 2) == Some(b"\r\n")).then_some(end + 2);
    }
    if peeked.starts_with(V2_SIGNATURE) && peeked.len() >= V2_FIXED {
        let total = V2_FIXED + usize::from(u16::from_be_bytes([peeked[14], peeked[15]]));
        return (total <= peeked.len()).then_some(total);
    }
    None
}

/// Read the header from `r` within `limit`, and not one octet more, a step at a time: never
/// more than the shortest header that begins with what was read could still need.
pub async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Result<Header, HeaderError> {
    match tokio::time::timeout(limit, read_exactly(r)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Timeout(limit)),
    }
}

async fn read_exactly<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, HeaderError> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let want = match step(&buf)? {
            Step::Done(header) => return Ok(header),
            Step::Read(want) => want,
        };
        let len = buf.len();
        buf.resize(len + want, 0);
        let got = r.read(&mut buf[len..]).await?;
        buf.truncate(len + got);
        if got == 0 {
            return Err(HeaderError::Closed(len));
        }
    }
}

/// What to do with the octets read so far.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Read at most this many more: no header that begins with what was read ends sooner.
    Read(usize),
    /// What was read is a whole, valid header.
    Done(Header),
}

/// The next step after `buf`, or why it can never become a header.
fn step(buf: &[u8]) -> Result<Step, HeaderError> {
    match buf.first() {
        // Both versions are at least this long.
        None => Ok(Step::Read(V1_MIN)),
        Some(b'P') => v1_step(buf),
        Some(b'\r') => v2_step(buf),
        Some(_) => Err(HeaderError::Missing),
    }
}

fn v1_step(buf: &[u8]) -> Result<Step, HeaderError> {
    if !buf.starts_with(&V1_PREFIX[..buf.len().min(V1_PREFIX.len())]) {
        return Err(HeaderError::Missing);
    }
    match buf.iter().position(|&b| b == b'\r' || b == b'\n') {
        // Its LF is the next octet, or it is not a header.
        Some(end) if buf[end] == b'\r' && end + 1 == buf.len() => Ok(Step::Read(1)),
        // The line ends here: the parser says whether it is a header.
        Some(_) => {
            let h = ppp::v1::Header::try_from(buf).map_err(HeaderError::V1)?;
            if h.header.len() != buf.len() {
                // Cannot happen with the line ending last; never hand on a shorter header.
                return Err(HeaderError::V1TooLong);
            }
            Ok(Step::Done(v1_header(&h.addresses)))
        }
        // The CRLF is still to come, and a header has at least V1_MIN octets.
        None => {
            let want = V1_MIN.saturating_sub(buf.len()).max(2);
            if buf.len() + want > V1_MAX {
                return Err(HeaderError::V1TooLong);
            }
            Ok(Step::Read(want))
        }
    }
}

fn v2_step(buf: &[u8]) -> Result<Step, HeaderError> {
    let signature = buf.len().min(V2_SIGNATURE.len());
    if buf[..signature] != V2_SIGNATURE[..signature] {
        return Err(HeaderError::Missing);
    }
    if buf.len() < V2_FIXED {
        return Ok(Step::Read(V2_FIXED - buf.len()));
    }
    let total = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if total > V2_MAX {
        return Err(HeaderError::V2TooLong(total));
    }
    // §2.2: a LOCAL header's address block, family included, is to be ignored, whatever it
    // holds (ppp would refuse a family whose addresses do not fit the length, as a balancer's
    // health check may send it): read to its end and taken as it is.
    if buf[12] == 0x20 {
        return Ok(match buf.len() < total {
            true => Step::Read(total - buf.len()),
            false => Step::Done(Header {
                version: Version::V2,
                source: None,
                kind: "v2 LOCAL",
            }),
        });
    }
    // Parsed as soon as the fixed part is in, so that a wrong version, command or (but for
    // LOCAL, above) family is refused without waiting for the length it announces.
    match ppp::v2::Header::try_from(buf) {
        Ok(h) => Ok(Step::Done(v2_header(&h))),
        Err(ppp::v2::ParseError::Partial(..)) => Ok(Step::Read(total - buf.len())),
        Err(e) => Err(HeaderError::V2(e)),
    }
}

/// An address as the session takes it: IPv4-mapped IPv6 (a dual-stack balancer's view of an
/// IPv4 client) as the IPv4 address it is, so that per-address limits and the Received
/// header see one client one way.
fn client(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

fn v1_header(addresses: &ppp::v1::Addresses) -> Header {
    use ppp::v1::Addresses;
    let (source, kind) = match addresses {
        Addresses::Tcp4(a) => (
            Some(client(a.source_address.into(), a.source_port)),
            "v1 TCP4",
        ),
        Addresses::Tcp6(a) => (
            Some(client(a.source_address.into(), a.source_port)),
            "v1 TCP6",
        ),
        Addresses::Unknown => (None, "v1 UNKNOWN"),
    };
    Header {
        version: Version::V1,
        source,
        kind,
    }
}

fn v2_header(h: &ppp::v2::Header<'_>) -> Header {
    use ppp::v2::{Addresses, Command};
    let (source, kind) = match (h.command, &h.addresses) {
        // §2.2: a LOCAL connection is the balancer's own; its addresses are to be ignored.
        (Command::Local, _) => (None, "v2 LOCAL"),
        (Command::Proxy, Addresses::IPv4(a)) => (
            Some(client(a.source_address.into(), a.source_port)),
            "v2 IPv4",
        ),
        (Command::Proxy, Addresses::IPv6(a)) => (
            Some(client(a.source_address.into(), a.source_port)),
            "v2 IPv6",
        ),
        (Command::Proxy, Addresses::Unspecified) => (None, "v2 UNSPEC"),
        (Command::Proxy, Addresses::Unix(_)) => (None, "v2 UNIX"),
    };
    Header {
        version: Version::V2,
        source,
        kind,
    }
}

#[cfg(test)]
mod tests;
