//! An in-memory harness for a session of either direction (any [`Machine`]): a virtual clock,
//! a scripted backend and a client, no sockets. The driver's job (carrying out actions in
//! order) is done here the same way, so session tests exercise every timeout in microseconds.

use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::BytesMut;

use crate::data::{BareNewlines, LongLines};
use crate::inbound::{ClientCert, Config, OnFailure, Session, Timeouts, TlsInfo};
use crate::session::{
    Action, DnsFailure, Event, Leg, LoopSeen, Machine, ReplyTo, Route, Target, TlsClient, TlsStart,
};

/// An Exchange 2003 EHLO reply, plus the lines other legacy servers add (the EHLO rewrite's
/// tests and bench).
pub const EXCHANGE_2003: &[&str] = &[
    "mail.contoso.local Hello [192.0.2.10]",
    "TURN",
    "ATRN",
    "SIZE",
    "ETRN",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "8bitmime",
    "BINARYMIME",
    "CHUNKING",
    "VRFY",
    "X-EXPS GSSAPI NTLM LOGIN",
    "X-EXPS=LOGIN",
    "AUTH GSSAPI NTLM LOGIN",
    "AUTH=LOGIN",
    "X-LINK2STATE",
    "XEXCH50",
    "X-ANONYMOUSTLS",
    "XCLIENT NAME ADDR",
    "XFORWARD NAME ADDR",
    "STARTTLS",
    "OK",
];

/// A policy with the SPEC defaults, for tests.
pub fn test_config() -> Config {
    Config {
        hostname: "mx.test".into(),
        starttls: true,
        require_tls: false,
        auth_requires_tls: true,
        bare_newlines: BareNewlines::Reject,
        long_lines: LongLines::Fold,
        received_header: false,
        max_message_size: 35 * 1024 * 1024,
        max_recipients: 100,
        max_errors: 20,
        domain_secure: Vec::new(),
        on_failure: OnFailure::Defer,
        enforce: true,
        timeouts: Timeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_block: Duration::from_secs(180),
            tls_handshake: Duration::from_secs(30),
            backend_reply: Duration::from_secs(300),
        },
        hop: crate::inbound::Hop::default(),
        protocol_log: false,
    }
}

/// An originate policy for tests: a fixed relay `relay.test`, `may` by default.
pub fn test_originate_config() -> crate::outbound::Config {
    let inbound = test_config();
    crate::outbound::Config {
        hostname: "mx.test".into(),
        next_hop: crate::outbound::NextHop::Relay {
            host: "relay.test".into(),
        },
        policy: crate::outbound::DomainPolicy {
            default: crate::outbound::Level::May,
            domains: Vec::new(),
        },
        on_failure: crate::outbound::OnFailure::Defer,
        enforce: true,
        bare_newlines: inbound.bare_newlines,
        long_lines: inbound.long_lines,
        received_header: false,
        max_message_size: inbound.max_message_size,
        max_recipients: inbound.max_recipients,
        max_errors: inbound.max_errors,
        timeouts: inbound.timeouts,
        protocol_log: false,
    }
}

/// The TLS parameters the harness reports after [`Action::StartTls`].
pub fn test_tls() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        client_cert: ClientCert::None,
        our_cert: crate::session::OurCert::NotOffered,
    }
}

