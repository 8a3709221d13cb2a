//! Interoperability with OpenSMTPD as the legacy backend: the real `smtp-sidecar` binary in
//! front of a real OpenSMTPD 7 (Debian's opensmtpd, unpacked under target/interop-tools/opensmtpd
//! by scripts/test.sh) that offers STARTTLS and implicit TLS (`smtps`) with a certificate from a
//! test CA. OpenSMTPD relays every message it accepts, in plaintext, to a recording sink on
//! 127.0.0.1, so the test sees the message byte for byte as OpenSMTPD sends it on, stuffed again
//! for that hop, under the Received header fields on top (OpenSMTPD's, and the sidecar's where a
//! test asks for it), which are checked apart (local delivery would need its helpers at
//! /usr/libexec/opensmtpd, which is not installed). The client is the tests' own
//! (tests/common/legacy_backend.rs). A missing OpenSMTPD is a failure, never a skip. smtpd must
//! be started as root (it drops privileges itself), as scripts/test.sh and CI run.
//!
//! - delivery from a STARTTLS client and from an implicit-TLS one: leading dots unstuffed
//!   exactly once, OpenSMTPD's STARTTLS never shown (both EHLO replies compared in full), the
//!   hop plaintext, both Received headers;
//! - smuggling under `bare_newlines: reject` (each attempt refused, nothing relayed, the clean
//!   message after them relayed alone) and `normalize`;
//! - the sidecar's encrypted hop to it, STARTTLS and implicit, verified against the test CA and
//!   127.0.0.1: `with ESMTPS ... (TLSv1.3:...)` in OpenSMTPD's Received header, the session
//!   that carried the message `smtp tls ciphers=TLSv1.3:...` in its log;
//! - OpenSMTPD as the next hop of an originate listener that requires a client certificate
//!   (`tls-require verify`): `domain-secure` delivers, OpenSMTPD marking the session's client
//!   certificate verified (`:YES` in its Received header) and the sidecar counting the message
//!   as domain-secure; `verify`, which presents none, is refused by OpenSMTPD after the TLS 1.3
//!   handshake and the RCPT deferred as the policy's failure.
//! - OpenSMTPD as an inbound Domain Security partner, relaying to the sidecar over mandatory
//!   STARTTLS with the partner's certificate (`pki partner` on its relay action): the message
//!   reaches the backend byte for byte under both Received headers, counted as domain-secure;
//!   without the certificate it is deferred at MAIL FROM (`450 4.7.1`) and stays queued.
//!
//! smtpd's queue (/var/spool/smtpd) and control socket (/var/run/smtpd.sock) are compiled in
//! and system-wide, so one instance runs at a time: the tests of this file take turns, and an
//! instance of another process (control socket busy) is waited for. Each instance empties the
//! queue before its first delivery and as it ends (an OpenSMTPD installed on the machine would
//! lose its queue: scripts/test.sh only unpacks one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;
#[path = "common/originate.rs"]
mod support;

use common::binary::{start_binary, Binary};
use common::legacy_backend::{
    assert_received, ca_file, checked_session, ehlo, encrypted_hops, ids_masked, matches,
    received_header_yaml, replies, smuggling_attempts, spawn_logged, stuffed, transaction, BYE,
    MESSAGE, NORMALIZED, REFUSED, SMUGGLES,
};
use common::next_hop::NextHopPki;
use common::pki::{Leaf, Pki, Spec};
use common::process::{exactly, free_port, wait_accepting, TempDir};
use common::{config_yaml, recording_backend, Client, Recorder};
use partner_pki::{
    partner_sidecar, refused_once_for_want_of_a_certificate, PartnerPki, RECEIVED_FROM_PARTNER_1,
};
use support::{
    counted_one_domain_secure, deferred_for_want_of_a_client_certificate, legacy, quit, relaying_to,
};

/// One OpenSMTPD at a time in this process.
static TURN: Mutex<()> = Mutex::new(());

