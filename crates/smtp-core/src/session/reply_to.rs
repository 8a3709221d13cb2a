//! What a reply to the client answers, for counting replies by command and class
//! (`smtp_sidecar_replies_total{command,class}`): the verbs, plus the connection itself
//! (the greeting), the end of a message, and lines that were no command.

use crate::command::Verb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyTo {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The end of a message (`.` after DATA).
    DataEnd,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    /// HELP, EXPN, ETRN.
    Other,
    /// A line that was no command (unrecognised, too long, a bare LF...).
    Invalid,
}

impl ReplyTo {
    pub const ALL: [ReplyTo; 16] = [
        ReplyTo::Greeting,
        ReplyTo::Ehlo,
        ReplyTo::Helo,
        ReplyTo::StartTls,
        ReplyTo::Auth,
        ReplyTo::Mail,
        ReplyTo::Rcpt,
        ReplyTo::Data,
        ReplyTo::DataEnd,
        ReplyTo::Bdat,
        ReplyTo::Rset,
        ReplyTo::Noop,
        ReplyTo::Quit,
        ReplyTo::Vrfy,
        ReplyTo::Other,
        ReplyTo::Invalid,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyTo::Greeting => "greeting",
            ReplyTo::Ehlo => "ehlo",
            ReplyTo::Helo => "helo",
            ReplyTo::StartTls => "starttls",
            ReplyTo::Auth => "auth",
            ReplyTo::Mail => "mail",
            ReplyTo::Rcpt => "rcpt",
            ReplyTo::Data => "data",
            ReplyTo::DataEnd => "data_end",
            ReplyTo::Bdat => "bdat",
            ReplyTo::Rset => "rset",
            ReplyTo::Noop => "noop",
            ReplyTo::Quit => "quit",
            ReplyTo::Vrfy => "vrfy",
            ReplyTo::Other => "other",
            ReplyTo::Invalid => "invalid",
        }
    }

    /// Its position in [`ReplyTo::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl From<Verb> for ReplyTo {
    fn from(verb: Verb) -> Self {
        match verb {
            Verb::Ehlo => ReplyTo::Ehlo,
            Verb::Helo => ReplyTo::Helo,
            Verb::Mail => ReplyTo::Mail,
            Verb::Rcpt => ReplyTo::Rcpt,
            Verb::Data => ReplyTo::Data,
            Verb::Bdat => ReplyTo::Bdat,
            Verb::Rset => ReplyTo::Rset,
            Verb::Noop => ReplyTo::Noop,
            Verb::Quit => ReplyTo::Quit,
            Verb::StartTls => ReplyTo::StartTls,
            Verb::Auth => ReplyTo::Auth,
            Verb::Vrfy => ReplyTo::Vrfy,
            Verb::Expn | Verb::Help | Verb::Etrn => ReplyTo::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplyTo;

    #[test]
    fn all_is_in_declaration_order() {
        for (i, r) in ReplyTo::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.as_str());
        }
    }
}
