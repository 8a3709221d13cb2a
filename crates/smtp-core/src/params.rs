//! MAIL and RCPT parameters (RFC 5321 §4.1.2 esmtp-param), checked against what this client
//! was offered in this session rather than against a fixed list (SPEC §4). A legacy backend
//! trusts the parameters we forward: `AUTH=` asserts who submitted a message, `SIZE=` sizes
//! its buffers, `NOTIFY=` decides who gets a DSN. So each one must belong to an extension the
//! client was offered, appear at most once and be well formed; anything else is refused here.

use crate::command::Param;
use crate::ehlo::Offered;

/// Why a MAIL or RCPT command is refused; [`ParamError::reply`] is the SPEC §4 reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParamError {
    #[error("parameter of an extension not offered")]
    Unsupported,
    #[error("repeated or malformed parameter")]
    Invalid,
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    #[error("declared size over the limit")]
    TooBig,
}

impl ParamError {
    pub(crate) fn reply(self) -> &'static str {
        match self {
            ParamError::Unsupported => "555 5.5.4 Unsupported parameter",
            ParamError::Invalid => "501 5.5.4 Invalid parameter",
            ParamError::NonAscii => "553 5.6.7 Non-ASCII addresses require SMTPUTF8",
            ParamError::TooBig => "552 5.3.4 Message size exceeds fixed maximum message size",
        }
    }
}

/// What the transaction keeps from its MAIL command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MailParams {
    /// `SMTPUTF8` was given: recipients may be non-ASCII (RFC 6531 §3.4).
    pub smtputf8: bool,
}

/// The parameters we know, each tied to the extension that defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Size,
    Body,
    SmtpUtf8,
    Ret,
    Envid,
    Auth,
    Notify,
    Orcpt,
}

const MAIL: &[Kind] = &[
    Kind::Size,
    Kind::Body,
    Kind::SmtpUtf8,
    Kind::Ret,
    Kind::Envid,
    Kind::Auth,
];
const RCPT: &[Kind] = &[Kind::Notify, Kind::Orcpt];

/// RFC 3461 §4.4: an ENVID is at most 100 characters.
const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: an ORCPT is at most 500 characters.
const MAX_ORCPT: usize = 500;
/// An `AUTH=` mailbox, xtext-encoded (RFC 4954 §5): a 256-octet path with room for encoding.
/// Bounded so that the longest MAIL we forward stays under 1000 octets: a legacy backend
/// reading lines into a buffer of that size (RFC 5321 §4.5.3.1.4) must never split one.
const MAX_AUTH: usize = 500;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Size => "SIZE",
            Kind::Body => "BODY",
            Kind::SmtpUtf8 => "SMTPUTF8",
            Kind::Ret => "RET",
            Kind::Envid => "ENVID",
            Kind::Auth => "AUTH",
            Kind::Notify => "NOTIFY",
            Kind::Orcpt => "ORCPT",
        }
    }

    fn offered(self, o: Offered) -> bool {
        match self {
            Kind::Size => o.size,
            Kind::Body => o.eight_bit_mime,
            Kind::SmtpUtf8 => o.smtputf8,
            Kind::Ret | Kind::Envid | Kind::Notify | Kind::Orcpt => o.dsn,
            Kind::Auth => o.auth,
        }
    }

    fn check_value(self, value: Option<&str>, smtputf8: bool) -> Result<(), ParamError> {
        let ok = match (self, value) {
            // RFC 1870 §3: size-value = 1*20DIGIT.
            (Kind::Size, Some(v)) => {
                (1..=20).contains(&v.len())
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<u64>().is_ok()
            }
            // RFC 6152 §2; BINARYMIME (RFC 3030) is never offered.
            (Kind::Body, Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return Err(ParamError::Unsupported)
            }
            (Kind::Body, Some(v)) => {
                v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME")
            }
            // RFC 6531 §3.4: no value.
            (Kind::SmtpUtf8, None) => true,
            // RFC 3461 §4.3, §4.4, §4.1, §4.2.
            (Kind::Ret, Some(v)) => {
                v.eq_ignore_ascii_case("FULL") || v.eq_ignore_ascii_case("HDRS")
            }
            (Kind::Envid, Some(v)) => v.len() <= MAX_ENVID && is_xtext(v),
            (Kind::Notify, Some(v)) => is_notify(v),
            (Kind::Orcpt, Some(v)) => is_orcpt(v, smtputf8),
            // RFC 4954 §5: AUTH=<> or an xtext mailbox.
            (Kind::Auth, Some(v)) => v == "<>" || (v.len() <= MAX_AUTH && is_xtext(v)),
            _ => false,
        };
        ok.then_some(()).ok_or(ParamError::Invalid)
    }
}

