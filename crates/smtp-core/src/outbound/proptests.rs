//! Property test of the whole originate session: whatever the legacy MTA sends, in whatever
//! pieces, every next hop connection receives only canonical SMTP, and the client only
//! well-formed replies.

use proptest::prelude::*;

use super::Level;
use crate::data::{BareNewlines, LongLines};
use crate::proptest_support::{check_replies, piece};
use crate::testing::{check_backend_stream, test_originate_config, AutoBackend, Harness};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn next_hops_see_only_canonical_smtp(
        pieces in prop::collection::vec(piece(), 0..24),
        split in 1usize..64,
        normalize in any::<bool>(),
        reject_long in any::<bool>(),
        level in prop_oneof![Just(Level::None), Just(Level::May), Just(Level::Encrypt)],
    ) {
        let mut cfg = test_originate_config();
        cfg.max_message_size = 2000;
        cfg.policy.default = level;
        cfg.bare_newlines = if normalize { BareNewlines::Normalize } else { BareNewlines::Reject };
        cfg.long_lines = if reject_long { LongLines::Reject } else { LongLines::Fold };
        let mut h = Harness::originate(cfg);
        let mut next_hop = AutoBackend::default();
        let input: Vec<u8> = pieces.concat();
        for chunk in input.chunks(split) {
            if h.closed {
                break;
            }
            h.client_says(chunk);
            next_hop.serve(&mut h);
        }
        for (i, conn) in next_hop.connections.iter().enumerate() {
            if let Err(e) = check_backend_stream(conn) {
                return Err(TestCaseError::fail(format!("connection {i}: {e}\n{:?}", String::from_utf8_lossy(conn))));
            }
        }
        if let Err(e) = check_replies(&h.client) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The property above is only worth something if the scripted next hop takes messages.
#[test]
fn the_scripted_next_hop_takes_a_message() {
    let mut h = Harness::originate(test_originate_config());
    let mut next_hop = AutoBackend::default();
    h.client_says(b"EHLO a\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    next_hop.serve(&mut h);
    h.client_says(b"DATA\r\n");
    next_hop.serve(&mut h);
    h.client_says(b"hi\r\n.\r\n");
    next_hop.serve(&mut h);
    let client = String::from_utf8_lossy(&h.client).into_owned();
    assert!(
        client.ends_with("354 go\r\n250 2.0.0 queued\r\n"),
        "{client}"
    );
    assert_eq!(
        String::from_utf8_lossy(&next_hop.connections[0]),
        "EHLO mx.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
         hi\r\n.\r\nQUIT\r\n"
    );
}
