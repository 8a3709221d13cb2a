//! The EHLO reply rewrite (SPEC §4): the client sees the backend's extensions through an
//! allow-list, with STARTTLS and AUTH decided by the sidecar and SIZE capped.
//!
//! An allow-list rather than a deny-list because the backend is old: every extension it
//! advertises is one more parser of its era the client could reach (XEXCH50, X-LINK2STATE,
//! BINARYMIME...). What passes is either carried by the sidecar's own parsers (SIZE, AUTH,
//! CHUNKING when it reframes BDAT) or harmless to pass (RFC 6152 8BITMIME, RFC 2920
//! PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 3461 DSN, RFC 6531 SMTPUTF8, HELP).

use crate::reply::Reply;

/// What the sidecar can offer at the moment the EHLO reply is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EhloPolicy {
    /// Our own name: the first line of the rewritten reply.
    pub hostname: String,
    /// Advertise STARTTLS (not yet in TLS, STARTTLS mode, a certificate available).
    pub offer_starttls: bool,
    /// Pass the backend's AUTH line (false before TLS under `auth_requires_tls`).
    pub offer_auth: bool,
    /// `max_message_size`: SIZE is capped at it (and added when the backend has none).
    pub max_size: u64,
    /// Pass CHUNKING (only when the sidecar carries BDAT itself).
    pub chunking: bool,
}

/// The extensions that may pass, in their canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extension {
    Size,
    EightBitMime,
    Pipelining,
    EnhancedStatusCodes,
    Dsn,
    SmtpUtf8,
    Help,
    Auth,
    Chunking,
}

// `rewrite_ehlo` marks what it has seen by discriminant, one place per allowed extension.
const _: () = assert!(Extension::ALLOWED.len() == Extension::Chunking as usize + 1);

impl Extension {
    const ALLOWED: [Extension; 9] = [
        Extension::Size,
        Extension::EightBitMime,
        Extension::Pipelining,
        Extension::EnhancedStatusCodes,
        Extension::Dsn,
        Extension::SmtpUtf8,
        Extension::Help,
        Extension::Auth,
        Extension::Chunking,
    ];

    fn name(self) -> &'static str {
        match self {
            Extension::Size => "SIZE",
            Extension::EightBitMime => "8BITMIME",
            Extension::Pipelining => "PIPELINING",
            Extension::EnhancedStatusCodes => "ENHANCEDSTATUSCODES",
            Extension::Dsn => "DSN",
            Extension::SmtpUtf8 => "SMTPUTF8",
            Extension::Help => "HELP",
            Extension::Auth => "AUTH",
            Extension::Chunking => "CHUNKING",
        }
    }

    /// RFC 5321 §4.1.1.1: ehlo-keywords are case-insensitive. `AUTH=LOGIN` (the pre-RFC 2554
    /// spelling) is no keyword here, so it is dropped with the other unknowns.
    fn from_keyword(word: &str) -> Option<Extension> {
        Self::ALLOWED
            .into_iter()
            .find(|e| e.name().eq_ignore_ascii_case(word))
    }
}

/// The extensions a client was offered, read back from the EHLO reply it was sent: MAIL and
/// RCPT parameters are accepted only for these (SPEC §4). All false after HELO or before any
/// EHLO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    pub size: bool,
    pub eight_bit_mime: bool,
    pub dsn: bool,
    pub smtputf8: bool,
    pub auth: bool,
}

impl Offered {
    /// What may be forwarded: offered to the client and by the backend connection, except
    /// SIZE, which the sidecar carries itself (it removes `SIZE=` for a backend without it).
    pub fn forwardable(self, backend: Offered) -> Offered {
        Offered {
            size: self.size,
            eight_bit_mime: self.eight_bit_mime && backend.eight_bit_mime,
            dsn: self.dsn && backend.dsn,
            smtputf8: self.smtputf8 && backend.smtputf8,
            auth: self.auth && backend.auth,
        }
    }

