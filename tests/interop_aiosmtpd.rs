//! Interoperability with Python's aiosmtpd as the legacy backend: the real `smtp-sidecar`
//! binary in front of aiosmtpd (Debian's python3-aiosmtpd, tests/common/aiosmtpd.rs), which
//! stores each message's DATA exactly as it arrived, so what the client sent and what the
//! backend got compare byte for byte with nothing to strip. The client is the tests' own, on
//! STARTTLS (tests/common/legacy_backend.rs). A missing aiosmtpd is a failure, never a skip.
//!
//! - delivery: leading dots unstuffed exactly once, the backend's STARTTLS never shown to the
//!   client (nor its certificate), the hop to it plaintext;
//! - smuggling under `bare_newlines: reject`: each bogus end of data refused with the SPEC's
//!   reply and nothing stored, the next message in the session delivered alone;
//! - under `normalize`: each attempt stored as one message with the smuggled lines as body text;
//! - the sidecar's encrypted hop to it (STARTTLS and implicit, verified).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::aiosmtpd::{Aiosmtpd, Stored, Tls};
use common::binary::{start_binary, Binary};
use common::legacy_backend::{
    assert_bytes, ehlo, replies, smuggling_attempts, starttls_session, stuffed, transaction,
    upgrade, Session, FROM, MESSAGE, NORMALIZED, REFUSED, SMUGGLES, TO,
};
use common::pki::{implicit_presented, Pki, Spec};
use common::{config_yaml, Client};
use serde_json::json;

/// aiosmtpd's EHLO reply, and what the client is shown of it through the sidecar.
const EHLO: &str = "250-legacy.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n";
const EHLO_PLAIN: &str = "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                          250-HELP\r\n250 STARTTLS\r\n";
const EHLO_TLS: &str = "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                        250 HELP\r\n";

/// Replies to a transaction aiosmtpd accepts.
const ACCEPTED: [&str; 4] = [
    "250 OK\r\n",
    "250 OK\r\n",
    "354 End data with <CR><LF>.<CR><LF>\r\n",
    "250 2.0.0 Stored\r\n",
];

/// A STARTTLS session through the sidecar, with these policy lines, to `backend`: the
/// sidecar (kept for its log, should a test fail) and what the client saw.
async fn session(backend: &Aiosmtpd, policy: &str, data: &[Vec<u8>]) -> (Binary, Session) {
    let sidecar = start_binary(&config_yaml(backend.addr, "starttls", policy));
    let session = starttls_session(sidecar.addr("inbound").unwrap(), data).await;
    (sidecar, session)
}

/// `stored` is `data` from the shared client's envelope, over a plaintext hop unless `tls`.
fn assert_stored(stored: &Stored, data: &[u8], tls: bool) {
    assert_bytes(&stored.data, data);
    let envelope = json!({"helo": "client.test", "mail_from": FROM, "rcpt_tos": [TO], "tls": tls});
    assert_eq!(stored.envelope, envelope);
}

#[tokio::test]
async fn aiosmtpd_backend_starttls_delivery() {
    let pki = Pki::new("aiosmtpd-pki");
    let leaf = pki.leaf("legacy", Spec::ca(&["legacy.test"]));
    let backend = Aiosmtpd::start(Tls::Starttls(&leaf.cert, &leaf.key));
    // The backend offers STARTTLS itself: what the client must never be shown.
    let direct = format!("{EHLO}250-STARTTLS\r\n250 HELP\r\n");
    assert_eq!(ehlo(backend.addr).await, direct);

    let (_sidecar, session) = session(&backend, "", &[stuffed(MESSAGE)]).await;
    assert_eq!(session.ehlo_plain, EHLO_PLAIN);
    assert_eq!(session.ehlo_tls, EHLO_TLS);
    assert_eq!(session.replies, replies(ACCEPTED, &[ACCEPTED[3]]));
    assert_stored(&backend.stored_when(1)[0], MESSAGE, false);
}

