//! What the tests of a real legacy MTA behind the real binary do, whichever MTA it is
//! (tests/interop_postfix_backend.rs, tests/interop_aiosmtpd.rs, tests/interop_exim.rs,
//! tests/interop_opensmtpd.rs): a client on STARTTLS delivers a message whose lines start with
//! dots, seeing the sidecar's EHLO replies and certificate; smuggling attempts; the sidecar's
//! encrypted hop. The tests compare what the MTA stored with [`MESSAGE`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::binary::{start_binary, Binary};
use super::pki::Pki;
use super::{config_yaml, showing_client_config, Client};

/// A message as its author wrote it: lines a transparency bug would change (a leading dot,
/// two, a line of a single dot, one of two), white space at both ends, an empty line.
pub const MESSAGE: &[u8] = b"From: Alice <a@x.test>\r\n\
    To: Bob <b@y.test>\r\n\
    Subject: legacy backend\r\n\
    Date: Mon, 1 Jun 2026 10:00:00 +0000\r\n\
    Message-ID: <legacy-backend@x.test>\r\n\
    \r\n\
    first line\r\n\
    .leading dot\r\n\
    ..two dots\r\n\
    .\r\n\
    ..\r\n\
    \x20 spaced \t\r\n\
    \r\n\
    last line\r\n";

/// The sender and recipient every test uses.
pub const FROM: &str = "a@x.test";
pub const TO: &str = "b@y.test";

/// The bogus ends of data a smuggler tries (SPEC §1 principle 2, DESIGN §4), each followed in
/// [`smuggling_data`] by a whole second transaction.
pub const SMUGGLES: [&[u8]; 3] = [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"];

/// The sidecar's reply to any of [`SMUGGLES`] under `bare_newlines: reject`.
pub const REFUSED: &str = "550 5.6.11 Bare line feed or carriage return not allowed\r\n";

/// The sidecar's own reply to QUIT.
pub const BYE: &str = "221 2.0.0 Bye\r\n";

/// What a smuggler sends after DATA, one transaction for each of [`SMUGGLES`].
pub fn smuggling_attempts() -> Vec<Vec<u8>> {
    SMUGGLES.iter().map(|eod| smuggling_data(eod)).collect()
}

/// What a smuggler sends after DATA: `eod`, then a transaction for victim@y.test, then the
/// real end of data.
pub fn smuggling_data(eod: &[u8]) -> Vec<u8> {
    let mut m = b"Subject: smuggle\r\n\r\nhello".to_vec();
    m.extend_from_slice(eod);
    m.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n");
    m.extend_from_slice(b"smuggled\r\n.\r\n");
    m
}

/// What each of [`smuggling_data`] is under `bare_newlines: normalize`: the bogus end of data
/// a line of a single dot (stuffed by the sidecar, unstuffed by the backend), the smuggled
/// commands body text of the one message.
pub const NORMALIZED: &[u8] = b"Subject: smuggle\r\n\r\nhello\r\n.\r\n\
    MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n";

/// `message` as SMTP carries it: a dot doubled at the start of every line (RFC 5321 §4.5.2),
/// then the end of data.
pub fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// CRLF line ends made LF, as MTAs that store in files write them.
pub fn lf(message: &[u8]) -> Vec<u8> {
    String::from_utf8(message.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes()
}

/// What a client saw of one STARTTLS session.
#[derive(Debug)]
pub struct Session {
    /// The EHLO reply before STARTTLS, and after it.
    pub ehlo_plain: String,
    pub ehlo_tls: String,
    /// The replies to MAIL, RCPT, DATA and the end of data of each message, then to QUIT.
    pub replies: Vec<String>,
}

/// Greeting, EHLO, STARTTLS (the certificate shown must be the sidecar's own, for mx.test,
/// never the backend's), EHLO, then a transaction from [`FROM`] to [`TO`] for each of
/// `data` (what follows DATA, sent as it is: [`stuffed`] or [`smuggling_data`]), then QUIT.
pub async fn starttls_session(sidecar: SocketAddr, data: &[Vec<u8>]) -> Session {
    let mut c = Client::connect(sidecar).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    let ehlo_plain = c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (mut c, certificate) = upgrade(c).await;
    let shown = smtp_sidecar::tls::CertInfo::from_der(&certificate).unwrap();
    assert_eq!(shown.sans, ["mx.test"], "not the sidecar's certificate");
    let ehlo_tls = c.cmd("EHLO client.test").await;
    let mut replies = Vec::new();
    for data in data {
        replies.extend(transaction(&mut c, data).await);
    }
    replies.push(c.cmd("QUIT").await);
    Session {
        ehlo_plain,
        ehlo_tls,
        replies,
    }
}

/// After a `220` to STARTTLS: the handshake, and the certificate the server showed (DER).
pub async fn upgrade(c: Client) -> (Client, Vec<u8>) {
    let (config, seen) = showing_client_config(None);
    let c = c.try_upgrade(Arc::new(config)).await.unwrap();
    let certificate = seen.lock().unwrap().take().unwrap();
    (c, certificate)
}

/// MAIL FROM [`FROM`], RCPT TO [`TO`], DATA, then `data` as it is: the four replies.
pub async fn transaction(c: &mut Client, data: &[u8]) -> Vec<String> {
    let mut replies = Vec::new();
    replies.push(c.cmd(&format!("MAIL FROM:<{FROM}>")).await);
    replies.push(c.cmd(&format!("RCPT TO:<{TO}>")).await);
    replies.push(c.cmd("DATA").await);
    c.send(data).await;
    replies.push(c.reply().await);
    replies
}

/// The replies a [`starttls_session`] expects: for each transaction those to MAIL, RCPT and
/// DATA (the first three of `accepted`), then its entry of `ends`; last, the one to QUIT.
pub fn replies(accepted: [&'static str; 4], ends: &[&'static str]) -> Vec<&'static str> {
    let mut all = Vec::new();
    for end in ends {
        all.extend_from_slice(&accepted[..3]);
        all.push(*end);
    }
    all.push(BYE);
    all
}

/// The EHLO reply of an SMTP server at `addr`, asked directly.
pub async fn ehlo(addr: SocketAddr) -> String {
    let mut c = Client::connect(addr).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    c.cmd("EHLO client.test").await
}

/// Byte for byte, both sides shown escaped when they differ.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8]) {
    let (g, w) = (got.escape_ascii(), want.escape_ascii());
    assert!(got == want, "got:  {g}\nwant: {w}");
}

