//! A 1 MiB message body relayed in memory (`smtp_core::session::Machine`, no sockets, no
//! TLS), the way the driver hands it over in workload Bfast: TLS records of 16 KiB, eight to a
//! read (the driver reads 128 KiB at a time), the write actions of each read taken (and dropped, as a finished write drops them)
//! before the next. Shared by `benches/body.rs` (its time) and `benches/allocations.rs` (its
//! allocations).

use smtp_core::session::{Action, Leg, Machine};
use smtp_core::testing::{test_config, Harness};

const RECORD: usize = 16 * 1024;
const RECORDS_PER_READ: usize = 8;

/// 1 MiB of 78-octet lines, then the end of data.
pub fn body() -> Vec<u8> {
    let line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n";
    let mut body = Vec::with_capacity((1 << 20) + line.len() + 3);
    while body.len() < 1 << 20 {
        body.extend_from_slice(line);
    }
    body.extend_from_slice(b".\r\n");
    body
}

/// A session that has just answered DATA with 354, with the Received header on (the
/// default).
pub fn in_data() -> Harness {
    let mut cfg = test_config();
    cfg.received_header = true;
    let mut h = Harness::greeted(cfg);
    h.ehlo();
    h.transaction();
    h
}

/// Relay the body; returns the octets written to the backend.
pub fn relay(mut h: Harness, body: &[u8]) -> usize {
    let now = h.now;
    let mut written = 0;
    for read in body.chunks(RECORD * RECORDS_PER_READ) {
        for record in read.chunks(RECORD) {
            h.session.handle_bytes(Leg::Client, record, now);
        }
        while let Some(action) = h.session.poll_action() {
            if let Action::Write(Leg::Backend, bytes) = action {
                written += bytes.len();
            }
        }
    }
    assert!(
        written > body.len(),
        "the header and the body reached the backend"
    );
    written
}
