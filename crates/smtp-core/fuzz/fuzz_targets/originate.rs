//! The whole originate session against a scripted next hop: whatever the legacy MTA sends,
//! in whatever pieces, every next hop connection receives only canonical SMTP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_core::data::{BareNewlines, LongLines};
use smtp_core::outbound::Level;
use smtp_core::testing::{check_backend_stream, test_originate_config, AutoBackend, Harness};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let mut cfg = test_originate_config();
    cfg.max_message_size = 4096;
    cfg.bare_newlines = if mode & 1 == 0 { BareNewlines::Reject } else { BareNewlines::Normalize };
    cfg.long_lines = if mode & 2 == 0 { LongLines::Fold } else { LongLines::Reject };
    cfg.policy.default = if mode & 4 == 0 { Level::May } else { Level::None };
    let split = usize::from(mode >> 3).max(1);
    let mut h = Harness::originate(cfg);
    let mut next_hop = AutoBackend::default();
    for chunk in input.chunks(split) {
        if h.closed {
            break;
        }
        h.client_says(chunk);
        next_hop.serve(&mut h);
    }
    for conn in &next_hop.connections {
        if let Err(e) = check_backend_stream(conn) {
            panic!("{e}: {:?}", String::from_utf8_lossy(conn));
        }
    }
});
