//! Parameter rules, table-driven: what each offered set lets through, byte for byte.

use super::*;

fn p(keyword: &str, value: Option<&str>) -> Param {
    Param {
        keyword: keyword.into(),
        value: value.map(Into::into),
    }
}

fn all() -> Offered {
    Offered {
        size: true,
        eight_bit_mime: true,
        dsn: true,
        smtputf8: true,
        auth: true,
    }
}

fn mail(params: &[Param], offered: Offered, authenticated: bool) -> Result<Vec<Param>, ParamError> {
    let mut params = params.to_vec();
    check_mail("x@evil.test", &mut params, offered, authenticated, 1000)?;
    Ok(params)
}

#[test]
fn nothing_offered_after_helo() {
    for param in [
        p("AUTH", Some("ceo@corp.test")),
        p("SIZE", Some("5")),
        p("BODY", Some("8BITMIME")),
        p("RET", Some("HDRS")),
        p("ENVID", Some("x")),
        p("SMTPUTF8", None),
    ] {
        assert_eq!(
            mail(std::slice::from_ref(&param), Offered::default(), false),
            Err(ParamError::Unsupported),
            "{param:?}"
        );
    }
    for param in [
        p("NOTIFY", Some("SUCCESS,FAILURE")),
        p("ORCPT", Some("rfc822;v@corp.test")),
    ] {
        let mail = MailParams { smtputf8: false };
        assert_eq!(
            check_rcpt("v@corp.test", &[param], Offered::default(), mail),
            Err(ParamError::Unsupported)
        );
    }
}

#[test]
fn each_parameter_needs_its_own_extension() {
    let only = |f: fn(&mut Offered)| {
        let mut o = Offered::default();
        f(&mut o);
        o
    };
    let size = only(|o| o.size = true);
    assert!(mail(&[p("SIZE", Some("5"))], size, false).is_ok());
    assert_eq!(
        mail(&[p("BODY", Some("8BITMIME"))], size, false),
        Err(ParamError::Unsupported)
    );
    let dsn = only(|o| o.dsn = true);
    assert!(mail(
        &[p("RET", Some("HDRS")), p("ENVID", Some("a+2Bb"))],
        dsn,
        false
    )
    .is_ok());
    assert_eq!(
        mail(&[p("AUTH", Some("<>"))], dsn, false),
        Err(ParamError::Unsupported)
    );
    assert_eq!(
        mail(&[p("XFOO", None)], all(), false),
        Err(ParamError::Unsupported)
    );
    assert_eq!(
        mail(&[p("NOTIFY", Some("NEVER"))], all(), false),
        Err(ParamError::Unsupported)
    );
}

#[test]
fn auth_from_an_unauthenticated_client_becomes_empty() {
    let params = [p("AUTH", Some("ceo@corp.test"))];
    assert_eq!(mail(&params, all(), false), Ok(vec![p("AUTH", Some("<>"))]));
    assert_eq!(mail(&params, all(), true), Ok(params.to_vec()));
}

