//! The header reader: each kind of header, each way of being wrong, and (proptest) that no
//! split of the input makes it read an octet past the header.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

use super::{read_header, step, Header, HeaderError, Step, Version, V2_MAX};

/// A reader that hands out the given chunks, each at most as far as the caller's buffer
/// reaches (the rest stays for the next read), then end of file: what it still holds after
/// the header is what the session would read.
struct Chunks(VecDeque<Vec<u8>>);

impl Chunks {
    fn new(data: &[u8], cuts: &[usize]) -> Self {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(data.len());
        let mut chunks = VecDeque::new();
        let mut at = 0;
        for cut in cuts {
            if cut > at {
                chunks.push_back(data[at..cut].to_vec());
                at = cut;
            }
        }
        Chunks(chunks)
    }

    fn rest(&self) -> Vec<u8> {
        self.0.iter().flatten().copied().collect()
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(front) = self.0.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.0.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

/// Read a header from `data` cut at `cuts`; the header's result and what was left unread.
fn read(data: &[u8], cuts: &[usize]) -> (Result<Header, HeaderError>, Vec<u8>) {
    let mut r = Chunks::new(data, cuts);
    let result = runtime().block_on(read_header(&mut r, Duration::from_secs(5)));
    (result, r.rest())
}

fn v2(command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&u16::try_from(rest.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.extend_from_slice(rest);
    h
}

fn v2_ipv4(src: [u8; 4], sport: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut rest = src.to_vec();
    rest.extend_from_slice(&[192, 0, 2, 25]);
    rest.extend_from_slice(&sport.to_be_bytes());
    rest.extend_from_slice(&25u16.to_be_bytes());
    rest.extend_from_slice(tlvs);
    v2(1, 0x11, &rest)
}

fn v2_ipv6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut rest = src.octets().to_vec();
    rest.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    rest.extend_from_slice(&sport.to_be_bytes());
    rest.extend_from_slice(&25u16.to_be_bytes());
    v2(1, 0x21, &rest)
}

fn addr(text: &str) -> Option<SocketAddr> {
    Some(text.parse().expect("a socket address"))
}

#[test]
fn each_kind_of_header() {
    let unix = {
        let mut rest = vec![0u8; 216];
        rest[..9].copy_from_slice(b"/run/sock");
        v2(1, 0x31, &rest)
    };
    let cases: Vec<(Vec<u8>, Version, Option<SocketAddr>, &str)> = vec![
        (
            b"PROXY TCP4 203.0.113.7 192.0.2.25 51234 25\r\n".to_vec(),
            Version::V1,
            addr("203.0.113.7:51234"),
            "v1 TCP4",
        ),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::25 51234 25\r\n".to_vec(),
            Version::V1,
            addr("[2001:db8::7]:51234"),
            "v1 TCP6",
        ),
        (
            b"PROXY TCP6 ::ffff:203.0.113.7 ::ffff:192.0.2.25 1 25\r\n".to_vec(),
            Version::V1,
            addr("203.0.113.7:1"),
            "v1 TCP6",
        ),
        (
            b"PROXY UNKNOWN\r\n".to_vec(),
            Version::V1,
            None,
            "v1 UNKNOWN",
        ),
        (
            b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n".to_vec(),
            Version::V1,
            None,
            "v1 UNKNOWN",
        ),
        (
            v2_ipv4([203, 0, 113, 7], 51234, &[]),
            Version::V2,
            addr("203.0.113.7:51234"),
            "v2 IPv4",
        ),
        (
            // A TLV (an AWS-style 0xEA with a VPC endpoint id) is skipped.
            v2_ipv4([203, 0, 113, 7], 51234, b"\xEA\x00\x05\x01vpce"),
            Version::V2,
            addr("203.0.113.7:51234"),
            "v2 IPv4",
        ),
        (
            v2_ipv6("2001:db8::7".parse().expect("v6"), 2525),
            Version::V2,
            addr("[2001:db8::7]:2525"),
            "v2 IPv6",
        ),
        (v2(0, 0x00, &[]), Version::V2, None, "v2 LOCAL"),
        // LOCAL with a family and no room for its addresses: the block is ignored all the same.
        (v2(0, 0x11, &[]), Version::V2, None, "v2 LOCAL"),
        (v2(0, 0x21, &[1, 2, 3]), Version::V2, None, "v2 LOCAL"),
        (
            // LOCAL with addresses: they are the balancer's and ignored.
            {
                let mut h = v2_ipv4([203, 0, 113, 7], 1, &[]);
                h[12] = 0x20;
                h
            },
            Version::V2,
            None,
            "v2 LOCAL",
        ),
        (v2(1, 0x00, &[]), Version::V2, None, "v2 UNSPEC"),
        (unix, Version::V2, None, "v2 UNIX"),
    ];
    for (header, version, source, kind) in cases {
        let mut data = header.clone();
        data.extend_from_slice(b"EHLO client.example\r\n");
        let (result, rest) = read(&data, &[]);
        let want = Header {
            version,
            source,
            kind,
        };
        match result {
            Ok(got) => assert_eq!(got, want, "{header:?}"),
            Err(e) => panic!("{header:?}: {e}"),
        }
        assert_eq!(rest, b"EHLO client.example\r\n", "{header:?}");
    }
}

#[test]
fn what_is_not_a_header() {
    let mut version_1_in_v2 = v2(1, 0x11, &[0; 12]);
    version_1_in_v2[12] = 0x11;
    let long_v1 = {
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(110, b'a');
        h
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"EHLO client.example\r\n".to_vec(), "missing"),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            "missing",
        ),
        (b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "missing"),
        (b"\r\n\r\n\0\r\nQUIZ\n\x21\x11\x00\x00".to_vec(), "missing"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(), "invalid"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".to_vec(), "invalid"),
        (b"PROXY TCP4 1.2.3.444 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_vec(),
            "invalid",
        ),
        (
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n".to_vec(),
            "invalid",
        ),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
        (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(), "invalid"),
        (long_v1, "invalid"),
        // Version 1 in v2 framing; a command 2; family 4; too short for its family.
        (version_1_in_v2, "invalid"),
        (v2(2, 0x11, &[0; 12]), "invalid"),
        (v2(1, 0x41, &[0; 12]), "invalid"),
        (v2(1, 0x11, &[0; 4]), "invalid"),
        (v2(1, 0x11, &vec![0; V2_MAX]), "invalid"),
        // LOCAL's block is ignored, but not read past the bound.
        (v2(0, 0x11, &vec![0; V2_MAX]), "invalid"),
        // The connection ends inside a header.
        (b"PROXY TCP4 1.2.3.4".to_vec(), "closed"),
        (v2_ipv4([1, 2, 3, 4], 1, &[])[..20].to_vec(), "closed"),
        (Vec::new(), "closed"),
    ];
    for (data, reason) in cases {
        let (result, _) = read(&data, &[]);
        match result {
            Err(e) => assert_eq!(e.reason(), reason, "{data:?}: {e}"),
            Ok(h) => panic!("{data:?}: taken as {h:?}"),
        }
    }
}