/// One session, its two peers and a clock. The terminate [`Session`] unless told otherwise.
#[derive(Debug)]
pub struct Harness<S: Machine = Session> {
    pub session: S,
    pub now: Instant,
    /// Bytes written to the client since the last `take_client`.
    pub client: BytesMut,
    /// Bytes written to the backend since the last `take_backend`.
    pub backend: BytesMut,
    /// Write actions to the backend so far (each is one system call in the driver).
    pub backend_writes: u32,
    /// Write actions on the client leg.
    pub client_writes: u32,
    /// Events other than replies; the replies (what they answered, their code) apart.
    pub events: Vec<Event>,
    pub replies: Vec<(ReplyTo, u16)>,
    /// Backend connections opened / dropped, client closed, TLS started.
    pub connects: u32,
    pub backend_closes: u32,
    pub closed: bool,
    /// The client's connection was closed with a lingering close ([`Action::Close`]).
    pub lingered: bool,
    pub tls_started: u32,
    /// When false, `ConnectBackend` is answered with a failure.
    pub backend_reachable: bool,
    /// When true, `StartTls` completes at once: on the client leg with `tls_info`, on the
    /// backend leg with `hop_tls` (failed without one).
    pub auto_tls: bool,
    /// What the handshake reports ([`test_tls`] unless a test sets a client certificate).
    pub tls_info: TlsInfo,
    /// Originate: the domains looked up, and the answer each look-up gets (none: it stays
    /// unanswered).
    pub resolves: Vec<String>,
    pub dns: Option<Result<Vec<Route>, DnsFailure>>,
    /// Originate: the next hop addresses connected to, and those that refuse connections.
    pub connected: Vec<Target>,
    pub unreachable: Vec<std::net::SocketAddr>,
    /// Originate: next hop addresses that are the sidecar's own listeners, by their address
    /// ([`LoopSeen::ByAddress`]) or found so once connected ([`LoopSeen::OnceConnected`]).
    pub ours: Vec<std::net::SocketAddr>,
    pub ours_once_connected: Vec<std::net::SocketAddr>,
    /// Graceful closes of the backend leg (after QUIT).
    pub disconnects: u32,
    /// Originate: each client handshake asked for, and what it reports (`None`: it fails).
    pub tls_clients: Vec<TlsClient>,
    pub hop_tls: Option<TlsInfo>,
}

impl Harness<Session> {
    /// A session whose backend connects at once; the backend greeting is not sent yet.
    pub fn new(cfg: Config) -> Self {
        let now = Instant::now();
        let session = Session::new(
            cfg,
            "192.0.2.1:49152".parse().expect("address"),
            None,
            now,
            test_wall(),
        );
        Self::with_session(session, now)
    }

    /// A session started with its backend deferred ([`Session::new_deferred`]), which knows
    /// the backend's EHLO reply `ehlo` (wire form); our greeting is not taken.
    pub fn deferred(cfg: Config, ehlo: &str) -> Self {
        let now = Instant::now();
        let mut parser = crate::reply::ReplyParser::default();
        parser.push(ehlo.as_bytes());
        let ehlo = parser.next_reply().ok().flatten().expect("an EHLO reply");
        let peer = "192.0.2.1:49152".parse().expect("address");
        let session = Session::new_deferred(cfg, peer, ehlo.into(), now, test_wall());
        Self::with_session(session, now)
    }

    /// An implicit-TLS session ([`test_tls`]) whose greeting went with its handshake
    /// ([`Session::new_greeted`]).
    pub fn greeted_in_handshake(cfg: Config) -> Self {
        let now = Instant::now();
        let peer = "192.0.2.1:49152".parse().expect("address");
        let session = Session::new_greeted(cfg, peer, test_tls(), now, test_wall());
        Self::with_session(session, now)
    }

    /// A session past the backend greeting, with our greeting taken.
    pub fn greeted(cfg: Config) -> Self {
        let mut h = Self::new(cfg);
        h.backend_says(b"220 legacy.test ESMTP\r\n");
        assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n");
        h
    }
}

impl Harness<crate::outbound::Session> {
    /// An originate session with our greeting taken.
    pub fn originate(cfg: crate::outbound::Config) -> Self {
        let now = Instant::now();
        let ip = "192.0.2.1".parse().expect("ip");
        let session = crate::outbound::Session::new(cfg, ip, now, test_wall());
        let mut h = Self::with_session(session, now);
        assert_eq!(h.take_client(), "220 mx.test ESMTP\r\n");
        h
    }
}

/// The wall clock the harness's sessions start at (for Received headers): 2026-11-24.
pub fn test_wall() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_488_300)
}