    /// What a (rewritten) EHLO reply offers; nothing if it is not positive.
    pub fn from_reply(reply: &Reply) -> Self {
        let mut offered = Offered::default();
        if !reply.is_positive() {
            return offered;
        }
        for line in reply.lines.iter().skip(1) {
            let keyword = line.split_ascii_whitespace().next();
            match keyword.and_then(Extension::from_keyword) {
                Some(Extension::Size) => offered.size = true,
                Some(Extension::EightBitMime) => offered.eight_bit_mime = true,
                Some(Extension::Dsn) => offered.dsn = true,
                Some(Extension::SmtpUtf8) => offered.smtputf8 = true,
                Some(Extension::Auth) => offered.auth = true,
                _ => {}
            }
        }
        offered
    }
}

/// RFC 4422 §3.1: a SASL mechanism name is 1 to 20 of `[A-Z0-9-_]`; lower case is accepted
/// because old servers send it and the client compares case-insensitively.
const MAX_MECHANISM: usize = 20;

/// Rewrite a positive EHLO reply of the backend. Non-2xx replies are returned unchanged.
pub fn rewrite_ehlo(backend: &Reply, policy: &EhloPolicy) -> Reply {
    if !backend.is_positive() {
        return backend.clone();
    }
    // Our name, what the backend offers, and SIZE and STARTTLS when we add them.
    let mut lines = Vec::with_capacity(backend.lines.len() + 2);
    lines.push(policy.hostname.clone());
    let mut seen = [false; Extension::ALLOWED.len()];
    // The first line is the backend's greeting text (RFC 5321 §4.1.1.1), replaced by our name.
    for line in backend.lines.iter().skip(1) {
        let mut tokens = line.split_ascii_whitespace();
        let Some(ext) = tokens.next().and_then(Extension::from_keyword) else {
            continue;
        };
        if std::mem::replace(&mut seen[ext as usize], true) {
            continue;
        }
        let kept = match ext {
            Extension::Size => Some(size_line(tokens.next(), policy.max_size)),
            Extension::Auth if policy.offer_auth => auth_line(tokens),
            Extension::Auth => None,
            Extension::Chunking if policy.chunking => Some(ext.name().to_owned()),
            Extension::Chunking => None,
            _ => {
                // The keyword in its canonical spelling, then its parameters, one space apart.
                let mut kept = String::with_capacity(line.len());
                kept.push_str(ext.name());
                for t in tokens {
                    kept.push(' ');
                    kept.push_str(t);
                }
                Some(kept)
            }
        };
        lines.extend(kept);
    }
    if !seen[Extension::Size as usize] {
        lines.push(size_line(None, policy.max_size));
    }
    if policy.offer_starttls {
        lines.push("STARTTLS".to_owned());
    }
    Reply {
        code: backend.code,
        lines,
    }
}

/// `SIZE n` with n = min(backend limit, ours). RFC 1870 §4: a missing value or 0 means no
/// fixed limit, so ours applies; an unreadable value is treated the same way.
fn size_line(backend_value: Option<&str>, max_size: u64) -> String {
    let n = match backend_value.and_then(|v| v.parse::<u64>().ok()) {
        Some(limit) if limit > 0 => limit.min(max_size),
        _ => max_size,
    };
    format!("SIZE {n}")
}

