//! The TLS 1.3 key schedule's HKDF over SHA-256 with each key's HMAC set up once
//! ([`sha256_suites`]).
//!
//! rustls's aws-lc-rs provider runs every expansion through aws-lc's `HKDF` functions, which
//! key a fresh HMAC each time (two SHA-256 blocks for the key before the message's), and for a
//! secret from an extraction do the extraction again with every expansion: a full server
//! handshake makes 19 such calls. rustls's own [`HkdfUsingHmac`] builds HKDF (RFC 5869) on an
//! HMAC whose key is set up once per secret; here that HMAC is aws-lc's, its keyed state
//! copied for each message. The same bytes come out (the tests below check RFC 5869's
//! vectors and the provider's own output), with a quarter less SHA-256 per handshake
//! (callgrind). Unlike the provider's, the HKDF does not claim FIPS approval (`fips()` is
//! false): the sidecar is not built in FIPS mode.

use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::CipherSuiteCommon;
use rustls::{SupportedCipherSuite, Tls13CipherSuite};

/// HMAC-SHA256 with the key's inner and outer states computed once, when the key is made.
struct HmacSha256;

impl Hmac for HmacSha256 {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(KeyedSha256(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key,
        )))
    }

    fn hash_output_len(&self) -> usize {
        32
    }
}

struct KeyedSha256(aws_lc_rs::hmac::Key);

impl Key for KeyedSha256 {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        32
    }
}

static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HmacSha256);

/// `suites` with each TLS 1.3 suite whose hash is SHA-256 (AES-128-GCM, ChaCha20-Poly1305)
/// replaced by the same suite on [`HKDF_SHA256`]; the others as they are. The replacements
/// are made once per process (the provider is).
pub fn sha256_suites(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    suites
        .iter()
        .map(|suite| match suite {
            SupportedCipherSuite::Tls13(s)
                if s.common.hash_provider.algorithm()
                    == rustls::crypto::hash::HashAlgorithm::SHA256 =>
            {
                SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                    common: CipherSuiteCommon {
                        suite: s.common.suite,
                        hash_provider: s.common.hash_provider,
                        confidentiality_limit: s.common.confidentiality_limit,
                    },
                    hkdf_provider: &HKDF_SHA256,
                    aead_alg: s.aead_alg,
                    quic: s.quic,
                })))
            }
            other => *other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::tls13::{Hkdf, OkmBlock};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869, appendix A.1 and A.2 (SHA-256).
    #[test]
    fn rfc_5869_vectors() {
        let cases = [
            (
                hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
                hex("000102030405060708090a0b0c"),
                hex("f0f1f2f3f4f5f6f7f8f9"),
                hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
            ),
            (
                (0u8..0x50).collect::<Vec<u8>>(),
                (0x60u8..0xb0).collect(),
                (0xb0u8..=0xff).collect(),
                hex("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
            ),
        ];
        for (ikm, salt, info, okm) in cases {
            let expander = HKDF_SHA256.extract_from_secret(Some(&salt), &ikm);
            let mut out = vec![0; okm.len()];
            expander.expand_slice(&[&info], &mut out).unwrap();
            assert_eq!(out, okm);
        }
    }

    /// The process's provider runs its TLS 1.3 suites on SHA-256 on this HKDF, and no other.
    #[test]
    fn the_provider_uses_it_for_the_sha256_suites() {
        let ours: &dyn Hkdf = &HKDF_SHA256;
        let mut replaced = Vec::new();
        for suite in &crate::tls::provider().cipher_suites {
            if let SupportedCipherSuite::Tls13(s) = suite {
                if std::ptr::addr_eq(s.hkdf_provider, ours) {
                    replaced.push(s.common.suite);
                }
            }
        }
        assert_eq!(
            replaced,
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
    }

    /// The provider's own HKDF and this one agree on every operation the key schedule uses.
    #[test]
    fn the_same_bytes_as_the_providers_hkdf() {
        let suite = crate::tls::crypto::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .unwrap();
        let theirs = suite.hkdf_provider;
        let ours: &dyn Hkdf = &HKDF_SHA256;
        let secret = [7u8; 32];
        let info: [&[u8]; 3] = [
            b"\x00\x20",
            b"\x0dtls13 c hs traffic",
            b"\x20abcdefghijklmnopqrstuvwxyz012345",
        ];
        let block = |h: &dyn Hkdf| {
            let zero = h.extract_from_zero_ikm(Some(&secret)).expand_block(&info);
            let from = h.extract_from_secret(None, &secret).expand_block(&info);
            let okm = h.expander_for_okm(&from).expand_block(&info);
            let mut key = [0u8; 16];
            h.expander_for_okm(&okm)
                .expand_slice(&info, &mut key)
                .unwrap();
            let mac = h.hmac_sign(&OkmBlock::new(&secret), b"finished");
            [
                zero.as_ref().to_vec(),
                from.as_ref().to_vec(),
                okm.as_ref().to_vec(),
                key.to_vec(),
                mac.as_ref().to_vec(),
            ]
        };
        assert_eq!(block(ours), block(theirs));
    }
}
