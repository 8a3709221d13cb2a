//! Fuzz the command parser: any line that parses serialises to clean canonical bytes (one
//! CRLF at the end, no CR, LF or NUL before it, never longer than the input) that parse back
//! to the same command.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use smtp_core::command::parse_command;

fuzz_target!(|data: &[u8]| {
    let Ok(command) = parse_command(data) else {
        return;
    };
    let mut wire = BytesMut::new();
    command.write_to(&mut wire);
    let Some(body) = wire.strip_suffix(b"\r\n") else {
        panic!("no CRLF at the end of {wire:?}");
    };
    assert!(
        !body.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        "{wire:?}"
    );
    assert!(wire.len() <= data.len() + 2);
    assert_eq!(parse_command(body), Ok(command));
});
