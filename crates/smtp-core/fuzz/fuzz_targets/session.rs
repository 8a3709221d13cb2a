//! The whole inbound session against a scripted backend: whatever the client sends, in
//! whatever pieces, the backend receives only canonical SMTP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp_core::data::{BareNewlines, LongLines};
use smtp_core::inbound::Hop;
use smtp_core::testing::{check_backend_stream, test_config, AutoBackend, Harness};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let mut cfg = test_config();
    cfg.max_message_size = 4096;
    cfg.bare_newlines = if mode & 1 == 0 { BareNewlines::Reject } else { BareNewlines::Normalize };
    cfg.require_tls = mode & 2 != 0;
    cfg.long_lines = if mode & 4 == 0 { LongLines::Fold } else { LongLines::Reject };
    // The encrypted hop and XCLIENT on every backend connection.
    let hop = mode & 8 != 0;
    cfg.hop = Hop { starttls: hop, xclient: hop };
    let split = usize::from(mode >> 4).max(1);
    let mut h = Harness::new(cfg);
    if hop {
        h.hop_tls = Some(h.tls_info.clone());
    }
    let mut backend = AutoBackend::default();
    backend.hop = hop;
    backend.serve(&mut h);
    for chunk in input.chunks(split) {
        if h.closed {
            break;
        }
        h.client_says(chunk);
        backend.serve(&mut h);
    }
    for conn in &backend.connections {
        if let Err(e) = check_backend_stream(conn) {
            panic!("{e}: {:?}", String::from_utf8_lossy(conn));
        }
    }
});