#[test]
fn repeated_or_malformed_parameters() {
    let invalid = [
        vec![p("SIZE", Some("10")), p("SIZE", Some("99999999999"))],
        vec![p("size", Some("10")), p("SIZE", Some("10"))],
        vec![p("SIZE", None)],
        vec![p("SIZE", Some("1e3"))],
        vec![p("SIZE", Some("123456789012345678901"))],
        vec![p("BODY", Some("9BIT"))],
        vec![p("SMTPUTF8", Some("yes"))],
        vec![p("RET", Some("ALL"))],
        vec![p("ENVID", Some(&"e".repeat(101)))],
        vec![p("ENVID", Some("a+zz"))],
        vec![p("ENVID", Some("a=b"))],
        vec![p("AUTH", None)],
    ];
    for params in invalid {
        assert_eq!(
            mail(&params, all(), false),
            Err(ParamError::Invalid),
            "{params:?}"
        );
    }
    assert_eq!(
        mail(&[p("BODY", Some("BINARYMIME"))], all(), false),
        Err(ParamError::Unsupported)
    );
    let tx = MailParams { smtputf8: false };
    for params in [
        vec![p("NOTIFY", Some("NEVER,SUCCESS"))],
        vec![p("NOTIFY", Some("SUCCESS,SUCCESS"))],
        vec![p("NOTIFY", Some(""))],
        vec![p("ORCPT", Some("rfc822"))],
        vec![p("ORCPT", Some(";x@y"))],
        vec![
            p("ORCPT", Some("rfc822;a@b")),
            p("orcpt", Some("rfc822;a@b")),
        ],
    ] {
        assert_eq!(
            check_rcpt("v@y", &params, all(), tx),
            Err(ParamError::Invalid),
            "{params:?}"
        );
    }
    let good = [
        p("NOTIFY", Some("success,DELAY")),
        p("ORCPT", Some("rfc822;v@corp.test")),
    ];
    assert_eq!(check_rcpt("v@y", &good, all(), tx), Ok(()));
}

#[test]
fn size_over_the_limit() {
    assert_eq!(
        mail(&[p("SIZE", Some("1001"))], all(), false),
        Err(ParamError::TooBig)
    );
    assert!(mail(&[p("SIZE", Some("1000"))], all(), false).is_ok());
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let mut none: Vec<Param> = Vec::new();
    assert_eq!(
        check_mail("jörg@bücher.test", &mut none, all(), false, 1000),
        Err(ParamError::NonAscii)
    );
    let mut utf8 = vec![p("SMTPUTF8", None)];
    let tx = check_mail("jörg@bücher.test", &mut utf8, all(), false, 1000).unwrap();
    assert_eq!(check_rcpt("zoë@y.test", &[], all(), tx), Ok(()));
    let ascii = MailParams { smtputf8: false };
    assert_eq!(
        check_rcpt("zoë@y.test", &[], all(), ascii),
        Err(ParamError::NonAscii)
    );
    let mut not_offered = vec![p("SMTPUTF8", None)];
    let o = Offered {
        smtputf8: false,
        ..all()
    };
    assert_eq!(
        check_mail("jörg@bücher.test", &mut not_offered, o, false, 1000),
        Err(ParamError::Unsupported)
    );
}

/// The longest MAIL and RCPT these rules let through fit in a 1000-octet line buffer, so a
/// legacy backend reading lines with fgets(1000) never splits a command of ours.
#[test]
fn the_longest_commands_we_forward_fit_in_1000_octets() {
    use crate::command::Command;
    let path = format!("{}@x.test", "a".repeat(256 - 7));
    let mut mail_params = vec![
        p("SIZE", Some("18446744073709551615")),
        p("BODY", Some("8BITMIME")),
        p("SMTPUTF8", None),
        p("RET", Some("HDRS")),
        p("ENVID", Some(&"e".repeat(100))),
        p("AUTH", Some(&"a".repeat(500))),
    ];
    check_mail(&path, &mut mail_params, all(), true, u64::MAX).unwrap();
    let rcpt_params = vec![
        p("NOTIFY", Some("SUCCESS,FAILURE,DELAY")),
        p("ORCPT", Some(&format!("rfc822;{}", "o".repeat(493)))),
    ];
    check_rcpt(&path, &rcpt_params, all(), MailParams { smtputf8: true }).unwrap();
    for cmd in [
        Command::Mail {
            from: path.clone(),
            params: mail_params,
        },
        Command::Rcpt {
            to: path.clone(),
            params: rcpt_params,
        },
    ] {
        let mut out = bytes::BytesMut::new();
        cmd.write_to(&mut out);
        assert!(out.len() <= 1000, "{} octets", out.len());
    }
    let too_long = [p("AUTH", Some(&"a".repeat(501)))];
    assert_eq!(mail(&too_long, all(), true), Err(ParamError::Invalid));
}
