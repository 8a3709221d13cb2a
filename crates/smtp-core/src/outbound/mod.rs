//! The originate-mode session: the legacy MTA relays to us as its smart host, in plaintext;
//! we deliver each transaction to the next hop over TLS as the recipient domain's policy
//! demands, without a queue: every decision is answered to the legacy MTA in the same session.

mod api;

pub use api::{Config, DomainPolicy, Level, NextHop, OnFailure};