/// A client that sends plain SMTP is refused at its first bytes, without waiting for the
/// 15 a header would have.
#[test]
fn plain_smtp_is_refused_at_once() {
    assert!(matches!(step(b"E"), Err(HeaderError::Missing)));
    assert!(matches!(step(b"\x16"), Err(HeaderError::Missing)));
    assert!(matches!(step(b"PRI"), Err(HeaderError::Missing)));
    assert!(matches!(step(b"PRO"), Ok(Step::Read(12))));
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_slow_connection_times_out() {
    let (mut ours, mut theirs) = tokio::io::duplex(64);
    let limit = Duration::from_secs(10);
    let silent = read_header(&mut ours, limit).await;
    assert!(matches!(silent, Err(HeaderError::Timeout(_))), "{silent:?}");
    // Part of a header, then nothing: the deadline is the whole header's, not each read's.
    tokio::io::AsyncWriteExt::write_all(&mut theirs, b"PROXY TCP4 ")
        .await
        .expect("write");
    let started = tokio::time::Instant::now();
    let slow = read_header(&mut ours, limit).await;
    assert!(matches!(slow, Err(HeaderError::Timeout(_))), "{slow:?}");
    assert_eq!(started.elapsed(), limit);
    assert_eq!(slow.map_err(|e| e.reason()).err(), Some("timeout"));
}

/// A valid header of either version, as octets, with what it must give.
fn any_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let v4 = (any::<[u8; 4]>(), any::<u16>());
    let v6 = (any::<[u16; 8]>(), any::<u16>());
    prop_oneof![
        v4.prop_map(|(ip, port)| {
            let ip = Ipv4Addr::from(ip);
            let text = format!("PROXY TCP4 {ip} 192.0.2.25 {port} 25\r\n");
            (text.into_bytes(), Some(SocketAddr::new(ip.into(), port)))
        }),
        v6.prop_map(|(ip, port)| {
            let ip = Ipv6Addr::from(ip);
            let text =
                format!("PROXY TCP6 {ip} ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff {port} 65535\r\n");
            (
                text.into_bytes(),
                Some(SocketAddr::new(IpAddr::V6(ip).to_canonical(), port)),
            )
        }),
        Just((b"PROXY UNKNOWN\r\n".to_vec(), None)),
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(ip, port, tlvs)| {
                let source = SocketAddr::new(Ipv4Addr::from(ip).into(), port);
                (v2_ipv4(ip, port, &tlvs), Some(source))
            }),
        v6.prop_map(|(ip, port)| {
            let ip = Ipv6Addr::from(ip);
            (
                v2_ipv6(ip, port),
                Some(SocketAddr::new(IpAddr::V6(ip).to_canonical(), port)),
            )
        }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|rest| (v2(0, 0, &rest), None)),
    ]
}