impl<S: Machine> Harness<S> {
    pub fn with_session(session: S, now: Instant) -> Self {
        let mut h = Harness {
            session,
            now,
            client: BytesMut::new(),
            backend: BytesMut::new(),
            events: Vec::new(),
            replies: Vec::new(),
            connects: 0,
            backend_closes: 0,
            backend_writes: 0,
            client_writes: 0,
            closed: false,
            lingered: false,
            tls_started: 0,
            backend_reachable: true,
            auto_tls: true,
            tls_info: test_tls(),
            resolves: Vec::new(),
            dns: None,
            connected: Vec::new(),
            unreachable: Vec::new(),
            ours: Vec::new(),
            ours_once_connected: Vec::new(),
            disconnects: 0,
            tls_clients: Vec::new(),
            hop_tls: None,
        };
        h.run();
        h
    }

    /// Carry out every pending action, as a driver would.
    pub fn run(&mut self) {
        while let Some(action) = self.session.poll_action() {
            match action {
                Action::Write(Leg::Client, b) => {
                    self.client_writes += 1;
                    self.client.extend_from_slice(&b);
                }
                Action::Write(Leg::Backend, b) => {
                    self.backend_writes += 1;
                    self.backend.extend_from_slice(&b);
                }
                Action::ConnectBackend => {
                    self.connects += 1;
                    if self.backend_reachable {
                        self.session.handle_connected(self.now);
                    } else {
                        self.session.handle_connect_failed("refused", self.now);
                    }
                }
                Action::Connect(target) => {
                    self.connects += 1;
                    let refused = self.unreachable.contains(&target.addr);
                    let ours = self.ours.contains(&target.addr);
                    let ours_once_connected = self.ours_once_connected.contains(&target.addr);
                    self.connected.push(*target);
                    if ours {
                        self.session.handle_connect_loops(
                            "our own listener",
                            LoopSeen::ByAddress,
                            self.now,
                        );
                    } else if ours_once_connected {
                        let seen = LoopSeen::OnceConnected;
                        self.session
                            .handle_connect_loops("this host", seen, self.now);
                    } else if refused {
                        self.session.handle_connect_failed("refused", self.now);
                    } else {
                        self.session.handle_connected(self.now);
                    }
                }
                Action::Resolve(domain) => {
                    self.resolves.push(domain);
                    if let Some(answer) = self.dns.clone() {
                        self.session.handle_resolved(answer, self.now);
                    }
                }
                Action::Abort(Leg::Backend) => self.backend_closes += 1,
                Action::Abort(Leg::Client) => self.closed = true,
                Action::Disconnect(Leg::Backend) => self.disconnects += 1,
                Action::Disconnect(Leg::Client) => self.closed = true,
                Action::StartTls(TlsStart::Server) => {
                    self.tls_started += 1;
                    if self.auto_tls {
                        let info = self.tls_info.clone();
                        self.session
                            .handle_tls_established(Leg::Client, info, self.now);
                    }
                }
                Action::StartTls(start @ (TlsStart::Client(_) | TlsStart::Backend)) => {
                    self.tls_started += 1;
                    if let TlsStart::Client(client) = start {
                        self.tls_clients.push(*client);
                    }
                    match self.hop_tls.clone() {
                        // Left in progress: the test ends it.
                        _ if !self.auto_tls => {}
                        Some(info) => {
                            self.session
                                .handle_tls_established(Leg::Backend, info, self.now);
                        }
                        None => self.session.handle_tls_failed(Leg::Backend, self.now),
                    }
                }
                Action::Close { linger } => {
                    self.closed = true;
                    self.lingered = linger;
                }
            }
        }
        while let Some(e) = self.session.poll_event() {
            match e {
                Event::Reply { to, code } => self.replies.push((to, code)),
                e => self.events.push(e),
            }
        }
    }

    pub fn client_says(&mut self, bytes: &[u8]) {
        self.session.handle_bytes(Leg::Client, bytes, self.now);
        self.run();
    }