/// smtpd, stopped with SIGTERM when dropped (it then stops its privilege-separated children and
/// leaves the control socket free), SIGKILL if it is still there after 5 s.
struct Smtpd(Child);

impl Drop for Smtpd {
    fn drop(&mut self) {
        let pid = self.0.id().to_string();
        let term = Command::new("sh")
            .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while term.is_ok() && Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The unpacked smtpd, which must be OpenSMTPD 7 or later: 6.8 (Debian 12's own) fails every
/// TLS handshake it accepts when linked with OpenSSL 3.
fn smtpd_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-tools/opensmtpd");
    let smtpd = root.join("usr/sbin/smtpd");
    let users = ["opensmtpd", "opensmtpq"].iter().all(|u| {
        let found = Command::new("getent").args(["passwd", u]).output();
        found.is_ok_and(|o| o.status.success())
    });
    // Its usage, with the version, goes to stderr.
    let usage = Command::new(&smtpd).arg("-h").output();
    let usage = usage.map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let version = usage.unwrap_or_default();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("version: OpenSMTPD "));
    let major: Option<u32> = version.and_then(|v| v.split('.').next()?.parse().ok());
    assert!(
        major.is_some_and(|m| m >= 7) && users && Path::new("/var/lib/opensmtpd/empty").is_dir(),
        "{} missing or older than OpenSMTPD 7 ({version:?}), or the opensmtpd/opensmtpq users or \
         /var/lib/opensmtpd/empty: run scripts/test.sh (it unpacks Debian's opensmtpd 7 there \
         and creates them)",
        smtpd.display()
    );
    smtpd
}

/// OpenSMTPD in the foreground on 127.0.0.1 as legacy.test, with `leaf` for its TLS: STARTTLS
/// on `port`, implicit TLS on `implicit_port`, accepting mail for y.test and relaying it to a
/// recording sink. Its log (every SMTP line traced) is printed when a test fails. Fields drop in
/// order: smtpd, its directory, then our turn.
struct OpenSmtpd {
    port: u16,
    implicit_port: u16,
    sink: Recorder,
    _smtpd: Smtpd,
    dir: TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl OpenSmtpd {
    /// Waits (60 s at most) while another process's instance holds the control socket. The
    /// sink runs on the test's runtime, which must have a worker thread of its own
    /// (`multi_thread`): the waits of the test block the thread it runs on.
    async fn start(leaf: &Leaf) -> OpenSmtpd {
        OpenSmtpd::start_with(leaf, "", "tls").await
    }

    /// With `main` lines first in its configuration, and `tls` the TLS options of its
    /// STARTTLS listener.
    async fn start_with(leaf: &Leaf, main: &str, tls: &str) -> OpenSmtpd {
        OpenSmtpd::start_routing(leaf, main, tls, None).await
    }

    /// With `routing`, its `action` and `match` lines, instead of relaying y.test to the
    /// sink.
    async fn start_routing(leaf: &Leaf, main: &str, tls: &str, routing: Option<&str>) -> OpenSmtpd {
        let (sink_addr, sink) = recording_backend().await;
        let routing = routing.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "action \"sink\" relay host smtp+notls://127.0.0.1:{sink} helo legacy.test\n\
                 match from src 127.0.0.1 for domain y.test action \"sink\"\n",
                sink = sink_addr.port()
            )
        });
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let smtpd = smtpd_binary();
        let dir = TempDir::new("opensmtpd");
        // smtpd refuses a key file that anyone but its owner, root, may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&leaf.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (conf, log) = (dir.0.join("smtpd.conf"), dir.0.join("smtpd.log"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut failures = 0;
        loop {
            let (port, implicit_port) = (free_port(), free_port());
            let text = format!(
                "{main}pki legacy.test cert \"{cert}\"\npki legacy.test key \"{key}\"\n\
                 listen on 127.0.0.1 port {port} {tls} pki legacy.test hostname legacy.test\n\
                 listen on 127.0.0.1 port {implicit_port} smtps pki legacy.test \
                 hostname legacy.test\n{routing}",
                cert = leaf.cert.display(),
                key = leaf.key.display(),
            );
            std::fs::write(&conf, text).unwrap();
            // -d: foreground, log to stderr; -T smtp: trace every SMTP line (for failures).
            let mut cmd = Command::new(&smtpd);
            // -P mta: no delivery until the queue is emptied of what earlier tests left; -v
            // for the debug line that says the queue on disk is all in its scheduler.
            cmd.args(["-d", "-v", "-T", "smtp", "-P", "mta", "-f"])
                .arg(&conf);
            // OpenSMTPD looks up the name of every client address (and checks it forward) with
            // its own resolver, libasr, which reads RES_OPTIONS as lines of resolv.conf: this
            // newline makes it read /etc/hosts only, never ask the DNS servers of
            // /etc/resolv.conf.
            cmd.env("RES_OPTIONS", "\nlookup file");
            let mut child = Smtpd(spawn_logged(&mut cmd, &log));
            // Both ports are bound before either accepts; a probe of the implicit one would
            // leave an aborted handshake in the log.
            if wait_accepting(&mut child.0, port) {
                let smtpd = OpenSmtpd {
                    port,
                    implicit_port,
                    sink,
                    _smtpd: child,
                    dir,
                    _turn: turn,
                };
                // The queue outlives the process: what an earlier test left there (a message
                // deferred on purpose, a run cut short) must not be delivered in this one.
                // Once smtpd has loaded it (what it has not loaded, `remove all` misses), it
                // is emptied, and deliveries start.
                let loaded = "queue: done loading queue into scheduler";
                let until = Instant::now() + Duration::from_secs(10);
                while !smtpd.log().contains(loaded) {
                    assert!(Instant::now() < until, "no {loaded:?}:\n{}", smtpd.log());
                    std::thread::sleep(Duration::from_millis(20));
                }
                for args in [["remove", "all"], ["resume", "mta"]] {
                    if let Err(e) = smtpd.smtpctl(&args) {
                        panic!("{e}");
                    }
                }
                return smtpd;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("control socket already listening") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            eprintln!("smtpd exited (port {port} or {implicit_port} taken?):\n{text}");
            failures += 1;
            assert!(failures < 3, "smtpd did not start");
        }
    }