/// The test CA of `pki` written to `<dir>/ca.pem`, for the sidecar's `trust`.
pub fn ca_file(pki: &Pki) -> PathBuf {
    let ca = pki.dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    ca
}

/// [`config_yaml`] (a STARTTLS listener with these policy lines) with the hop to `backend`
/// encrypted (`hop`: `starttls` or `implicit`) and verified against the CA file `ca` alone, and
/// health checks an hour apart, so that none comes among the sessions a test counts.
pub fn encrypted_hop_yaml(backend: SocketAddr, hop: &str, ca: &Path, policy: &str) -> String {
    let trust = format!(
        "trust: {{system_roots: false, ca_files: [\"{}\"]}}\n",
        ca.display()
    );
    let timeout = "      connect_timeout: 2s\n";
    let hop = format!("{timeout}      tls: {hop}\n      health_check_interval: 1h\n");
    let yaml = config_yaml(backend, "starttls", policy).replace(timeout, &hop);
    format!("{trust}{yaml}")
}

/// For an MTA listening on 127.0.0.1 with STARTTLS on `starttls` and implicit TLS on
/// `implicit`: each hop in turn (its index and name) with the sidecar in front of it
/// ([`encrypted_hop_yaml`], no policy lines), started when its turn comes.
pub fn encrypted_hops(
    starttls: u16,
    implicit: u16,
    ca: &Path,
) -> impl Iterator<Item = (usize, &'static str, Binary)> + '_ {
    let hops = [("starttls", starttls), ("implicit", implicit)];
    hops.into_iter().enumerate().map(move |(n, (hop, port))| {
        let backend = SocketAddr::from(([127, 0, 0, 1], port));
        (
            n,
            hop,
            start_binary(&encrypted_hop_yaml(backend, hop, ca, "")),
        )
    })
}

/// `cmd` spawned with no input and its output (stdout and stderr) to `log`, created anew: an
/// MTA daemon, whose log a failing test prints.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap());
    cmd.stderr(out).spawn().unwrap()
}

