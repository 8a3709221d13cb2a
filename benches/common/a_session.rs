//! One workload-A session's SMTP work in memory (`smtp_core::testing::Harness`, no sockets, no
//! TLS), shared by `benches/session.rs` (its time) and `benches/allocations.rs` (its
//! allocations): the backend's greeting, EHLO, STARTTLS, EHLO again, MAIL, RCPT, DATA, a 2 KiB
//! message, QUIT.

use smtp_core::testing::{test_config, Harness};

const BACKEND_EHLO: &[u8] =
    b"250-legacy.test\r\n250-PIPELINING\r\n250-SIZE 36700160\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

pub fn body() -> Vec<u8> {
    let mut body = b"From: <a@x.test>\r\nTo: <b@y.test>\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < 2048 {
        body.extend_from_slice(
            b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    body
}

/// One session; returns what reached the backend, so that nothing is optimised away.
pub fn session(received_header: bool, second_name: &[u8], body: &[u8]) -> usize {
    let mut cfg = test_config();
    cfg.received_header = received_header;
    let mut h = Harness::greeted(cfg);
    h.auto_tls = true;
    h.client_says(b"EHLO client.test\r\n");
    h.backend_says(BACKEND_EHLO);
    h.client_says(b"STARTTLS\r\n");
    h.client_says(second_name);
    if h.backend.ends_with(b"EHLO other.test\r\n") {
        h.backend_says(BACKEND_EHLO);
    }
    h.client_says(b"MAIL FROM:<a@x.test>\r\n");
    h.backend_says(b"250 2.1.0 Ok\r\n");
    h.client_says(b"RCPT TO:<b@y.test>\r\n");
    h.backend_says(b"250 2.1.5 Ok\r\n");
    h.client_says(b"DATA\r\n");
    h.backend_says(b"354 go\r\n");
    h.client_says(body);
    h.backend_says(b"250 2.0.0 Ok: queued\r\n");
    h.client_says(b"QUIT\r\n");
    assert!(h.closed, "the dialogue went through");
    h.backend.len() + h.client.len()
}
