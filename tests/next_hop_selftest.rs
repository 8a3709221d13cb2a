//! The test next hop (`common::next_hop`) driven by a plain client and a verifying rustls
//! client, to show that it records what it should and presents the certificates it claims to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::next_hop::{load_chain, load_key, Cert, ClientAuth, End, NextHop, NextHopPki};
use common::pki::Spec;
use common::Client;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::{CertificateError, ClientConfig, ProtocolVersion, RootCertStore};

/// A client trusting both next-hop CAs, with the CRL loaded or not, presenting `identity`.
fn verifying(
    pki: &NextHopPki,
    crl: bool,
    identity: Option<&common::pki::Leaf>,
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in [&pki.root_file, &pki.revoking_ca_file]
        .map(|f| load_chain(f))
        .concat()
    {
        roots.add(cert).unwrap();
    }
    let mut verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unknown_revocation_status();
    if crl {
        let crls = CertificateRevocationListDer::pem_file_iter(&pki.crl_file).unwrap();
        verifier = verifier.with_crls(crls.map(Result::unwrap));
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_webpki_verifier(verifier.build().unwrap());
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(load_chain(&leaf.cert), load_key(&leaf.key))
            .unwrap(),
    })
}

/// Greeting, EHLO offering STARTTLS, STARTTLS accepted.
async fn before_tls(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 next.test ESMTP\r\n");
    assert!(c
        .cmd("EHLO client.test")
        .await
        .ends_with("250 STARTTLS\r\n"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    c
}

#[tokio::test]
async fn plaintext_session_is_recorded_byte_exact() {
    let hop = NextHop::builder()
        .rcpt_reply("Bad@next.test", "550 5.1.1 No such user")
        .start()
        .await;
    let mut c = Client::connect(hop.addr).await;
    assert_eq!(c.reply().await, "220 next.test ESMTP\r\n");
    let sent =
        "EHLO client.test\r\nMAIL FROM:<a@client.test> SIZE=20\r\nRCPT TO:<bad@next.test>\r\n\
                RCPT TO:<good@next.test>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    c.send(sent.as_bytes()).await;
    let ehlo = "250-next.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n\
                250 ENHANCEDSTATUSCODES\r\n";
    assert_eq!(c.reply().await, ehlo);
    for expected in [
        "250 2.1.0",
        "550 5.1.1",
        "250 2.1.5",
        "354 ",
        "250 2.0.0 Ok: queued",
        "221 ",
    ] {
        assert!(c.reply().await.starts_with(expected), "{expected}");
    }
    let s = hop.next_session().await;
    assert_eq!(String::from_utf8(s.plaintext).unwrap(), sent);
    assert!(s.tls.is_none() && s.encrypted.is_empty());
    assert_eq!(s.end, End::Quit);
    assert_eq!(s.messages[0].mail_from, "a@client.test");
    assert_eq!(s.messages[0].rcpt_to, ["good@next.test"]);
    assert_eq!(s.messages[0].data, b"Subject: x\r\n\r\n..dot\r\n");
    assert_eq!(hop.accepted(), 1);
}

#[tokio::test]
async fn starttls_session_records_both_parts_and_the_tls_details() {
    let pki = NextHopPki::new();
    let hop = NextHop::builder()
        .host("mx.test")
        .starttls(&pki, Cert::Valid)
        .start()
        .await;
    let c = before_tls(hop.addr).await;
    let mut c = c.try_upgrade(verifying(&pki, true, None)).await.unwrap();
    assert_eq!(
        c.cmd("MAIL FROM:<a@client.test>").await,
        "503 5.5.1 Send EHLO first\r\n"
    );
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.starts_with("250-next.test\r\n") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let s = hop.next_session().await;
    assert_eq!(s.plaintext, b"EHLO client.test\r\nSTARTTLS\r\n");
    assert_eq!(
        s.encrypted,
        b"MAIL FROM:<a@client.test>\r\nEHLO client.test\r\nQUIT\r\n"
    );
    let tls = s.tls.unwrap();
    assert_eq!(tls.version, ProtocolVersion::TLSv1_3);
    assert_eq!(tls.sni.as_deref(), Some("mx.test"));
    assert!(tls.client_chain.is_empty());
}

#[tokio::test]
async fn a_required_client_certificate_is_recorded_and_its_absence_fails() {
    let pki = NextHopPki::new();
    let client = pki.root.leaf("client", Spec::ca(&["client.test"]));
    let hop = NextHop::builder()
        .host("mx.test")
        .starttls(&pki, Cert::Valid)
        .client_auth(ClientAuth::Require(pki.root_file.clone()))
        .tls_versions(&[&rustls::version::TLS12]) // a refused client sees it in the handshake
        .start()
        .await;
    let c = before_tls(hop.addr).await;
    let mut c = c
        .try_upgrade(verifying(&pki, false, Some(&client)))
        .await
        .unwrap();
    assert!(c.cmd("QUIT").await.starts_with("221"));
    let tls = hop.next_session().await.tls.unwrap();
    assert_eq!(tls.version, ProtocolVersion::TLSv1_2);
    assert_eq!(tls.client_chain[0].as_ref(), client.der.as_slice());

    let c = before_tls(hop.addr).await;
    assert!(c.try_upgrade(verifying(&pki, false, None)).await.is_err());
    let s = hop.next_session().await;
    assert!(matches!(s.end, End::HandshakeFailed(_)), "{:?}", s.end);
    assert!(s.tls.is_none());
}

/// The error without the context rustls adds to some kinds.
fn kind(e: &CertificateError) -> CertificateError {
    match e {
        CertificateError::ExpiredContext { .. } => CertificateError::Expired,
        CertificateError::NotValidForNameContext { .. } => CertificateError::NotValidForName,
        other => other.clone(),
    }
}

#[tokio::test]
async fn bad_certificates_fail_a_verifying_client() {
    use CertificateError as E;
    let pki = NextHopPki::new();
    // The certificate, whether the client loads the CRL, the rejection expected.
    let expected = [
        (Cert::Valid, true, None),
        (Cert::Revoked, false, None),
        (Cert::Revoked, true, Some(E::Revoked)),
        (Cert::Expired, true, Some(E::Expired)),
        (Cert::WrongName, true, Some(E::NotValidForName)),
        (Cert::Untrusted, true, Some(E::UnknownIssuer)),
    ];
    for (cert, crl, rejection) in expected {
        let hop = NextHop::builder()
            .host("mx.test")
            .starttls(&pki, cert)
            .start()
            .await;
        let c = before_tls(hop.addr).await;
        let got = match c.try_upgrade(verifying(&pki, crl, None)).await {
            Ok(_) => None,
            Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(e)) => Some(kind(e)),
                other => panic!("{cert:?}: {other:?}"),
            },
        };
        assert_eq!(got, rejection, "{cert:?}, CRL loaded: {crl}");
    }
}

#[tokio::test]
async fn a_failed_handshake_a_refusing_greeting_and_a_dropped_message() {
    let hop = NextHop::builder().fail_handshake().start().await;
    let c = before_tls(hop.addr).await;
    assert!(c.try_upgrade(common::client_tls_config()).await.is_err());
    assert_eq!(hop.next_session().await.end, End::ServerClosed);

    let hop = NextHop::builder().greeting("421 4.3.2 Busy").start().await;
    let mut c = Client::connect(hop.addr).await;
    assert_eq!(c.read_to_close().await, "421 4.3.2 Busy\r\n");

    let hop = NextHop::builder().drop_after(10).start().await;
    let mut c = Client::connect(hop.addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@client.test>").await;
    c.cmd("RCPT TO:<b@next.test>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: a long enough line\r\n").await;
    assert!(c.closed().await);
    let s = hop.next_session().await;
    assert_eq!(s.end, End::Dropped);
    assert!(s.messages.is_empty());
}