proptest! {
    /// However the octets arrive, the header is read whole and what follows it (pipelined
    /// SMTP, a ClientHello) is left for the session, every octet of it.
    #[test]
    fn never_reads_past_the_header(
        (header, source) in any_header(),
        after in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut data = header.clone();
        data.extend_from_slice(&after);
        let (result, rest) = read(&data, &cuts);
        match result {
            Ok(h) => prop_assert_eq!(h.source, source),
            Err(e) => prop_assert!(false, "{:?}: {}", header, e),
        }
        prop_assert_eq!(rest, after);
    }

    /// The reader's promise, without I/O: at every prefix of a header it asks for at most
    /// the octets the header still has.
    #[test]
    fn never_asks_for_more_than_the_header_has((header, _) in any_header()) {
        for len in 0..header.len() {
            match step(&header[..len]) {
                Ok(Step::Read(n)) => prop_assert!(n >= 1 && len + n <= header.len(), "{len} + {n}"),
                other => prop_assert!(false, "at {}: {:?}", len, other.map(|_| ())),
            }
        }
        prop_assert!(matches!(step(&header), Ok(Step::Done(_))));
    }

    /// Any octets at all, most after the start of a signature: an answer, never a panic, and
    /// never more read than V2_MAX.
    #[test]
    fn arbitrary_input_is_answered(
        start in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(&b"\r\n\r\n\0\r\nQUIT\n"[..])],
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut data = start.to_vec();
        data.extend_from_slice(&tail);
        let (_, rest) = read(&data, &cuts);
        prop_assert!(data.len() - rest.len() <= V2_MAX);
    }
}

