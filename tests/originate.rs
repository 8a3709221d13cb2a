//! Originate mode end to end: a legacy MTA (the test client) relays to the sidecar, which
//! delivers to a test next hop over real TLS on 127.0.0.1 as the domain's level demands.

mod common;

use common::next_hop::{Cert, NextHop, NextHopPki, RunningNextHop};
use common::{start, Client};

/// An originate listener to `next_hop` with `policy` lines (indented 6 spaces).
fn originate_yaml(pki: &NextHopPki, next_hop: &str, policy: &str) -> String {
    format!(
        "hostname: mx.test\n\
         shutdown_grace: 2s\n\
         {trust}\
         listeners:\n\
         \x20 - name: outbound\n\
         \x20   mode: originate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   next_hop: \"{next_hop}\"\n\
         \x20   policy:\n\
         \x20     received_header: false\n\
         {policy}",
        trust = pki.trust_yaml()
    )
}

/// EHLO, MAIL, RCPT, DATA and a body through the sidecar; the replies to RCPT and to the
/// end of data.
async fn relay(client: &mut Client, rcpt: &str) -> (String, Option<String>) {
    assert!(client.reply().await.starts_with("220 mx.test"));
    assert!(client
        .cmd("EHLO legacy.test")
        .await
        .starts_with("250-mx.test"));
    assert_eq!(client.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let rcpt_reply = client.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !rcpt_reply.starts_with("250") {
        return (rcpt_reply, None);
    }
    assert!(client.cmd("DATA").await.starts_with("354"));
    client
        .send(b"Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\n")
        .await;
    (rcpt_reply, Some(client.reply().await))
}

async fn next_hop(pki: &NextHopPki, cert: Cert) -> RunningNextHop {
    NextHop::builder()
        .host("relay.test")
        .starttls(pki, cert)
        .start()
        .await
}

#[tokio::test]
async fn verify_delivers_over_tls_byte_exact() {
    let pki = NextHopPki::new();
    let hop = next_hop(&pki, Cert::Valid).await;
    let relay_to = format!("relay.test:{}", hop.addr.port());
    // relay.test must resolve: the relay is given by address, its name checked by `verify`.
    let yaml = originate_yaml(&pki, &hop.addr.to_string(), "      default: encrypt\n");
    let _ = relay_to;
    let sidecar = start(&yaml).await;
    let mut client = Client::connect(sidecar.addr("outbound").unwrap()).await;
    let (rcpt, eod) = relay(&mut client, "b@y.test").await;
    assert_eq!(rcpt, "250 2.1.5 Ok\r\n");
    assert_eq!(eod.as_deref(), Some("250 2.0.0 Ok: queued\r\n"));
    let s = hop.next_session().await;
    assert!(s.tls.is_some(), "delivered over TLS");
    assert_eq!(s.messages.len(), 1);
    assert_eq!(s.messages[0].data, b"Subject: t\r\n\r\n..dot\r\nbody\r\n");
    assert_eq!(
        String::from_utf8_lossy(&s.plaintext),
        "EHLO mx.test\r\nSTARTTLS\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&s.encrypted),
        "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
         Subject: t\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n"
    );
}