/// `AUTH mech...` keeping only well-formed mechanism names; `None` if none is left.
fn auth_line<'a>(mechanisms: impl Iterator<Item = &'a str>) -> Option<String> {
    let valid = |m: &&str| {
        m.len() <= MAX_MECHANISM
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mechs: Vec<&str> = mechanisms.filter(valid).collect();
    (!mechs.is_empty()).then(|| format!("AUTH {}", mechs.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::EXCHANGE_2003;

    const MAX: u64 = 36_700_160; // 35 MiB

    fn policy(offer_starttls: bool, offer_auth: bool, chunking: bool) -> EhloPolicy {
        EhloPolicy {
            hostname: "mx1.example.com".into(),
            offer_starttls,
            offer_auth,
            max_size: MAX,
            chunking,
        }
    }

    fn backend(lines: &[&str]) -> Reply {
        Reply {
            code: 250,
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn table() {
        let before_tls = policy(true, false, false);
        let after_tls = policy(false, true, false);
        let cases: Vec<(&str, Reply, EhloPolicy, Vec<&str>)> = vec![
            (
                "exchange 2003 before TLS: auth hidden, our STARTTLS",
                backend(EXCHANGE_2003),
                before_tls.clone(),
                vec![
                    "mx1.example.com",
                    "SIZE 36700160",
                    "PIPELINING",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                    "8BITMIME",
                    "STARTTLS",
                ],
            ),
            (
                "exchange 2003 after TLS: auth shown, no STARTTLS",
                backend(EXCHANGE_2003),
                after_tls.clone(),
                vec![
                    "mx1.example.com",
                    "SIZE 36700160",
                    "PIPELINING",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                    "8BITMIME",
                    "AUTH GSSAPI NTLM LOGIN",
                ],
            ),
            (
                "chunking when the sidecar carries BDAT",
                backend(EXCHANGE_2003),
                policy(false, false, true),
                vec![
                    "mx1.example.com",
                    "SIZE 36700160",
                    "PIPELINING",
                    "DSN",
                    "ENHANCEDSTATUSCODES",
                    "8BITMIME",
                    "CHUNKING",
                ],
            ),
            (
                "SIZE capped",
                backend(&["b", "SIZE 104857600", "HELP"]),
                before_tls.clone(),
                vec!["mx1.example.com", "SIZE 36700160", "HELP", "STARTTLS"],
            ),
            (
                "SIZE lowered by the backend stays lower",
                backend(&["b", "size 1000"]),
                after_tls.clone(),
                vec!["mx1.example.com", "SIZE 1000"],
            ),
            (
                "SIZE 0 means no limit: ours",
                backend(&["b", "SIZE 0"]),
                after_tls.clone(),
                vec!["mx1.example.com", "SIZE 36700160"],
            ),
            (
                "SIZE added at the end, before STARTTLS",
                backend(&["b", "PIPELINING", "SMTPUTF8"]),
                before_tls.clone(),
                vec![
                    "mx1.example.com",
                    "PIPELINING",
                    "SMTPUTF8",
                    "SIZE 36700160",
                    "STARTTLS",
                ],
            ),
            (
                "single-line reply",
                backend(&["legacy.local"]),
                before_tls.clone(),
                vec!["mx1.example.com", "SIZE 36700160", "STARTTLS"],
            ),
            (
                "duplicates dropped, first wins",
                backend(&[
                    "b",
                    "SIZE 10",
                    "Pipelining",
                    "PIPELINING",
                    "SIZE 20",
                    "AUTH PLAIN",
                    "AUTH LOGIN",
                ]),
                after_tls.clone(),
                vec!["mx1.example.com", "SIZE 10", "PIPELINING", "AUTH PLAIN"],
            ),
            (
                "auth mechanisms sanitised, empty AUTH dropped",
                backend(&["b", "AUTH LOGIN PL@IN <script> CRAM-MD5 X_OAUTH2", "auth"]),
                after_tls.clone(),
                vec![
                    "mx1.example.com",
                    "AUTH LOGIN CRAM-MD5 X_OAUTH2",
                    "SIZE 36700160",
                ],
            ),
            (
                "only AUTH= form: no AUTH at all",
                backend(&["b", "AUTH=LOGIN"]),
                after_tls.clone(),
                vec!["mx1.example.com", "SIZE 36700160"],
            ),
            (
                "arguments of allowed keywords pass, tabs and spaces normalised",
                backend(&["b", "DSN\tx  y", "", "   "]),
                after_tls,
                vec!["mx1.example.com", "DSN x y", "SIZE 36700160"],
            ),
        ];
        for (name, reply, policy, want) in cases {
            let got = rewrite_ehlo(&reply, &policy);
            assert_eq!(got.code, 250, "{name}");
            assert_eq!(got.lines, want, "{name}");
        }
    }

    #[test]
    fn non_positive_unchanged() {
        for code in [421, 500, 502, 554] {
            let r = Reply {
                code,
                lines: vec!["no".into(), "STARTTLS".into()],
            };
            assert_eq!(rewrite_ehlo(&r, &policy(true, true, true)), r);
        }
    }
}
