//! Byte-exact parse and serialise tables and hostile input.

use bytes::BytesMut;

use super::*;
use crate::line::{MAX_COMMAND_LINE, MAX_EXTENDED_LINE};

fn param(k: &str, v: Option<&str>) -> Param {
    Param {
        keyword: k.into(),
        value: v.map(Into::into),
    }
}

fn mail(from: &str, params: Vec<Param>) -> Command {
    Command::Mail {
        from: from.into(),
        params,
    }
}

fn rcpt(to: &str, params: Vec<Param>) -> Command {
    Command::Rcpt {
        to: to.into(),
        params,
    }
}

fn ser(c: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    c.write_to(&mut out);
    out.to_vec()
}

/// (input line, expected command, canonical serialisation)
#[test]
fn parse_and_serialise_table() {
    let cases: Vec<(&[u8], Command, &[u8])> = vec![
        (
            b"EHLO client.example",
            Command::Ehlo("client.example".into()),
            b"EHLO client.example\r\n",
        ),
        (
            b"ehlo [192.0.2.1]",
            Command::Ehlo("[192.0.2.1]".into()),
            b"EHLO [192.0.2.1]\r\n",
        ),
        (
            b"EHLO [IPv6:2001:db8::1]",
            Command::Ehlo("[IPv6:2001:db8::1]".into()),
            b"EHLO [IPv6:2001:db8::1]\r\n",
        ),
        (
            "HeLo bücher.example".as_bytes(),
            Command::Helo("bücher.example".into()),
            "HELO bücher.example\r\n".as_bytes(),
        ),
        (b"EHLO a ", Command::Ehlo("a".into()), b"EHLO a\r\n"),
        (
            b"MAIL FROM:<a@b.example>",
            mail("a@b.example", vec![]),
            b"MAIL FROM:<a@b.example>\r\n",
        ),
        (
            b"mail from: <a@b>",
            mail("a@b", vec![]),
            b"MAIL FROM:<a@b>\r\n",
        ),
        (b"MAIL FROM:<>", mail("", vec![]), b"MAIL FROM:<>\r\n"),
        (
            b"MAIL FROM:<a@b> SIZE=1000 body=8BITMIME SMTPUTF8",
            mail(
                "a@b",
                vec![
                    param("SIZE", Some("1000")),
                    param("body", Some("8BITMIME")),
                    param("SMTPUTF8", None),
                ],
            ),
            b"MAIL FROM:<a@b> SIZE=1000 body=8BITMIME SMTPUTF8\r\n",
        ),
        (
            b"MAIL FROM:<\"john doe\"@b>",
            mail("\"john doe\"@b", vec![]),
            b"MAIL FROM:<\"john doe\"@b>\r\n",
        ),
        (
            b"MAIL FROM:<\"a\\\"b\"@c>",
            mail("\"a\\\"b\"@c", vec![]),
            b"MAIL FROM:<\"a\\\"b\"@c>\r\n",
        ),
        (
            b"MAIL FROM:<@a,@b:user@d>",
            mail("@a,@b:user@d", vec![]),
            b"MAIL FROM:<@a,@b:user@d>\r\n",
        ),
        (
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8".as_bytes(),
            mail("jörg@bücher.example", vec![param("SMTPUTF8", None)]),
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".as_bytes(),
        ),
        (
            b"RCPT TO:<Postmaster>",
            rcpt("Postmaster", vec![]),
            b"RCPT TO:<Postmaster>\r\n",
        ),
        (
            b"rcpt to: <x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y",
            rcpt(
                "x@y",
                vec![
                    param("NOTIFY", Some("SUCCESS,FAILURE")),
                    param("ORCPT", Some("rfc822;x@y")),
                ],
            ),
            b"RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y\r\n",
        ),
        (b"DATA", Command::Data, b"DATA\r\n"),
        (b"data ", Command::Data, b"DATA\r\n"),
        (b"RSET", Command::Rset, b"RSET\r\n"),
        (b"QUIT", Command::Quit, b"QUIT\r\n"),
        (b"StartTLS", Command::StartTls, b"STARTTLS\r\n"),
        (b"NOOP", Command::Noop, b"NOOP\r\n"),
        (b"NOOP anything at all", Command::Noop, b"NOOP\r\n"),
        (b"HELP", Command::Help(None), b"HELP\r\n"),
        (
            b"help MAIL",
            Command::Help(Some("MAIL".into())),
            b"HELP MAIL\r\n",
        ),
        (
            b"VRFY  Smith  ",
            Command::Vrfy("Smith".into()),
            b"VRFY Smith\r\n",
        ),
        (
            b"VRFY John Smith",
            Command::Vrfy("John Smith".into()),
            b"VRFY John Smith\r\n",
        ),
        (
            b"EXPN staff",
            Command::Expn("staff".into()),
            b"EXPN staff\r\n",
        ),
        (
            b"ETRN @example.com",
            Command::Etrn("@example.com".into()),
            b"ETRN @example.com\r\n",
        ),
        (
            b"BDAT 1000",
            Command::Bdat {
                size: 1000,
                last: false,
            },
            b"BDAT 1000\r\n",
        ),
        (
            b"bdat 0 last",
            Command::Bdat {
                size: 0,
                last: true,
            },
            b"BDAT 0 LAST\r\n",
        ),
        (
            b"BDAT 007 LAST",
            Command::Bdat {
                size: 7,
                last: true,
            },
            b"BDAT 7 LAST\r\n",
        ),
        (
            b"BDAT 18446744073709551615",
            Command::Bdat {
                size: u64::MAX,
                last: false,
            },
            b"BDAT 18446744073709551615\r\n",
        ),
        (
            b"AUTH PLAIN",
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: None,
            },
            b"AUTH PLAIN\r\n",
        ),
        (
            b"auth plain AGZvbwBiYXI=",
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGZvbwBiYXI=".into()),
            },
            b"AUTH PLAIN AGZvbwBiYXI=\r\n",
        ),
        (
            b"AUTH EXTERNAL =",
            Command::Auth {
                mechanism: "EXTERNAL".into(),
                initial: Some("=".into()),
            },
            b"AUTH EXTERNAL =\r\n",
        ),
        (
            b"AUTH SCRAM-SHA-256",
            Command::Auth {
                mechanism: "SCRAM-SHA-256".into(),
                initial: None,
            },
            b"AUTH SCRAM-SHA-256\r\n",
        ),
    ];
    for (input, want, wire) in cases {
        let got = parse_command(input);
        assert_eq!(
            got.as_ref(),
            Ok(&want),
            "parse {:?}",
            String::from_utf8_lossy(input)
        );
        assert_eq!(ser(&want), wire, "serialise {want:?}");
        assert!(
            wire.starts_with(want.verb().as_str().as_bytes()),
            "verb of {want:?}"
        );
    }
}

