//! The nom grammars of command verbs and arguments: RFC 5321 §4.1.1 (verbs), §4.1.2 (paths,
//! esmtp-param), RFC 3030 §2 (BDAT), RFC 4954 §4 (AUTH). Input is one line already checked for
//! control characters and valid UTF-8 by `parse_command`, so these only decide shape.

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take_while, take_while1, take_while_m_n};
use nom::character::complete::{alpha1, char, satisfy};
use nom::combinator::{all_consuming, map_res, opt, recognize, verify};
use nom::multi::{many0_count, separated_list1};
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

use super::{Command, CommandError, Param, Verb};

type E<'a> = nom::error::Error<&'a str>;

/// RFC 5321 §4.5.3.1.2: a domain name is at most 255 octets.
const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets. Counted between the brackets, which
/// errs on the side of accepting what the RFC's own examples accept.
const MAX_PATH: usize = 256;
/// More parameters than any real extension set needs; each one is work for the backend's parser.
const MAX_PARAMS: usize = 16;
/// RFC 4422 §3.1: SASL mechanism names are 1 to 20 characters.
const MAX_MECHANISM: usize = 20;
/// RFC 3030 §2: chunk-size = 1*20DIGIT.
const MAX_SIZE_DIGITS: usize = 20;

/// The verb at the start of `line`, and what follows it.
pub(super) fn verb(line: &[u8]) -> Option<(&[u8], Verb)> {
    let parsed: IResult<&[u8], &[u8]> = alpha1(line);
    let (rest, word) = parsed.ok()?;
    // RFC 5321 §2.4: verbs are case-insensitive.
    let verb = Verb::ALL
        .into_iter()
        .find(|v| v.as_str().as_bytes().eq_ignore_ascii_case(word))?;
    Some((rest, verb))
}

/// The command for `verb` with `args` (already trimmed of surrounding spaces), or what is wrong
/// with them.
pub(super) fn arguments(verb: Verb, args: &str) -> Result<Command, CommandError> {
    let none = |cmd: Command| args.is_empty().then_some(cmd);
    let required = |f: fn(String) -> Command| (!args.is_empty()).then(|| f(args.to_owned()));
    let parsed = match verb {
        Verb::Ehlo => domain(args).map(Command::Ehlo),
        Verb::Helo => domain(args).map(Command::Helo),
        Verb::Mail => {
            let (from, params) = mail_rcpt(verb, args, "FROM:")?;
            Some(Command::Mail { from, params })
        }
        Verb::Rcpt => {
            let (to, params) = mail_rcpt(verb, args, "TO:")?;
            Some(Command::Rcpt { to, params })
        }
        Verb::Data => none(Command::Data),
        Verb::Rset => none(Command::Rset),
        Verb::Quit => none(Command::Quit),
        // RFC 3207 §4: "STARTTLS" takes no parameters (the session answers 501 5.5.4).
        Verb::StartTls => none(Command::StartTls),
        // RFC 5321 §4.1.1.9: a NOOP argument has no effect, so it is not forwarded.
        Verb::Noop => Some(Command::Noop),
        Verb::Help if args.is_empty() => Some(Command::Help(None)),
        Verb::Help => token(args).map(|t| Command::Help(Some(t))),
        // RFC 5321 §4.1.1.6, RFC 1985: a string, kept whole.
        Verb::Vrfy => required(Command::Vrfy),
        Verb::Expn => required(Command::Expn),
        Verb::Etrn => required(Command::Etrn),
        Verb::Bdat => full(args, bdat),
        Verb::Auth => full(args, auth),
    };
    parsed.ok_or(CommandError::Syntax(verb))
}

/// MAIL or RCPT: a bad path is a syntax error, a bad parameter list after a good path is an
/// invalid parameter (SPEC §4 tells the two apart).
fn mail_rcpt(
    verb: Verb,
    args: &str,
    keyword: &'static str,
) -> Result<(String, Vec<Param>), CommandError> {
    // The reverse-path may be null (`MAIL FROM:<>`), the forward-path not.
    let (rest, path) = path_arg(keyword, verb == Verb::Mail)
        .parse(args)
        .map_err(|_| CommandError::Syntax(verb))?;
    if rest.is_empty() {
        return Ok((path, Vec::new()));
    }
    let list = rest.strip_prefix(' ').ok_or(CommandError::Syntax(verb))?;
    let params = full(list, params).ok_or(CommandError::Parameter(verb))?;
    Ok((path, params))
}

/// Run `parser` over all of `input`.
fn full<'a, O>(
    input: &'a str,
    parser: impl Parser<&'a str, Output = O, Error = E<'a>>,
) -> Option<O> {
    all_consuming(parser).parse(input).ok().map(|(_, out)| out)
}