    pub fn backend_says(&mut self, bytes: &[u8]) {
        self.session.handle_bytes(Leg::Backend, bytes, self.now);
        self.run();
    }

    /// Move the clock and fire the session's timer if it is due.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.session.poll_timeout().is_some_and(|t| t <= self.now) {
            self.session.handle_timeout(self.now);
            self.run();
        }
    }

    pub fn take_client(&mut self) -> String {
        String::from_utf8_lossy(&self.client.split()).into_owned()
    }

    pub fn take_backend(&mut self) -> String {
        String::from_utf8_lossy(&self.backend.split()).into_owned()
    }

    /// Client sends `cmd`; assert the backend receives exactly `forwarded`; the backend
    /// answers `reply`; return what the client received.
    pub fn exchange(&mut self, cmd: &str, forwarded: &str, reply: &str) -> String {
        self.client_says(cmd.as_bytes());
        assert_eq!(self.take_backend(), forwarded, "forwarded for {cmd:?}");
        self.backend_says(reply.as_bytes());
        self.take_client()
    }

    /// MAIL and RCPT, each forwarded as sent and accepted by the backend.
    pub fn envelope(&mut self) {
        for (cmd, reply) in [
            ("MAIL FROM:<a@x.test>\r\n", "250 2.1.0 Ok\r\n"),
            ("RCPT TO:<b@y.test>\r\n", "250 2.1.5 Ok\r\n"),
        ] {
            assert_eq!(self.exchange(cmd, cmd, reply), reply);
        }
    }

    /// The envelope, then DATA answered `354`.
    pub fn transaction(&mut self) {
        self.envelope();
        assert_eq!(
            self.exchange("DATA\r\n", "DATA\r\n", "354 go\r\n"),
            "354 go\r\n"
        );
    }

    /// EHLO with a backend that offers AUTH PLAIN and LOGIN.
    pub fn ehlo_auth(&mut self) -> String {
        self.exchange(
            "EHLO client.test\r\n",
            "EHLO client.test\r\n",
            "250-legacy.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n",
        )
    }

    /// The client's EHLO after STARTTLS with the name of its first: answered from the
    /// backend's reply to that one, nothing forwarded.
    pub fn ehlo_after_tls(&mut self) -> String {
        self.client_says(b"EHLO client.test\r\n");
        assert_eq!(
            self.take_backend(),
            "",
            "answered from the reply before TLS"
        );
        self.take_client()
    }

    /// EHLO with a plain backend EHLO reply.
    pub fn ehlo(&mut self) -> String {
        self.exchange(
            "EHLO client.test\r\n",
            "EHLO client.test\r\n",
            "250-legacy.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        )
    }
}

/// A scripted legacy server for property tests and fuzzing: it greets every new connection,
/// offers every extension the sidecar passes, accepts every AUTH exchange, answers every other
/// command line `250` (`354` to DATA, `221` to QUIT) and every message `250`.
#[derive(Debug, Default)]
pub struct AutoBackend {
    connects_seen: u32,
    /// Bytes of the current connection not yet understood.
    pending: Vec<u8>,
    in_data: bool,
    /// The next line is a SASL response.
    in_auth: bool,
    /// Everything each connection received, for [`check_backend_stream`].
    pub connections: Vec<Vec<u8>>,
    /// Also offer STARTTLS and XCLIENT (ADDR, PORT, NAME, HELO, PROTO) and answer both `220`,
    /// for a session with `hop.starttls`/`hop.xclient` (the harness's `hop_tls` completes the
    /// handshake).
    pub hop: bool,
}