    /// Its STARTTLS port.
    fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The messages relayed to the sink once there are `n` (20 s at most), and no more: each as
    /// sent, dot-stuffed, with the final `.` line.
    fn relayed_when(&self, n: usize) -> Vec<Vec<u8>> {
        exactly(n, "messages relayed", Duration::from_secs(20), || {
            self.sink.messages()
        })
    }

    /// `smtpctl show queue`: a line per envelope in its queue.
    fn queue(&self) -> String {
        self.smtpctl(&["show", "queue"])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// smtpctl with `args`, through smtpd's control socket: what it printed. smtpctl insists
    /// on running with the group opensmtpq (it is installed setgid, which unpacking does not
    /// do): `setpriv` gives it that group.
    fn smtpctl(&self, args: &[&str]) -> Result<String, String> {
        let smtpctl = smtpd_binary().with_file_name("smtpctl");
        // Within 10 s: a stuck smtpd must not hang the test, nor its Drop.
        let mut cmd = Command::new("timeout");
        cmd.args(["10", "setpriv", "--egid", "opensmtpq", "--keep-groups"])
            .arg(smtpctl);
        match cmd.args(args).output() {
            Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
            done => Err(format!("smtpctl {args:?}: {done:?}")),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("smtpd.log")).unwrap_or_default()
    }

    /// For each message OpenSMTPD accepted (`smtp message` in its log), in order, the TLS its
    /// session had (`smtp tls ciphers=...` of the same session), `None` for plaintext.
    fn message_tls(&self) -> Vec<Option<String>> {
        let log = self.log();
        let session_tls = |session: &str| {
            let tls = format!("{session} smtp tls ciphers=");
            log.lines()
                .find_map(|l| l.strip_prefix(&tls).map(str::to_owned))
        };
        log.lines()
            .filter_map(|l| l.split_once(" smtp message msgid="))
            .map(|(session, _)| session_tls(session))
            .collect()
    }
}

impl Drop for OpenSmtpd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- smtpd ---\n{}", self.log());
        }
        // Nothing left queued for a later instance to deliver (the next start empties the
        // queue again, for a run cut short).
        if let Err(e) = self.smtpctl(&["remove", "all"]) {
            eprintln!("{e}");
        }
    }
}