/// A printable character other than space; UTF-8 beyond ASCII is allowed (RFC 6531 §3.3).
fn printable(c: char) -> bool {
    !c.is_control() && c != ' '
}

/// One non-empty token of printable characters.
fn token(s: &str) -> Option<String> {
    (!s.is_empty() && s.chars().all(printable)).then(|| s.to_owned())
}

/// EHLO/HELO argument: a domain or address literal (RFC 5321 §4.1.1.1). Its inner syntax is
/// not checked: the backend only logs it, and it is a single clean token either way.
fn domain(s: &str) -> Option<String> {
    token(s).filter(|d| d.len() <= MAX_DOMAIN)
}

/// `FROM:<path>` or `TO:<path>` (RFC 5321 §4.1.1.2, §4.1.1.3), before the parameters. The
/// only leniency is one optional space after the colon, which many clients send.
fn path_arg<'a>(
    keyword: &'static str,
    allow_null: bool,
) -> impl Parser<&'a str, Output = String, Error = E<'a>> {
    (
        tag_no_case(keyword),
        opt(char(' ')),
        delimited(
            char('<'),
            verify(path, move |p: &str| {
                p.len() <= MAX_PATH && (allow_null || !p.is_empty())
            }),
            char('>'),
        ),
    )
        .map(|(_, _, path)| path.to_owned())
}

/// The content between `<` and `>`, possibly empty: runs of printable characters and quoted
/// strings. A source route (`@a,@b:user@d`, RFC 5321 §4.1.2 / Appendix C) is kept as part
/// of it. Spaces only inside a quoted string (RFC 5321 §4.1.2 Quoted-string); `<` and `>`
/// nowhere, so the path can never end early or nest on the backend's side.
fn path(i: &str) -> IResult<&str, &str> {
    let plain = take_while1(|c: char| printable(c) && !matches!(c, '<' | '>' | '"'));
    recognize(many0_count(alt((plain, quoted)))).parse(i)
}

/// A quoted string with quoted pairs (RFC 5321 §4.1.2 QcontentSMTP).
fn quoted(i: &str) -> IResult<&str, &str> {
    let qchar = |c: char| (printable(c) || c == ' ') && !matches!(c, '<' | '>');
    let qtext = take_while1(move |c: char| qchar(c) && !matches!(c, '"' | '\\'));
    let pair = recognize((char('\\'), satisfy(qchar)));
    recognize((char('"'), many0_count(alt((qtext, pair))), char('"'))).parse(i)
}

/// esmtp-param *(SP esmtp-param), at most [`MAX_PARAMS`].
fn params(i: &str) -> IResult<&str, Vec<Param>> {
    verify(separated_list1(char(' '), param), |ps: &Vec<Param>| {
        ps.len() <= MAX_PARAMS
    })
    .parse(i)
}

/// esmtp-keyword ["=" esmtp-value] (RFC 5321 §4.1.2); the value may be UTF-8 (RFC 6531 §3.3).
fn param(i: &str) -> IResult<&str, Param> {
    let keyword = recognize((
        satisfy(|c: char| c.is_ascii_alphanumeric()),
        take_while(|c: char| c.is_ascii_alphanumeric() || c == '-'),
    ));
    let value = take_while1(|c: char| printable(c) && c != '=');
    (keyword, opt(preceded(char('='), value)))
        .map(|(k, v): (&str, Option<&str>)| Param {
            keyword: k.to_owned(),
            value: v.map(str::to_owned),
        })
        .parse(i)
}

/// `chunk-size [SP "LAST"]` (RFC 3030 §2).
fn bdat(i: &str) -> IResult<&str, Command> {
    let size = map_res(
        take_while_m_n(1, MAX_SIZE_DIGITS, |c: char| c.is_ascii_digit()),
        str::parse::<u64>,
    );
    (size, opt(preceded(char(' '), tag_no_case("LAST"))))
        .map(|(size, last)| Command::Bdat {
            size,
            last: last.is_some(),
        })
        .parse(i)
}

/// `mechanism [SP initial-response]` (RFC 4954 §4): the response is base64 or a lone `=`
/// (an empty response).
fn auth(i: &str) -> IResult<&str, Command> {
    let mechanism = take_while_m_n(1, MAX_MECHANISM, |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_'
    });
    let base64 = recognize((
        take_while1(|c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
        take_while_m_n(0, 2, |c: char| c == '='),
    ));
    let initial = alt((base64, tag("=")));
    (mechanism, opt(preceded(char(' '), initial)))
        .map(|(m, ir): (&str, Option<&str>)| Command::Auth {
            mechanism: m.to_ascii_uppercase(),
            initial: ir.map(str::to_owned),
        })
        .parse(i)
}