/// The peek finds a whole header's length, and only a whole one's: v1 up to its CRLF within
/// 107 octets, v2 its fixed part and announced length; what follows is not counted.
#[test]
fn a_whole_header_is_found_in_what_was_peeked() {
    use super::whole_header_len;
    let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.25 40000 25\r\n";
    let mut with_smtp = v1.to_vec();
    with_smtp.extend_from_slice(b"EHLO x\r\n");
    assert_eq!(whole_header_len(&with_smtp), Some(v1.len()));
    assert_eq!(whole_header_len(&v1[..v1.len() - 1]), None, "no LF yet");
    assert_eq!(whole_header_len(b"PROXY UNKNOWN\r\n"), Some(15));
    let mut long = b"PROXY ".to_vec();
    long.extend_from_slice(&[b'1'; 110]);
    long.extend_from_slice(b"\r\n");
    assert_eq!(
        whole_header_len(&long),
        None,
        "past 107 octets: the careful read refuses it"
    );
    let v2 = v2_ipv4([192, 0, 2, 1], 40000, &[0x04, 0, 1, 7]);
    let mut with_hello = v2.clone();
    with_hello.extend_from_slice(&[0x16, 3, 1]);
    assert_eq!(whole_header_len(&with_hello), Some(v2.len()));
    assert_eq!(whole_header_len(&v2[..v2.len() - 1]), None);
    assert_eq!(whole_header_len(&v2[..15]), None);
    assert_eq!(whole_header_len(b"EHLO x\r\n"), None);
    // A bare LF or CR first: left to the step-by-step read.
    assert_eq!(whole_header_len(b"PROXY UNKNOWN x\ny\r\nEHLO x\r\n"), None);
    assert_eq!(whole_header_len(b"PROXY UNKNOWN \nEHLO x\r\n"), None);
    assert_eq!(whole_header_len(b"PROXY UNKNOWN\r\rx\r\n"), None);
}

/// Where the peek finds a whole header, the fast read takes what the step-by-step read takes,
/// to the octet, with the same result: never more, never a header it would refuse.
#[test]
fn the_fast_read_agrees_with_the_step_by_step_read() {
    let mut cases: Vec<Vec<u8>> = [
        &b"PROXY TCP4 192.0.2.1 192.0.2.25 40000 25\r\nEHLO x\r\n"[..],
        b"PROXY TCP6 2001:db8::1 2001:db8::25 40000 25\r\n\x16\x03\x01",
        b"PROXY UNKNOWN\r\nQUIT\r\n",
        b"PROXY UNKNOWN x\ny\r\nEHLO x\r\n",
        b"PROXY UNKNOWN \nEHLO x\r\n",
        b"PROXY TCP4 192.0.2.1 192.0.2.25 40000 25 \nEHLO x\r\n",
        b"PROXY TCP4 999.0.2.1 192.0.2.25 40000 25\r\nEHLO x\r\n",
        b"PROXY TCP4 192.0.2.1\r\n",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    let v2_header = v2_ipv4([192, 0, 2, 1], 40000, &[0x04, 0, 1, 7]);
    cases.push([v2_header, b"EHLO x\r\n".to_vec()].concat());
    cases.push([v2(0, 0, &[]), b"QUIT\r\n".to_vec()].concat());
    let mut fast_reads = 0;
    for data in cases {
        let (careful, rest) = read(&data, &[]);
        let Some(len) = super::whole_header_len(&data) else {
            continue;
        };
        fast_reads += 1;
        let fast = match step(&data[..len]) {
            Ok(Step::Done(header)) => Ok(header),
            Ok(Step::Read(_)) => Err(HeaderError::Missing),
            Err(e) => Err(e),
        };
        let text = String::from_utf8_lossy(&data);
        assert_eq!(format!("{fast:?}"), format!("{careful:?}"), "{text:?}");
        if careful.is_ok() {
            assert_eq!(&data[len..], &rest[..], "{text:?}");
        }
    }
    assert_eq!(fast_reads, 7, "the cases a peek takes whole");
}