/// [`config_yaml`] with the sidecar's own Received header on.
pub fn received_header_yaml(backend: SocketAddr, tls: &str, policy: &str) -> String {
    let yaml = config_yaml(backend, tls, policy);
    yaml.replace("received_header: false", "received_header: true")
}

/// The Received header field the sidecar adds for the shared client on TLS 1.3, as a
/// [`matches`] pattern (its cipher and date vary).
pub const SIDECAR_RECEIVED: &str = "Received: from client.test ([127.0.0.1])\n\
    \tby mx.test (smtp-sidecar) with ESMTPS\n\
    \t(version=TLSv1.3 cipher=TLS13_*);\n\
    \t* +0000";

/// `stored` is `message` (as the MTA stores or relays it) under the MTA's Received header
/// `theirs` (a [`matches`] pattern) and, when `ours`, the sidecar's ([`SIDECAR_RECEIVED`]) below.
#[track_caller]
pub fn assert_received(stored: &[u8], message: &[u8], theirs: &str, ours: bool) {
    let (trace, rest) = split_received(stored);
    assert_bytes(&rest, message);
    let expected = match ours {
        true => format!("{theirs}\n{SIDECAR_RECEIVED}"),
        false => theirs.to_owned(),
    };
    let ok = matches(&expected, &trace);
    assert!(ok, "got:\n{trace}\nwant:\n{expected}");
}

/// A [`starttls_session`] through the sidecar at `sidecar` that shows the client `ehlo` (the
/// EHLO reply before STARTTLS, and after it): the replies to the transactions and to QUIT.
/// `what` names the case in a failure.
pub async fn checked_session(
    sidecar: SocketAddr,
    ehlo: [&str; 2],
    data: &[Vec<u8>],
    what: &str,
) -> Vec<String> {
    let session = starttls_session(sidecar, data).await;
    assert_eq!(session.ehlo_plain, ehlo[0], "{what}");
    assert_eq!(session.ehlo_tls, ehlo[1], "{what}");
    session.replies
}

/// Whether `text` is `pattern`, each `*` in which stands for any run of characters within one
/// line: exact but for what varies (ids, dates, ciphers), the number of lines included.
pub fn matches(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            let Some(text) = text.strip_prefix(head) else {
                return false;
            };
            let line = text.find('\n').unwrap_or(text.len());
            (0..=line).any(|n| matches(tail, &text[n..]))
        }
    }
}

/// A stored or relayed message split after the Received header fields on top (with their
/// continuation lines): those fields (LF line ends, none after the last), and the rest as it is.
pub fn split_received(stored: &[u8]) -> (String, Vec<u8>) {
    let mut lines = Vec::new();
    let mut at = 0;
    for line in stored.split_inclusive(|&b| b == b'\n') {
        let continued = !lines.is_empty() && line.starts_with(b"\t");
        if !(line.starts_with(b"Received: ") || continued) {
            break;
        }
        let text = String::from_utf8_lossy(line);
        lines.push(text.trim_end_matches(['\r', '\n']).to_owned());
        at += line.len();
    }
    (lines.join("\n"), stored[at..].to_vec())
}

/// `replies` with the queue id that an MTA puts between `before` and `after` in its reply to
/// the end of data replaced by `<id>`.
pub fn ids_masked(replies: &[String], before: &str, after: &str) -> Vec<String> {
    let mask = |r: &String| {
        let id = r.strip_prefix(before).and_then(|r| r.strip_suffix(after));
        match id {
            Some(id) if !id.is_empty() && !id.contains(' ') => format!("{before}<id>{after}"),
            _ => r.clone(),
        }
    };
    replies.iter().map(mask).collect()
}