/// Check MAIL FROM's parameters and address. `AUTH=` from a client that has not
/// authenticated is rewritten to `AUTH=<>` (RFC 4954 §5): the backend trusts what we send.
pub(crate) fn check_mail(
    from: &str,
    params: &mut [Param],
    offered: Offered,
    authenticated: bool,
    max_size: u64,
) -> Result<MailParams, ParamError> {
    let smtputf8 = has(params, Kind::SmtpUtf8);
    check(params, MAIL, offered, smtputf8)?;
    if !smtputf8 && !from.is_ascii() {
        return Err(ParamError::NonAscii);
    }
    for p in params.iter_mut() {
        if is(p, Kind::Size)
            && p.value.as_deref().and_then(|v| v.parse::<u64>().ok()) > Some(max_size)
        {
            return Err(ParamError::TooBig);
        }
        if is(p, Kind::Auth) && !authenticated {
            p.value = Some("<>".to_owned());
        }
    }
    Ok(MailParams { smtputf8 })
}

/// Check RCPT TO's parameters and address within a transaction started by `mail`.
pub(crate) fn check_rcpt(
    to: &str,
    params: &[Param],
    offered: Offered,
    mail: MailParams,
) -> Result<(), ParamError> {
    check(params, RCPT, offered, mail.smtputf8)?;
    if !mail.smtputf8 && !to.is_ascii() {
        return Err(ParamError::NonAscii);
    }
    Ok(())
}

/// Each parameter must be one of `allowed`, of an offered extension, given once, well formed.
fn check(
    params: &[Param],
    allowed: &[Kind],
    offered: Offered,
    smtputf8: bool,
) -> Result<(), ParamError> {
    let mut seen: Vec<Kind> = Vec::with_capacity(params.len());
    for p in params {
        let kind = allowed
            .iter()
            .copied()
            .find(|&k| is(p, k) && k.offered(offered))
            .ok_or(ParamError::Unsupported)?;
        if seen.contains(&kind) {
            return Err(ParamError::Invalid);
        }
        seen.push(kind);
        kind.check_value(p.value.as_deref(), smtputf8)?;
    }
    Ok(())
}

/// What a relay leaves out toward a next hop that did not offer the extension (originate):
/// `SIZE=` (the limit is enforced here), the DSN parameters (RFC 3461 §4.1: relayed to a
/// server without DSN, a message goes on without them) and `BODY=7BIT` (RFC 6152: 7-bit is
/// what a message without `BODY` is, and a server without 8BITMIME must not be sent the
/// parameter). Anything else it did not offer (`BODY=8BITMIME`, `SMTPUTF8`) is left for
/// [`check_mail`]/[`check_rcpt`] to refuse.
pub(crate) fn drop_for_next_hop(params: &mut Vec<Param>, next_hop: Offered) {
    const DSN: [Kind; 4] = [Kind::Ret, Kind::Envid, Kind::Notify, Kind::Orcpt];
    params.retain(|p| {
        let size = is(p, Kind::Size) && !next_hop.size;
        let dsn = DSN.iter().any(|&k| is(p, k)) && !next_hop.dsn;
        let seven_bit = is(p, Kind::Body)
            && !next_hop.eight_bit_mime
            && p.value
                .as_deref()
                .is_some_and(|v| v.eq_ignore_ascii_case("7BIT"));
        !(size || dsn || seven_bit)
    });
}

fn is(p: &Param, kind: Kind) -> bool {
    p.keyword.eq_ignore_ascii_case(kind.name())
}

fn has(params: &[Param], kind: Kind) -> bool {
    params.iter().any(|p| is(p, kind))
}

/// RFC 3461 §4: xtext = *( xchar / hexchar ), xchar = "!".."~" except "+" and "=",
/// hexchar = "+" 2(upper-case HEXDIG). Non-empty here.
fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: Option<&u8>| {
                    c.is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                };
                if !(hex(b.get(i + 1)) && hex(b.get(i + 2))) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            c if (0x21..=0x7e).contains(&c) => i += 1,
            _ => return false,
        }
    }
    !b.is_empty()
}

/// RFC 3461 §4.1: `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY`, each once.
fn is_notify(v: &str) -> bool {
    if v.eq_ignore_ascii_case("NEVER") {
        return true;
    }
    let mut seen: Vec<&str> = Vec::with_capacity(3);
    v.split(',').all(|item| {
        let known = ["SUCCESS", "FAILURE", "DELAY"]
            .into_iter()
            .find(|k| k.eq_ignore_ascii_case(item));
        match known {
            Some(k) if !seen.contains(&k) => {
                seen.push(k);
                true
            }
            _ => false,
        }
    })
}

/// RFC 3461 §4.2: `addr-type ";" xtext`; RFC 6533 §3 lets the address be UTF-8 under SMTPUTF8.
fn is_orcpt(v: &str, smtputf8: bool) -> bool {
    let Some((addr_type, addr)) = v.split_once(';') else {
        return false;
    };
    let atom = !addr_type.is_empty()
        && addr_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let address = if smtputf8 && !addr.is_ascii() {
        !addr.is_empty() && !addr.contains('=')
    } else {
        is_xtext(addr)
    };
    atom && address && v.len() <= MAX_ORCPT
}

#[cfg(test)]
mod tests;
