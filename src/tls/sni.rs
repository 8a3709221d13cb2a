//! The server name a client asks for (SNI, RFC 6066 §3), read from its ClientHello as it
//! arrives. rustls' unbuffered server connection does not report it, and the protocol log
//! names it along with the certificate served for it. rustls parses and checks the same
//! bytes for the handshake itself; this only looks, within bounds, and gives up on anything
//! unexpected.

/// What the bytes received so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sni {
    /// The host name asked for, lower-cased.
    Name(String),
    /// No (usable) name: none sent, not a ClientHello, or not in its first record.
    None,
    /// The first record is not complete yet.
    Incomplete,
}

/// Read the SNI host name from the start of a TLS connection's input.
pub fn parse(input: &[u8]) -> Sni {
    let mut record = Cursor(input);
    let (Some(22), Some(_version), Some(len)) = (record.u8(), record.u16(), record.u16()) else {
        return if input.len() < 5 {
            Sni::Incomplete
        } else {
            Sni::None
        };
    };
    let Some(fragment) = record.take(len.into()) else {
        return Sni::Incomplete;
    };
    client_hello(fragment).map_or(Sni::None, Sni::Name)
}

fn client_hello(fragment: &[u8]) -> Option<String> {
    let mut hs = Cursor(fragment);
    if hs.u8()? != 1 {
        return None;
    }
    let len = hs.u24()?;
    let mut body = Cursor(hs.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    let session_id = body.u8()?.into();
    body.take(session_id)?;
    let suites = body.u16()?.into();
    body.take(suites)?;
    let compression = body.u8()?.into();
    body.take(compression)?;
    let extensions = body.u16()?.into();
    let mut extensions = Cursor(body.take(extensions)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?.into();
        let data = extensions.take(len)?;
        if kind == 0 {
            return host_name(data);
        }
    }
    None
}

/// The host_name entry of a ServerNameList, if it is a plausible DNS name.
fn host_name(data: &[u8]) -> Option<String> {
    let mut list = Cursor(data);
    let len = list.u16()?.into();
    let mut list = Cursor(list.take(len)?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let len = list.u16()?.into();
        let name = list.take(len)?;
        // As rustls takes it: without a trailing dot, and never an IP address.
        let name = name.strip_suffix(b".").unwrap_or(name);
        let dns = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        let address = name.iter().all(|b| b.is_ascii_digit() || *b == b'.');
        if kind == 0 && !name.is_empty() && name.len() <= 253 && name.iter().all(dns) && !address {
            return Some(String::from_utf8_lossy(name).to_ascii_lowercase());
        }
    }
    None
}

/// Big-endian reads that fail, instead of panicking, past the end.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<usize> {
        let b = self.take(3)?;
        Some(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use super::{parse, Sni};

    /// A real ClientHello, as rustls' client writes it.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_name_and_waits_for_the_whole_record() {
        let hello = client_hello("MX.Partner.example");
        assert_eq!(parse(&hello), Sni::Name("mx.partner.example".into()));
        for cut in [0, 3, 5, 40, hello.len() - 1] {
            assert_eq!(parse(&hello[..cut]), Sni::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn no_name_for_an_address_or_anything_else() {
        // rustls sends no SNI for an IP address.
        assert_eq!(parse(&client_hello("192.0.2.1")), Sni::None);
        assert_eq!(parse(b"EHLO client.test\r\n"), Sni::None);
        let mut hello = client_hello("mx.test");
        hello[5] = 2; // not a ClientHello
        assert_eq!(parse(&hello), Sni::None);
    }

    proptest::proptest! {
        /// Any input, and any real ClientHello with bytes changed: an answer, never a panic.
        #[test]
        fn anything_is_answered(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            edits in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 0..8),
        ) {
            let _ = parse(&bytes);
            let mut hello = client_hello("mx.partner.example");
            for (at, byte) in edits {
                let at = at % hello.len();
                hello[at] = byte;
            }
            let _ = parse(&hello);
        }
    }

    #[test]
    fn a_trailing_dot_is_dropped_and_an_address_is_no_name() {
        let entry = |name: &[u8]| {
            let len = u8::try_from(name.len()).unwrap();
            let mut list = vec![0, len + 3, 0, 0, len];
            list.extend_from_slice(name);
            super::host_name(&list)
        };
        assert_eq!(entry(b"MX.test."), Some("mx.test".into()));
        assert_eq!(entry(b"192.0.2.1"), None);
        assert_eq!(entry(b"mx test"), None);
    }

    #[test]
    fn truncated_lengths_never_panic() {
        let hello = client_hello("mx.test");
        for i in 5..hello.len() {
            let mut broken = hello.clone();
            broken[i] = 0xff;
            let _ = parse(&broken);
            broken[i] = 0;
            let _ = parse(&broken);
        }
    }
}