/// OpenSMTPD's EHLO reply (but for its first line), and what the client is shown of it through
/// the sidecar, before STARTTLS and after it: all it offers (7.4 has no PIPELINING) but its
/// STARTTLS.
const EHLO: &str = "250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n\
                    250-STARTTLS\r\n250 HELP\r\n";
const SHOWN: [&str; 2] = [
    "250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n\
     250-HELP\r\n250 STARTTLS\r\n",
    "250-mx.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n\
     250 HELP\r\n",
];

/// Replies to a transaction OpenSMTPD accepts, its message id masked by [`masked`].
const ACCEPTED: [&str; 4] = [
    "250 2.0.0 Ok\r\n",
    "250 2.1.5 Destination address valid: Recipient ok\r\n",
    "354 Enter mail, end with \".\" on a line by itself\r\n",
    "250 2.0.0 <id> Message accepted for delivery\r\n",
];

fn masked(replies: &[String]) -> Vec<String> {
    ids_masked(replies, "250 2.0.0 ", " Message accepted for delivery\r\n")
}

/// OpenSMTPD's Received header on a message from the shared client over a plaintext hop, and
/// over TLS 1.3 (`NO`: no client certificate), as [`matches`] patterns; the name in
/// parentheses is 127.0.0.1's in /etc/hosts.
const OPENSMTPD_RECEIVED: &str = "Received: from client.test (* [127.0.0.1])\n\
    \tby legacy.test (OpenSMTPD) with ESMTP id *\n\tfor <b@y.test>;\n\t* +0000 (UTC)";
const OPENSMTPD_RECEIVED_TLS: &str = "Received: from client.test (* [127.0.0.1])\n\
    \tby legacy.test (OpenSMTPD) with ESMTPS id * (TLSv1.3:TLS_*:NO)\n\tfor <b@y.test>;\n\
    \t* +0000 (UTC)";