impl AutoBackend {
    /// Answer whatever the session sent since the last call; repeat until quiet.
    pub fn serve<S: Machine>(&mut self, h: &mut Harness<S>) {
        for _ in 0..64 {
            let mut replies = Vec::new();
            if h.connects > self.connects_seen {
                self.connects_seen = h.connects;
                self.pending.clear();
                self.in_data = false;
                self.in_auth = false;
                self.connections.push(Vec::new());
                replies.extend_from_slice(b"220 legacy.test ESMTP\r\n");
            }
            let sent = h.backend.split();
            assert!(
                sent.is_empty() || !self.connections.is_empty(),
                "written to a backend that was never connected: {sent:?}"
            );
            if let Some(conn) = self.connections.last_mut() {
                conn.extend_from_slice(&sent);
            }
            self.pending.extend_from_slice(&sent);
            self.answer(&mut replies);
            if replies.is_empty() || h.closed {
                return;
            }
            h.backend_says(&replies);
        }
    }

    fn answer(&mut self, replies: &mut Vec<u8>) {
        loop {
            if self.in_data {
                let Some(end) = find(&self.pending, b"\r\n.\r\n") else {
                    return;
                };
                self.pending.drain(..end + 5);
                self.in_data = false;
                replies.extend_from_slice(b"250 2.0.0 queued\r\n");
                continue;
            }
            let Some(lf) = self.pending.iter().position(|&b| b == b'\n') else {
                return;
            };
            let line: Vec<u8> = self.pending.drain(..=lf).collect();
            if std::mem::take(&mut self.in_auth) {
                replies.extend_from_slice(b"235 2.7.0 ok\r\n");
                continue;
            }
            let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
            match verb.as_deref() {
                Some(b"EHLO") => {
                    if self.hop {
                        replies.extend_from_slice(
                            b"250-legacy.test\r\n250-STARTTLS\r\n\
                              250-XCLIENT NAME ADDR PORT PROTO HELO\r\n",
                        );
                    } else {
                        replies.extend_from_slice(b"250-legacy.test\r\n");
                    }
                    replies.extend_from_slice(
                        b"250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n\
                          250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n",
                    );
                }
                Some(b"STAR" | b"XCLI") if self.hop => {
                    replies.extend_from_slice(b"220 legacy.test ESMTP\r\n");
                }
                // `AUTH PLAIN <initial response>` completes at once; anything else is asked for
                // one response line.
                Some(b"AUTH") if line.iter().filter(|&&b| b == b' ').count() >= 2 => {
                    replies.extend_from_slice(b"235 2.7.0 ok\r\n");
                }
                Some(b"AUTH") => {
                    replies.extend_from_slice(b"334 \r\n");
                    self.in_auth = true;
                }
                Some(b"DATA") => {
                    replies.extend_from_slice(b"354 go\r\n");
                    self.in_data = true;
                    // The body may begin with the end of data itself (an empty message).
                    self.pending.splice(0..0, *b"\r\n");
                }
                Some(b"QUIT") => replies.extend_from_slice(b"221 bye\r\n"),
                _ => replies.extend_from_slice(b"250 ok\r\n"),
            }
        }
    }
}