#[tokio::test]
async fn aiosmtpd_backend_smuggling_refused() {
    let backend = Aiosmtpd::start(Tls::None);
    let mut data = smuggling_attempts();
    data.push(stuffed(MESSAGE));
    let (_sidecar, session) = session(&backend, "      bare_newlines: reject\n", &data).await;
    let ends = [REFUSED, REFUSED, REFUSED, ACCEPTED[3]];
    assert_eq!(session.replies, replies(ACCEPTED, &ends));
    // Only the clean message: nothing of the refused ones, smuggled or not.
    assert_stored(&backend.stored_when(1)[0], MESSAGE, false);
}

#[tokio::test]
async fn aiosmtpd_backend_smuggling_normalized_into_body() {
    let backend = Aiosmtpd::start(Tls::None);
    let policy = "      bare_newlines: normalize\n";
    let (_sidecar, session) = session(&backend, policy, &smuggling_attempts()).await;
    let ends = [ACCEPTED[3]; SMUGGLES.len()];
    assert_eq!(session.replies, replies(ACCEPTED, &ends));
    for stored in backend.stored_when(SMUGGLES.len()) {
        assert_stored(&stored, NORMALIZED, false);
    }
}

/// The fixture's own TLS, for the tests of the sidecar's encrypted hop: its certificate on
/// implicit TLS and on STARTTLS, and a message over the latter recorded as encrypted.
#[tokio::test]
async fn aiosmtpd_backend_fixture_tls() {
    let pki = Pki::new("aiosmtpd-pki");
    let leaf = pki.leaf("legacy", Spec::ca(&["legacy.test"]));
    let implicit = Aiosmtpd::start(Tls::Implicit(&leaf.cert, &leaf.key));
    assert_eq!(implicit_presented(implicit.addr, None).await, leaf.der);

    let backend = Aiosmtpd::start(Tls::Starttls(&leaf.cert, &leaf.key));
    let mut c = Client::connect(backend.addr).await;
    assert!(c.reply().await.starts_with("220 legacy.test "));
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 Ready to start TLS\r\n");
    let (mut c, certificate) = upgrade(c).await;
    assert_eq!(certificate, leaf.der);
    // aiosmtpd offers AUTH inside TLS only.
    let offered = format!("{EHLO}250-AUTH LOGIN PLAIN\r\n250 HELP\r\n");
    assert_eq!(c.cmd("EHLO client.test").await, offered);
    assert_eq!(transaction(&mut c, &stuffed(MESSAGE)).await, ACCEPTED);
    assert_stored(&backend.stored_when(1)[0], MESSAGE, true);
}

/// The sidecar's encrypted hop to aiosmtpd (Python's TLS stack), STARTTLS and implicit TLS,
/// verified against the test CA and the server's IP address: the message arrives over TLS
/// (aiosmtpd says so in the envelope), byte for byte.
#[tokio::test]
async fn aiosmtpd_encrypted_hop() {
    let pki = Pki::new("aiosmtpd-hop-pki");
    let ca = pki.dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let leaf = pki.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"]));
    for (hop, tls) in [
        ("starttls", Tls::Starttls(&leaf.cert, &leaf.key)),
        ("implicit", Tls::Implicit(&leaf.cert, &leaf.key)),
    ] {
        let backend = Aiosmtpd::start(tls);
        let yaml = config_yaml(backend.addr, "starttls", "")
            .replace(
                "      connect_timeout: 2s\n",
                &format!("      connect_timeout: 2s\n      tls: {hop}\n      health_check_interval: 1h\n"),
            )
            .replace(
                "listeners:\n",
                &format!(
                    "trust: {{system_roots: false, ca_files: [\"{}\"]}}\nlisteners:\n",
                    ca.display()
                ),
            );
        let sidecar = start_binary(&yaml);
        let session = starttls_session(sidecar.addr("inbound").unwrap(), &[stuffed(MESSAGE)]).await;
        // After its STARTTLS aiosmtpd offers AUTH (not on its implicit-TLS port), and the
        // client, inside TLS itself, is shown it.
        let ehlo = match hop {
            "starttls" => EHLO_TLS.replace("250 HELP", "250-AUTH LOGIN PLAIN\r\n250 HELP"),
            _ => EHLO_TLS.to_owned(),
        };
        assert_eq!(session.ehlo_tls, ehlo, "{hop}");
        assert_eq!(session.replies, replies(ACCEPTED, &[ACCEPTED[3]]), "{hop}");
        assert_stored(&backend.stored_when(1)[0], MESSAGE, true);
    }
}
