//! Round-trip properties: valid commands survive serialise-then-parse, and any line that
//! parses re-serialises to clean, canonical bytes that parse to the same command.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;

fn ser(c: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    c.write_to(&mut out);
    out.to_vec()
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9]([A-Za-z0-9.-]{0,40}[A-Za-z0-9])?",
        "\\[[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\]",
        "\\[IPv6:[0-9a-f:]{2,39}\\]",
        "[a-zäöü]{1,20}\\.[a-z]{2,6}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let local = prop_oneof![
        "[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,40}",
        "\"[A-Za-z0-9 .,@<>]{0,20}\"".prop_map(|s| s.replace(['<', '>'], "_")),
        "\"([a-z ]|\\\\[\"\\\\]){0,10}\"",
        "[a-zé]{1,10}",
    ];
    let route = prop_oneof![
        Just(String::new()),
        "(@[a-z]{1,8}\\.[a-z]{2,3},){0,2}@[a-z]{1,8}:"
    ];
    prop_oneof![
        (route, local, domain()).prop_map(|(r, l, d)| format!("{r}{l}@{d}")),
        Just("Postmaster".to_string()),
    ]
    .prop_filter("RFC 5321 path length", |p| p.len() <= 256)
}

fn params() -> impl Strategy<Value = Vec<Param>> {
    let value = prop_oneof!["[!-<>-~]{1,20}", "[a-zé;,+]{1,10}"];
    let one = ("[A-Za-z0-9][A-Za-z0-9-]{0,10}", proptest::option::of(value))
        .prop_map(|(keyword, value)| Param { keyword, value });
    proptest::collection::vec(one, 0..=16)
}

fn free_text() -> impl Strategy<Value = String> {
    "[!-~é]([ -~é]{0,30}[!-~é])?"
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        domain().prop_map(Command::Ehlo),
        domain().prop_map(Command::Helo),
        (prop_oneof![Just(String::new()), path()], params())
            .prop_map(|(from, params)| Command::Mail { from, params }),
        (path(), params()).prop_map(|(to, params)| Command::Rcpt { to, params }),
        Just(Command::Data),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Rset),
        Just(Command::Noop),
        Just(Command::Quit),
        Just(Command::StartTls),
        (
            "[A-Z0-9_-]{1,20}",
            proptest::option::of(prop_oneof![
                Just("=".to_string()),
                "[A-Za-z0-9+/]{1,60}={0,2}"
            ])
        )
            .prop_map(|(mechanism, initial)| Command::Auth { mechanism, initial }),
        free_text().prop_map(Command::Vrfy),
        free_text().prop_map(Command::Expn),
        proptest::option::of("[!-~]{1,12}").prop_map(Command::Help),
        free_text().prop_map(Command::Etrn),
    ]
}

/// Lines that often get past the verb: a verb and fragments of real and hostile arguments,
/// MAIL/RCPT/BDAT/AUTH shapes built from likely pieces, and now and then one random byte
/// inserted anywhere.
fn line() -> impl Strategy<Value = Vec<u8>> {
    const FRAGMENTS: &[&[u8]] = &[
        b" ",
        b"  ",
        b"FROM:",
        b"to:",
        b"<",
        b">",
        b"a@b",
        b"\"q x\"",
        b"\\",
        b"@r,@s:",
        b"SIZE=10",
        b"BODY=8BITMIME",
        b"x-y",
        b"=",
        b"LAST",
        b"123",
        b"PLAIN",
        b"dGVzdA==",
        "\u{e9}".as_bytes(),
        b"\xff",
        b"\r",
        b"\n",
        b"\0",
        b"\t",
        b":",
    ];
    const PATH: &[&[u8]] = &[
        b"a",
        b"@",
        b"b.example",
        b"\"q x\"",
        b"\\",
        b"\\\"",
        b"@r,@s:",
        "\u{e9}".as_bytes(),
        b".",
        b"\"",
        b" ",
        b"<",
        b">",
    ];
    const PARAMS: &[&[u8]] = &[
        b" SIZE=10",
        b" BODY=8BITMIME",
        b" X",
        b" x-y=\xc3\xa9",
        b"=",
        b" ",
        b"  ",
        b" SMTPUTF8",
        b" -A",
    ];
    const ARGS: &[&[u8]] = &[
        b"123",
        b" LAST",
        b"last",
        b"PLAIN",
        b" dGVzdA==",
        b" =",
        b"=",
        b"x",
        b" ",
        b"0",
    ];
    fn pieces(from: &'static [&'static [u8]], n: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(from), 0..n).prop_map(|p| p.concat())
    }
    let verb = prop_oneof![
        proptest::sample::select(Verb::ALL.to_vec())
            .prop_map(|v| v.as_str().to_ascii_lowercase().into_bytes()),
        proptest::sample::select(Verb::ALL.to_vec()).prop_map(|v| v.as_str().as_bytes().to_vec()),
    ];
    let path_cmd =
        proptest::sample::select(vec!["MAIL FROM:", "mail from: ", "RCPT TO:", "Rcpt To: "]);
    let shaped = prop_oneof![
        (verb, pieces(FRAGMENTS, 12)).prop_map(|(v, t)| [v, b" ".to_vec(), t].concat()),
        (path_cmd, pieces(PATH, 6), pieces(PARAMS, 5)).prop_map(|(c, p, ps)| [
            c.as_bytes(),
            b"<",
            &p,
            b">",
            &ps
        ]
        .concat()),
        (
            proptest::sample::select(vec!["BDAT ", "AUTH ", "bdat ", "auth "]),
            pieces(ARGS, 4)
        )
            .prop_map(|(c, a)| [c.as_bytes(), &a].concat()),
    ];
    let mutated = (
        shaped,
        proptest::option::of((any::<u8>(), any::<prop::sample::Index>())),
    )
        .prop_map(|(mut line, insert)| {
            if let Some((byte, at)) = insert {
                let at = at.index(line.len() + 1);
                line.insert(at, byte);
            }
            line
        });
    prop_oneof![1 => proptest::collection::vec(any::<u8>(), 0..40), 6 => mutated]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn valid_commands_round_trip(cmd in command()) {
        let wire = ser(&cmd);
        prop_assert!(wire.ends_with(b"\r\n"));
        prop_assert_eq!(parse_command(&wire[..wire.len() - 2]), Ok(cmd));
    }

    #[test]
    fn parsed_lines_reserialise_cleanly(input in line()) {
        if let Ok(cmd) = parse_command(&input) {
            let wire = ser(&cmd);
            let body = &wire[..wire.len() - 2];
            prop_assert_eq!(&wire[wire.len() - 2..], b"\r\n");
            prop_assert!(!body.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0), "{:?}", wire);
            // The canonical form is never longer than what the client sent, so a line that
            // passed the reader's cap still fits it.
            prop_assert!(wire.len() <= input.len() + 2);
            prop_assert_eq!(parse_command(body), Ok(cmd));
        }
    }
}