/// XCLIENT's attributes as the sidecar sends them: `NAME=value` pairs, one space apart, names
/// of Postfix's XCLIENT_README, each once, values xtext (printable ASCII, no space, no `=`).
fn check_xclient(attributes: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(attributes);
    let mut seen = Vec::new();
    for pair in text.split(' ') {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!("XCLIENT attribute without a value {pair:?}"));
        };
        if !["ADDR", "PORT", "NAME", "HELO", "PROTO"].contains(&name) || seen.contains(&name) {
            return Err(format!("XCLIENT attribute {name:?} unknown or repeated"));
        }
        seen.push(name);
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| (b'!'..=b'~').contains(&b) && b != b'=')
        {
            return Err(format!("XCLIENT {name} value not xtext {value:?}"));
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the backend must never see, whatever the client sent (SPEC §1.2): a NUL, a bare CR
/// or LF, a command line that is not canonical (re-parses to itself) or longer than 2048
/// octets, a repeated MAIL/RCPT parameter, an `AUTH=` identity asserted on a connection where
/// no AUTH exchange took place (RFC 4954 §5), a body line longer than 998 octets + CRLF (RFC
/// 5322 §2.1.1). Returns the first problem.
pub fn check_backend_stream(stream: &[u8]) -> Result<(), String> {
    use crate::command::parse_command;
    if let Some(i) = stream.iter().position(|&b| b == 0) {
        return Err(format!("NUL at {i}"));
    }
    for (i, w) in stream.windows(2).enumerate() {
        if w[0] == b'\r' && w[1] != b'\n' {
            return Err(format!("bare CR at {i}"));
        }
        if w[1] == b'\n' && w[0] != b'\r' {
            return Err(format!("bare LF at {}", i + 1));
        }
    }
    if stream.first() == Some(&b'\n') || (stream.last() == Some(&b'\r')) {
        return Err("bare CR or LF at an edge".into());
    }
    // Walk the stream as the backend does: command lines, then bodies up to CRLF.CRLF.
    let mut rest = stream;
    let mut auth_seen = false;
    let mut in_sasl = false;
    while !rest.is_empty() {
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Err(format!(
                "unterminated command line {:?}",
                String::from_utf8_lossy(rest)
            ));
        };
        let line = &rest[..lf - 1];
        rest = &rest[lf + 1..];
        if line.len() + 2 > crate::line::MAX_EXTENDED_LINE {
            return Err(format!("command line of {} octets", line.len() + 2));
        }
        let sasl_like = line
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=*".contains(b));
        // SASL response lines of an AUTH exchange (RFC 4954 §4) follow an AUTH command; one
        // may spell a verb (`sTARTTLS` is base64 too), and the backend reads it as SASL data.
        if in_sasl && sasl_like {
            continue;
        }
        in_sasl = false;
        if let Some(attributes) = line.strip_prefix(b"XCLIENT ") {
            check_xclient(attributes)?;
            continue;
        }
        let cmd = match parse_command(line) {
            Ok(cmd) => cmd,
            Err(_) if sasl_like => continue,
            Err(e) => {
                let line = String::from_utf8_lossy(line);
                return Err(format!("backend got an unparsable command {line:?}: {e}"));
            }
        };
        // A backend reading lines into a 1000-octet buffer must get every command whole; only
        // SASL data (AUTH and its responses, RFC 4954 §4) may be longer.
        if line.len() + 2 > crate::data::MAX_LINE + 2 && cmd.verb() != crate::command::Verb::Auth {
            return Err(format!("command line of {} octets", line.len() + 2));
        }
        let mut canonical = bytes::BytesMut::new();
        cmd.write_to(&mut canonical);
        if canonical[..canonical.len() - 2] != *line {
            return Err(format!(
                "non-canonical command {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        if let crate::command::Command::Mail { params, .. }
        | crate::command::Command::Rcpt { params, .. } = &cmd
        {
            for (i, p) in params.iter().enumerate() {
                if params[..i]
                    .iter()
                    .any(|q| q.keyword.eq_ignore_ascii_case(&p.keyword))
                {
                    return Err(format!("repeated parameter {}", p.keyword));
                }
                let auth = p.keyword.eq_ignore_ascii_case("AUTH");
                if auth && !auth_seen && p.value.as_deref() != Some("<>") {
                    return Err(format!("AUTH={:?} without authentication", p.value));
                }
            }
        }
        auth_seen |= cmd.verb() == crate::command::Verb::Auth;
        in_sasl = cmd.verb() == crate::command::Verb::Auth;
        if cmd == crate::command::Command::Data {
            // The body: up to the first end of data (which may be at once).
            let mut body = Vec::with_capacity(rest.len() + 2);
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(rest);
            let end = find(&body, b"\r\n.\r\n");
            let text = &body[..end.map_or(body.len(), |e| e + 2)];
            if let Some(line) = text
                .split(|&b| b == b'\n')
                .find(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > crate::data::MAX_LINE)
            {
                return Err(format!("a body line of {} octets", line.len()));
            }
            match end {
                Some(end) => rest = &rest[end + 3..],
                None => return Ok(()), // aborted mid-message: the backend discards it
            }
        }
    }
    Ok(())
}