#[test]
fn errors_table() {
    use CommandError::{Parameter, Syntax, Unknown};
    let long_path = format!("MAIL FROM:<{}@b>", "a".repeat(255));
    let ok_path = format!("MAIL FROM:<{}@b>", "a".repeat(254));
    let long_domain = format!("EHLO {}", "d".repeat(256));
    let seventeen = format!("MAIL FROM:<a@b>{}", " X=1".repeat(17));
    let sixteen = format!("MAIL FROM:<a@b>{}", " X=1".repeat(16));
    let cases: Vec<(&[u8], Result<Verb, CommandError>)> = vec![
        (b"", Err(Unknown)),
        (b" ", Err(Unknown)),
        (b"XEXCH50 1 2", Err(Unknown)),
        (b"DATA2", Err(Unknown)),
        (b"MAIL:FROM:<a>", Err(Unknown)),
        (b" MAIL FROM:<a>", Err(Unknown)),
        (b"FOO\0", Err(Unknown)),
        (b"\0MAIL FROM:<a>", Err(Unknown)),
        // Control characters: the classic smuggling carriers.
        (b"MAIL FROM:<a>\r", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a\0b>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a>\rRCPT TO:<b>", Err(Syntax(Verb::Mail))),
        (b"MAIL\tFROM:<a>", Err(Syntax(Verb::Mail))),
        (b"QUIT\r", Err(Syntax(Verb::Quit))),
        (b"EHLO a\x7f", Err(Syntax(Verb::Ehlo))),
        (b"STARTTLS\0", Err(Syntax(Verb::StartTls))),
        (b"EHLO \xff\xfe", Err(Syntax(Verb::Ehlo))),
        // EHLO/HELO: exactly one token, at most 255 octets.
        (b"EHLO", Err(Syntax(Verb::Ehlo))),
        (b"EHLO a b", Err(Syntax(Verb::Ehlo))),
        (b"HELO", Err(Syntax(Verb::Helo))),
        (long_domain.as_bytes(), Err(Syntax(Verb::Ehlo))),
        // MAIL/RCPT.
        (b"MAIL", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:a@b", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a@b", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:a@b>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM <a@b>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:  <a@b>", Err(Syntax(Verb::Mail))),
        (b"MAIL TO:<a@b>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a b@c>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<<a@b>>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a<b@c>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<\"a>b\"@c>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<\"unterminated@c>", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a@b>SIZE=1", Err(Syntax(Verb::Mail))),
        (b"MAIL FROM:<a@b>  SIZE=1", Err(Parameter(Verb::Mail))),
        (
            b"MAIL FROM:<a@b> SIZE=1  BODY=7BIT",
            Err(Parameter(Verb::Mail)),
        ),
        (b"MAIL FROM:<a@b> SIZE=", Err(Parameter(Verb::Mail))),
        (b"MAIL FROM:<a@b> SIZE=1=2", Err(Parameter(Verb::Mail))),
        (b"MAIL FROM:<a@b> -X=1", Err(Parameter(Verb::Mail))),
        (b"MAIL FROM:<a@b> =1", Err(Parameter(Verb::Mail))),
        (long_path.as_bytes(), Err(Syntax(Verb::Mail))),
        (ok_path.as_bytes(), Ok(Verb::Mail)),
        (seventeen.as_bytes(), Err(Parameter(Verb::Mail))),
        (sixteen.as_bytes(), Ok(Verb::Mail)),
        (b"RCPT TO:<>", Err(Syntax(Verb::Rcpt))),
        (b"RCPT TO:", Err(Syntax(Verb::Rcpt))),
        (b"RCPT FROM:<a@b>", Err(Syntax(Verb::Rcpt))),
        (b"RCPT TO:<a@b> NOTIFY=", Err(Parameter(Verb::Rcpt))),
        (b"RCPT TO:<a@b> ", Ok(Verb::Rcpt)),
        (b"RCPT TO:<a@b>NOTIFY=NEVER", Err(Syntax(Verb::Rcpt))),
        // No-argument verbs.
        (b"DATA x", Err(Syntax(Verb::Data))),
        (b"RSET now", Err(Syntax(Verb::Rset))),
        (b"QUIT please", Err(Syntax(Verb::Quit))),
        (b"STARTTLS x", Err(Syntax(Verb::StartTls))),
        (b"HELP a b", Err(Syntax(Verb::Help))),
        (b"VRFY", Err(Syntax(Verb::Vrfy))),
        (b"EXPN  ", Err(Syntax(Verb::Expn))),
        (b"ETRN", Err(Syntax(Verb::Etrn))),
        // BDAT.
        (b"BDAT", Err(Syntax(Verb::Bdat))),
        (b"BDAT -1", Err(Syntax(Verb::Bdat))),
        (b"BDAT 1x", Err(Syntax(Verb::Bdat))),
        (b"BDAT 1 LASTX", Err(Syntax(Verb::Bdat))),
        (b"BDAT 1 LAST x", Err(Syntax(Verb::Bdat))),
        (b"BDAT 18446744073709551616", Err(Syntax(Verb::Bdat))),
        (b"BDAT 000000000000000000001", Err(Syntax(Verb::Bdat))),
        // AUTH.
        (b"AUTH", Err(Syntax(Verb::Auth))),
        (b"AUTH PL@IN", Err(Syntax(Verb::Auth))),
        (b"AUTH ABCDEFGHIJKLMNOPQRSTU", Err(Syntax(Verb::Auth))),
        (b"AUTH PLAIN a b", Err(Syntax(Verb::Auth))),
        (b"AUTH PLAIN ab=c", Err(Syntax(Verb::Auth))),
        (b"AUTH PLAIN a===", Err(Syntax(Verb::Auth))),
        (b"AUTH PLAIN ==", Err(Syntax(Verb::Auth))),
    ];
    for (input, want) in cases {
        let got = parse_command(input).map(|c| c.verb());
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn max_line_len() {
    assert_eq!(mail("a@b", vec![]).max_line_len(), MAX_COMMAND_LINE);
    assert_eq!(
        mail("a@b", vec![param("SIZE", Some("1"))]).max_line_len(),
        MAX_EXTENDED_LINE
    );
    assert_eq!(
        rcpt("a@b", vec![param("NOTIFY", Some("NEVER"))]).max_line_len(),
        MAX_EXTENDED_LINE
    );
    assert_eq!(rcpt("a@b", vec![]).max_line_len(), MAX_COMMAND_LINE);
    assert_eq!(
        Command::Auth {
            mechanism: "PLAIN".into(),
            initial: None
        }
        .max_line_len(),
        MAX_EXTENDED_LINE
    );
    assert_eq!(Command::Data.max_line_len(), MAX_COMMAND_LINE);
}

#[test]
fn hand_built_commands_cannot_inject_lines() {
    let evil = Command::Ehlo("a\r\nMAIL FROM:<x>\0".into());
    assert_eq!(ser(&evil), b"EHLO a  MAIL FROM:<x> \r\n");
    let evil = mail("a>\r\nRCPT TO:<b", vec![param("X\n", Some("\r"))]);
    assert_eq!(ser(&evil), b"MAIL FROM:<a>  RCPT TO:<b> X = \r\n");
}