/// `relayed` without the Date and Message-ID fields OpenSMTPD adds, last in the header, to a
/// message that has neither (such as [`NORMALIZED`]); they must be there.
#[track_caller]
fn without_added_fields(relayed: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(relayed.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (head, added) = head.rsplit_once("\r\nDate: ").unwrap_or((head, ""));
    let pattern = "* +0000 (UTC)\r\nMessage-ID: <*@legacy.test>";
    assert!(
        matches(pattern, added),
        "no Date and Message-ID added:\n{text}"
    );
    format!("{head}\r\n\r\n{body}").into_bytes()
}

/// A STARTTLS session through `sidecar` to OpenSMTPD, shown [`SHOWN`]: the replies, its
/// message ids masked.
async fn session(sidecar: &Binary, data: &[Vec<u8>], what: &str) -> Vec<String> {
    let addr = sidecar.addr("inbound").unwrap();
    masked(&checked_session(addr, SHOWN, data, what).await)
}

/// OpenSMTPD (with a certificate for legacy.test and 127.0.0.1 from a test CA) and the sidecar
/// in front of it on a plaintext hop, its listener `tls`, with these policy lines and its
/// Received header when `received`.
async fn setup(tls: &str, policy: &str, received: bool) -> (OpenSmtpd, Binary, Pki) {
    let pki = Pki::new("opensmtpd-pki");
    let leaf = pki.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"]));
    let smtpd = OpenSmtpd::start(&leaf).await;
    let yaml = match received {
        true => received_header_yaml(smtpd.addr(), tls, policy),
        false => config_yaml(smtpd.addr(), tls, policy),
    };
    (smtpd, start_binary(&yaml), pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn opensmtpd_backend_starttls_delivery() {
    let (smtpd, sidecar, _pki) = setup("starttls", "", true).await;
    // OpenSMTPD offers STARTTLS itself: what the client must never be shown.
    let hello = "250-legacy.test Hello client.test [127.0.0.1], pleased to meet you\r\n";
    assert_eq!(ehlo(smtpd.addr()).await, format!("{hello}{EHLO}"));

    // The client's EHLO after STARTTLS has the name of its first: answered from OpenSMTPD's
    // first reply, it never sees a second one.
    let replies_seen = session(&sidecar, &[stuffed(MESSAGE)], "delivery").await;
    assert_eq!(replies_seen, replies(ACCEPTED, &[ACCEPTED[3]]));
    // Both Received headers, the hop plaintext (no TLS in the log for its session either).
    let relayed = &smtpd.relayed_when(1)[0];
    assert_received(relayed, &stuffed(MESSAGE), OPENSMTPD_RECEIVED, true);
    assert_eq!(smtpd.message_tls(), [None]);

    // Another name after STARTTLS: OpenSMTPD refuses a second EHLO in a session (`503 5.5.1
    // Invalid command: Already identified`), so it reaches OpenSMTPD on a fresh connection.
    let mut c = Client::starttls_session_as(sidecar.addr("inbound").unwrap(), "other.test").await;
    let replies_seen = transaction(&mut c, &stuffed(MESSAGE)).await;
    assert_eq!(masked(&replies_seen), ACCEPTED);
    assert_eq!(c.cmd("QUIT").await, BYE);
    let relayed = &smtpd.relayed_when(2)[1];
    let ours = "Received: from other.test ([127.0.0.1])";
    assert!(
        String::from_utf8_lossy(relayed).contains(ours),
        "{relayed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn opensmtpd_backend_implicit_tls_client_delivery() {
    let (smtpd, sidecar, _pki) = setup("implicit", "", true).await;
    let mut c = Client::connect_implicit(sidecar.addr("inbound").unwrap()).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(c.cmd("EHLO client.test").await, SHOWN[1]);
    let replies_seen = transaction(&mut c, &stuffed(MESSAGE)).await;
    assert_eq!(masked(&replies_seen), ACCEPTED);
    assert_eq!(c.cmd("QUIT").await, BYE);
    let relayed = &smtpd.relayed_when(1)[0];
    assert_received(relayed, &stuffed(MESSAGE), OPENSMTPD_RECEIVED, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn opensmtpd_backend_smuggling_refused() {
    let (smtpd, sidecar, _pki) = setup("starttls", "      bare_newlines: reject\n", false).await;
    let mut data = smuggling_attempts();
    data.push(stuffed(MESSAGE));
    let ends = [REFUSED, REFUSED, REFUSED, ACCEPTED[3]];
    assert_eq!(
        session(&sidecar, &data, "reject").await,
        replies(ACCEPTED, &ends)
    );
    // Only the clean message: nothing of the refused ones, smuggled or not, accepted or relayed.
    let relayed = &smtpd.relayed_when(1)[0];
    assert_received(relayed, &stuffed(MESSAGE), OPENSMTPD_RECEIVED, false);
    assert_eq!(smtpd.message_tls(), [None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn opensmtpd_backend_smuggling_normalized_into_body() {
    let policy = "      bare_newlines: normalize\n";
    let (smtpd, sidecar, _pki) = setup("starttls", policy, false).await;
    let ends = [ACCEPTED[3]; SMUGGLES.len()];
    let replies_seen = session(&sidecar, &smuggling_attempts(), "normalize").await;
    assert_eq!(replies_seen, replies(ACCEPTED, &ends));
    for relayed in smtpd.relayed_when(SMUGGLES.len()) {
        let relayed = without_added_fields(&relayed);
        assert_received(&relayed, &stuffed(NORMALIZED), OPENSMTPD_RECEIVED, false);
    }
}

/// The sidecar's encrypted hop to OpenSMTPD (OpenSSL), STARTTLS and implicit TLS (`smtps`),
/// verified against the test CA and the server's IP address: the message arrives byte for
/// byte, and OpenSMTPD records the hop as TLS 1.3 (in its Received header, and in its log for
/// the session that carried the message).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sidecar_encrypted_hop_to_opensmtpd() {
    let pki = Pki::new("opensmtpd-hop-pki");
    let ca = ca_file(&pki);
    let leaf = pki.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"]));
    let smtpd = OpenSmtpd::start(&leaf).await;
    for (n, hop, sidecar) in encrypted_hops(smtpd.port, smtpd.implicit_port, &ca) {
        let replies_seen = session(&sidecar, &[stuffed(MESSAGE)], hop).await;
        assert_eq!(replies_seen, replies(ACCEPTED, &[ACCEPTED[3]]), "{hop}");
        let relayed = &smtpd.relayed_when(n + 1)[n];
        assert_received(relayed, &stuffed(MESSAGE), OPENSMTPD_RECEIVED_TLS, false);
        let tls = smtpd.message_tls();
        let tls13 = |t: &Option<String>| t.as_ref().is_some_and(|t| t.starts_with("TLSv1.3:"));
        assert!(
            tls.len() == n + 1 && tls.iter().all(tls13),
            "{hop}: {tls:?}"
        );
    }
}

/// OpenSMTPD as the next hop of an originate listener, with a certificate from the next hops'
/// test root for legacy.test and 127.0.0.1, requiring a client certificate from that root
/// (`tls-require verify`).
async fn opensmtpd_requiring_client_certificates(pki: &NextHopPki) -> OpenSmtpd {
    let leaf = pki
        .root
        .leaf("opensmtpd-hop", Spec::ca(&["legacy.test", "127.0.0.1"]));
    let main = format!("ca partners cert \"{}\"\n", pki.root_file.display());
    OpenSmtpd::start_with(&leaf, &main, "tls-require verify ca partners").await
}

/// Outbound Domain Security with a real MTA: the sidecar relays to OpenSMTPD (OpenSSL), which
/// requires a client certificate. At `domain-secure` the sidecar presents ours, verifies
/// OpenSMTPD's against the root and 127.0.0.1, and the message arrives byte for byte;
/// OpenSMTPD's Received header says the session was TLS 1.3 with a verified client
/// certificate (`:YES`), and the sidecar counts one domain-secure message sent to y.test.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sidecar_delivers_domain_secure_to_opensmtpd() {
    let pki = NextHopPki::new();
    let smtpd = opensmtpd_requiring_client_certificates(&pki).await;
    let sidecar = relaying_to(&pki, smtpd.addr(), "domain-secure").await;
    let mut client = legacy(&sidecar).await;
    // OpenSMTPD's replies, passed through.
    assert_eq!(client.cmd("RCPT TO:<b@y.test>").await, ACCEPTED[1]);
    assert_eq!(client.cmd("DATA").await, ACCEPTED[2]);
    client.send(support::BODY).await;
    let eod = masked(&[client.reply().await]);
    assert_eq!(eod, [ACCEPTED[3]]);
    quit(client).await;
    let theirs = "Received: from mx.test (* [127.0.0.1])\n\
        \tby legacy.test (OpenSMTPD) with ESMTPS id * (TLSv1.3:TLS_*:YES)\n\
        \tfor <b@y.test>;\n\t* +0000 (UTC)";
    let relayed = without_added_fields(&smtpd.relayed_when(1)[0]);
    assert_received(&relayed, support::BODY, theirs, false);
    counted_one_domain_secure(&sidecar, "a domain-secure delivery").await;
}

/// At `verify` the sidecar presents no client certificate; OpenSMTPD, requiring one, ends the
/// session with TLS 1.3's `certificate_required` alert after our side of the handshake is
/// done. The sidecar takes that as the TLS policy unmet: the RCPT is deferred with
/// `450 4.7.5`; OpenSMTPD logs why.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn opensmtpd_refusing_a_session_without_client_certificate_defers_the_rcpt() {
    let pki = NextHopPki::new();
    let smtpd = opensmtpd_requiring_client_certificates(&pki).await;
    let sidecar = relaying_to(&pki, smtpd.addr(), "verify").await;
    deferred_for_want_of_a_client_certificate(&sidecar).await;
    // The refusal was OpenSMTPD's, for want of a certificate.
    let refused = "smtp disconnected reason=\"io-error: handshake failed: \
                   error:0A0000C7:SSL routines::peer did not return a certificate\"";
    common::eventually(|| smtpd.log().contains(refused), refused).await;
}

/// OpenSMTPD (OpenSSL) as a Domain Security partner: mail it is given for example.test goes to
/// the sidecar at `sidecar` over mandatory STARTTLS, as mail.woodgrovebank.com, the sidecar's
/// certificate verified against the CA file `ca` and 127.0.0.1; with `presenting`, the
/// partner's certificate (leaf and intermediate) for the client's side. The test gives it the
/// message on its own STARTTLS listener, in plaintext. The PKI of its listeners is returned
/// with it.
async fn opensmtpd_partner(
    pki: &PartnerPki,
    sidecar: SocketAddr,
    ca: &Path,
    presenting: bool,
) -> (OpenSmtpd, Pki) {
    use std::os::unix::fs::PermissionsExt;
    let key = &pki.partner.key_file;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let own = Pki::new("opensmtpd-partner-pki");
    let leaf = own.leaf("legacy", Spec::ca(&["legacy.test", "127.0.0.1"]));
    let main = format!(
        "pki partner cert \"{}\"\npki partner key \"{}\"\nca sidecar cert \"{}\"\n",
        pki.partner.cert_file.display(),
        key.display(),
        ca.display()
    );
    let client_certificate = if presenting { " pki partner" } else { "" };
    let routing = format!(
        "action \"partner\" relay host smtp+tls://127.0.0.1:{port}{client_certificate} \
         ca sidecar helo mail.woodgrovebank.com\n\
         match from src 127.0.0.1 for domain example.test action \"partner\"\n",
        port = sidecar.port()
    );
    let smtpd = OpenSmtpd::start_routing(&leaf, &main, "tls", Some(&routing)).await;
    (smtpd, own)
}

/// A message as its author wrote it, with a Date and a Message-ID (so that OpenSMTPD adds no
/// header field but its Received one), a leading dot and a line of a single dot.
const PARTNER_MESSAGE: &[u8] = b"From: someone@woodgrovebank.com\r\nTo: bob@example.test\r\n\
    Subject: OpenSMTPD partner\r\nDate: Fri, 04 Dec 2026 12:00:00 +0000\r\n\
    Message-ID: <opensmtpd-partner-1@woodgrovebank.com>\r\n\r\n\
    first line\r\n.leading dot\r\n.\r\nlast line\r\n";

/// Give OpenSMTPD [`PARTNER_MESSAGE`] from someone@woodgrovebank.com to bob@example.test on
/// its own listener, and see it accepted there.
async fn give(smtpd: &OpenSmtpd) {
    let mut c = Client::connect(smtpd.addr()).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("220 legacy.test "), "{greeting}");
    let hello = c.cmd("EHLO client.test").await;
    assert!(hello.starts_with("250-legacy.test "), "{hello}");
    let mut seen = vec![c.cmd("MAIL FROM:<someone@woodgrovebank.com>").await];
    seen.push(c.cmd("RCPT TO:<bob@example.test>").await);
    seen.push(c.cmd("DATA").await);
    c.send(&stuffed(PARTNER_MESSAGE)).await;
    seen.push(c.reply().await);
    assert_eq!(masked(&seen), ACCEPTED);
    assert_eq!(c.cmd("QUIT").await, BYE);
}

/// Inbound Domain Security with OpenSMTPD as the partner: it relays the message it was given
/// to the sidecar, verifying the sidecar's certificate and presenting the partner's when the
/// sidecar asks; the sidecar verifies that against the root and woodgrovebank.com. The message
/// reaches the backend byte for byte (dot-stuffed once on the wire) under the sidecar's
/// Received header naming the certificate, then OpenSMTPD's; OpenSMTPD logs the backend's
/// reply, passed back, as its delivery's result; the sidecar counts one domain-secure message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensmtpd_partner_with_its_certificate_is_domain_secure() {
    let pki = PartnerPki::new();
    let (sidecar, backend, ca, _ours) = partner_sidecar(&pki).await;
    let addr = sidecar.addr("inbound").unwrap();
    let (smtpd, _own) = opensmtpd_partner(&pki, addr, &ca, true).await;
    give(&smtpd).await;
    common::eventually(|| !backend.messages().is_empty(), "relayed to the backend").await;
    let messages = backend.messages();
    assert_eq!(messages.len(), 1);
    let want = format!(
        "{}Received: from client.test (* [127.0.0.1])\r\n\
         \tby legacy.test (OpenSMTPD) with ESMTP id *\r\n\tfor <bob@example.test>;\r\n\
         \t* +0000 (UTC)\r\n",
        pki.sidecar_received()
    );
    let data = String::from_utf8(messages[0].clone()).unwrap();
    let (trace, rest) = data.split_at(data.find("From: ").unwrap());
    assert!(matches(&want, trace), "got:\n{trace}\nwant:\n{want}");
    common::legacy_backend::assert_bytes(rest.as_bytes(), &stuffed(PARTNER_MESSAGE));
    // OpenSMTPD's delivery, over TLS 1.3 with our certificate verified, took the backend's
    // reply to the end of data, passed back.
    let log = smtpd.log();
    for step in [
        " mta tls ciphers=TLSv1.3:",
        " mta cert-check result=\"valid\" ",
    ] {
        assert!(log.contains(step), "{step}:\n{log}");
    }
    let delivered = log.lines().find(|l| l.contains(" result=\"Ok\" "));
    let delivered = delivered.unwrap_or_else(|| panic!("no delivery logged:\n{log}"));
    assert!(
        delivered.contains(" stat=\"250 2.0.0 Ok: queued as "),
        "{delivered}"
    );
    let metrics = sidecar.metrics.render();
    assert!(
        metrics.lines().any(|l| l == RECEIVED_FROM_PARTNER_1),
        "{metrics}"
    );
}

/// Without a certificate OpenSMTPD is deferred at MAIL FROM (`450 4.7.1`, naming the domain
/// and what was missing), logs that as a temporary failure and keeps the message; nothing
/// reaches the backend, and the refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opensmtpd_partner_without_a_certificate_is_deferred() {
    let pki = PartnerPki::new();
    let (sidecar, backend, ca, _ours) = partner_sidecar(&pki).await;
    let addr = sidecar.addr("inbound").unwrap();
    let (smtpd, _own) = opensmtpd_partner(&pki, addr, &ca, false).await;
    give(&smtpd).await;
    let deferred = "result=\"TempFail\" stat=\"450 4.7.1 Domain Security: mail from \
                    woodgrovebank.com requires mutual TLS; no client certificate\"";
    common::eventually(|| smtpd.log().contains(deferred), deferred).await;
    // Kept for a later try: pending once the scheduler has heard of the failure (it may be
    // in flight still when the log line is written).
    let pending = || smtpd.queue().contains("|pending|");
    common::eventually(pending, "the message pending in the queue").await;
    let queue = smtpd.queue();
    assert_eq!(queue.lines().count(), 1, "{queue}");
    let kept = "|someone@woodgrovebank.com|bob@example.test|bob@example.test|";
    assert!(queue.contains(kept), "{queue}");
    refused_once_for_want_of_a_certificate(&sidecar, &backend);
}
