//! Domain Security with a real MTA as the partner: Debian's Postfix, run as a sending MTA of
//! its own (`postfix -c DIR start`, configuration, queue and data directories in a scratch
//! directory; the system's Postfix is never configured or started), relays a message injected
//! with its `sendmail` to the real `smtp-sidecar` binary (`relayhost = [127.0.0.1]:<port>`,
//! `smtp_tls_security_level = encrypt`), which passes it to a recording backend.
//!
//! With `smtp_tls_cert_file` = the partner's certificate for mail.woodgrovebank.com (with the
//! issuing CA's certificate after it) the message is domain-secure: delivered byte for byte,
//! the certificate named in the sidecar's Received header, counted on /metrics. Without it the
//! sidecar defers at MAIL FROM with `450 4.7.1` and the message stays in Postfix's deferred
//! queue with that reply, also after a forced retry, and nothing reaches the backend.
//!
//! Postfix must be started as root (its master drops privileges to the `postfix` user and
//! `postdrop` group the package creates), as scripts/test.sh and CI run. A missing Postfix is
//! a failure naming its Debian package, never a skip. Postfix logs to `<dir>/maillog`
//! (`maillog_file`, written by its postlogd), printed when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;
#[path = "common/postfix_mta.rs"]
mod postfix_mta;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::binary::{start_binary, Binary};
use common::process::{free_port, TempDir};
use common::{recording_backend, Recorder, T};
use partner_pki::PartnerPki;
use postfix_mta::{check_postfix, metric, run, scrape_until, text, POSTFIX, POSTQUEUE, SENDMAIL};

/// A Postfix instance of its own: `<dir>/conf` (main.cf, master.cf), `<dir>/queue`,
/// `<dir>/data`, `<dir>/maillog`. Stopped (then killed if need be) when dropped, before its
/// directory is removed.
struct Postfix {
    conf: PathBuf,
    dir: TempDir,
}

impl Postfix {
    /// Start Postfix relaying everything to `relay` over TLS (`encrypt`), with the extra
    /// main.cf lines `tls` (the client certificate or none).
    fn start(relay: SocketAddr, tls: &str) -> Postfix {
        check_postfix();
        let dir = TempDir::new("postfix");
        let d = |p: &str| dir.0.join(p);
        let conf = d("conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(d("queue")).unwrap();
        // Postfix creates the queue's subdirectories itself; its data directory (master.lock,
        // the PRNG seed) must belong to the postfix user.
        std::fs::create_dir_all(d("data")).unwrap();
        let chown = Command::new("chown").arg("postfix").arg(d("data")).output();
        assert!(chown.unwrap().status.success(), "chown postfix data");
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {queue}\n\
             data_directory = {data}\n\
             maillog_file = {dir}/maillog\n\
             maillog_file_prefixes = {dir}\n\
             myhostname = mail.woodgrovebank.com\n\
             mydomain = woodgrovebank.com\n\
             myorigin = $mydomain\n\
             mydestination =\n\
             relay_domains =\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             relayhost = [{ip}]:{port}\n\
             smtp_dns_support_level = disabled\n\
             smtp_host_lookup = native\n\
             smtp_connect_timeout = 5s\n\
             smtp_helo_timeout = 15s\n\
             smtp_mail_timeout = 15s\n\
             smtp_rcpt_timeout = 15s\n\
             smtp_data_init_timeout = 15s\n\
             smtp_data_xfer_timeout = 15s\n\
             smtp_data_done_timeout = 15s\n\
             smtp_tls_security_level = encrypt\n\
             smtp_tls_loglevel = 1\n\
             {tls}",
            queue = d("queue").display(),
            data = d("data").display(),
            dir = dir.0.display(),
            ip = relay.ip(),
            port = relay.port(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        // Only what a sending MTA needs: no inet service (mail comes in through sendmail,
        // postdrop and pickup), no chroot (it would need copies of system files).
        let services = [
            "pickup    unix  n - n 60    1 pickup",
            "cleanup   unix  n - n -     0 cleanup",
            "qmgr      unix  n - n 300   1 qmgr",
            "tlsmgr    unix  - - n 1000? 1 tlsmgr",
            "rewrite   unix  - - n -     - trivial-rewrite",
            "bounce    unix  - - n -     0 bounce",
            "defer     unix  - - n -     0 bounce",
            "trace     unix  - - n -     0 bounce",
            "verify    unix  - - n -     1 verify",
            "flush     unix  n - n 1000? 0 flush",
            "proxymap  unix  - - n -     - proxymap",
            "smtp      unix  - - n -     - smtp",
            "relay     unix  - - n -     - smtp",
            "showq     unix  n - n -     - showq",
            "error     unix  - - n -     - error",
            "retry     unix  - - n -     - error",
            "discard   unix  - - n -     - discard",
            "anvil     unix  - - n -     1 anvil",
            "scache    unix  - - n -     1 scache",
            "postlog   unix-dgram n - n - 1 postlogd",
        ];
        std::fs::write(conf.join("master.cf"), services.join("\n") + "\n").unwrap();
        let postfix = Postfix { conf, dir };
        let out = postfix.command(POSTFIX, &["start"], None);
        assert!(out.status.success(), "postfix start: {}", text(&out));
        postfix
    }

    /// One of Postfix's commands on this instance's configuration (`-c`/`-C`), 20 s at most.
    fn command(&self, tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(tool);
        cmd.arg(if tool == SENDMAIL { "-C" } else { "-c" });
        cmd.arg(&self.conf).args(args);
        run(cmd, stdin, &self.dir.0, 20)
    }

    /// Inject `message` (LF line ends, as a local program writes it) with Postfix's sendmail:
    /// `-i`, so that a line of a single `.` is content, not the end.
    fn sendmail(&self, from: &str, to: &str, message: &[u8]) {
        let out = self.command(SENDMAIL, &["-i", "-f", from, "--", to], Some(message));
        assert!(out.status.success(), "sendmail: {}", text(&out));
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("maillog")).unwrap_or_default()
    }

    /// The maillog once `done` holds (20 s at most).
    fn maillog_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.maillog();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in the maillog after 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postqueue -j`: one JSON object per queued message.
    fn queue(&self) -> String {
        let out = self.command(POSTQUEUE, &["-j"], None);
        assert!(out.status.success(), "postqueue -j: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The master's process id, from its pid file.
    fn master_pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.0.join("queue/pid/master.pid")).ok()?;
        let pid = pid.trim().to_owned();
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- postfix maillog ---\n{}", self.maillog());
        }
        postfix_mta::stop(&self.conf, self.master_pid());
    }
}

const RECEIVED_TOTAL: &str = "smtp_sidecar_domain_secure_messages_received_total{domain=\"woodgrovebank.com\",listener=\"inbound\"}";

/// The recording backend (on a runtime of its own) and the sidecar in front of it: the
/// partner PKI's root trusted, client certificates requested, woodgrovebank.com domain-secure
/// (defer), the Received header on, /metrics on a port of its own.
struct Sidecar {
    binary: Binary,
    metrics: u16,
    backend: Recorder,
    _rt: tokio::runtime::Runtime,
}

impl Sidecar {
    /// The sidecar's log once it contains `wanted` (10 s at most): it logs just after
    /// writing what the client has already read.
    fn log_when(&self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.binary.log();
            if log.contains(wanted) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn start_sidecar(pki: &PartnerPki) -> Sidecar {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (backend_addr, backend) = rt.block_on(recording_backend());
    let metrics = free_port();
    let yaml = format!(
        "metrics:\n  listen: 127.0.0.1:{metrics}\nlog:\n  protocol_log: true\n{}",
        pki.partner_listener_yaml(backend_addr)
    );
    let binary = start_binary(&yaml);
    Sidecar {
        binary,
        metrics,
        backend,
        _rt: rt,
    }
}

/// The message as its author wrote it (LF line ends): header fields Postfix keeps as they
/// are (it adds only its own Received header), and a body with what SMTP must carry exactly:
/// leading dots, a line of a single dot, trailing and leading white space, an empty line, a
/// line of 900 octets, UTF-8 (sent as 8BITMIME).
fn message() -> (String, String) {
    let head = "From: Someone <someone@woodgrovebank.com>\n\
                To: Bob <bob@example.test>\n\
                Subject: Postfix partner\n\
                Date: Tue, 01 Dec 2026 12:00:00 +0000\n\
                Message-ID: <postfix-partner-1@woodgrovebank.com>\n\
                MIME-Version: 1.0\n\
                Content-Type: text/plain; charset=utf-8\n\
                Content-Transfer-Encoding: 8bit\n";
    let body = format!(
        "first line\n.leading dot\n..two dots\n.\n\ttab and trailing space \n\nGr\u{fc}\u{df}e \
         aus Woodgrove\n{}\nlast line\n",
        "x".repeat(900)
    );
    (head.to_owned(), body)
}

/// What SMTP puts on the wire for `text`: CRLF line ends, a leading dot doubled.
fn stuffed(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with('.') {
                format!(".{l}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect()
}

/// The one message the backend received (20 s at most, then a moment for any other).
fn delivered(backend: &Recorder) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.messages().is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing reached the backend after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let messages = backend.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    String::from_utf8(messages[0].clone()).unwrap()
}

/// Every byte the backend received, once `n` of its connections have closed (20 s at most).
fn backend_transcript(backend: &Recorder, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let transcripts = backend.transcripts.lock().unwrap().clone();
        if transcripts.len() >= n {
            return transcripts
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} backend connections closed after 20 s",
            transcripts.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postfix_partner_with_its_certificate_is_domain_secure() {
    let pki = PartnerPki::new();
    let sidecar = start_sidecar(&pki);
    let relay = sidecar.binary.addr("inbound").unwrap();
    let tls = format!(
        "smtp_tls_cert_file = {}\nsmtp_tls_key_file = {}\n",
        pki.partner.cert_file.display(),
        pki.partner.key_file.display()
    );
    let postfix = Postfix::start(relay, &tls);
    let (head, body) = message();
    let from = "someone@woodgrovebank.com";
    postfix.sendmail(
        from,
        "bob@example.test",
        format!("{head}\n{body}").as_bytes(),
    );

    let data = delivered(&sidecar.backend);
    // The body, byte for byte as written, dot-stuffed once on the wire, then the end.
    let (stored_head, stored_body) = data.split_once("\r\n\r\n").unwrap();
    assert_eq!(stored_body, format!("{}.\r\n", stuffed(&body)), "{data}");
    // The sidecar's Received header first, naming the verified client certificate; then
    // Postfix's own; then the author's header fields unchanged.
    let ours =
        "Received: from mail.woodgrovebank.com ([127.0.0.1])\r\n\tby mx.test (smtp-sidecar) \
                with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_";
    assert!(stored_head.starts_with(ours), "{data}");
    let certificate = format!(
        "\r\n\t(client certificate verified: subject \"{}\"\r\n\tissuer \"{}\");\r\n\t",
        pki.partner.subject, pki.partner.issuer
    );
    assert_eq!(
        pki.partner.subject,
        "CN=mail.woodgrovebank.com, O=Woodgrove Bank"
    );
    assert_eq!(
        pki.partner.issuer,
        "CN=Woodgrove Issuing CA, O=Woodgrove Bank"
    );
    let at = stored_head.find(&certificate);
    let at = at.unwrap_or_else(|| panic!("no certificate in the Received header:\n{data}"));
    let after = &stored_head[at + certificate.len()..];
    let (date, rest) = after.split_once("\r\n").unwrap();
    assert!(date.ends_with(" +0000"), "{data}");
    assert!(
        rest.starts_with("Received: by mail.woodgrovebank.com (Postfix, from userid 0)"),
        "{data}"
    );
    let authored = head.replace('\n', "\r\n");
    assert!(
        stored_head.ends_with(authored.trim_end_matches("\r\n")),
        "{data}"
    );
    assert_eq!(data.matches("(smtp-sidecar)").count(), 1, "{data}");

    // The envelope as Postfix sent it, 8BITMIME for the UTF-8 line, once its session ended.
    let transcript = backend_transcript(&sidecar.backend, 1);
    assert!(
        transcript.contains("MAIL FROM:<someone@woodgrovebank.com> SIZE="),
        "{transcript}"
    );
    assert!(transcript.contains(" BODY=8BITMIME"), "{transcript}");
    assert!(
        transcript.contains("RCPT TO:<bob@example.test>"),
        "{transcript}"
    );

    // Postfix: TLS to the sidecar with its certificate (the client signature of TLS 1.3's
    // CertificateVerify), delivered with the backend's reply, the queue empty.
    let log = postfix.maillog_when("status=sent", |l| l.contains("status=sent"));
    assert!(
        log.contains("TLS connection established to 127.0.0.1[127.0.0.1]:"),
        "{log}"
    );
    assert!(
        log.contains("client-signature ECDSA (prime256v1) client-digest SHA256"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "to=<bob@example.test>, relay=127.0.0.1[127.0.0.1]:{}",
            relay.port()
        )),
        "{log}"
    );
    assert!(
        log.contains("status=sent (250 2.0.0 Ok: queued as "),
        "{log}"
    );
    assert_eq!(postfix.queue(), "", "{log}");

    // The sidecar: the certificate verified, the message counted as domain-secure.
    let body = scrape_until(sidecar.metrics, RECEIVED_TOTAL, "1");
    assert_eq!(
        metric(&body, RECEIVED_TOTAL).as_deref(),
        Some("1"),
        "{body}"
    );
    // Its protocol log: the certificate Postfix presented, as received.
    let log = sidecar.log_when("> 221 ");
    let remote = format!(
        "side=\"remote\" subject={:?} issuer={:?} serial=1001 ",
        pki.partner.subject, pki.partner.issuer
    );
    assert!(log.contains(&remote), "{log}");
    assert!(
        log.contains(" sans=mail.woodgrovebank.com,woodgrovebank.com "),
        "{log}"
    );
    assert!(
        log.contains("< MAIL FROM:<someone@woodgrovebank.com> SIZE="),
        "{log}"
    );
}

#[test]
fn postfix_partner_without_a_certificate_is_deferred() {
    let pki = PartnerPki::new();
    let sidecar = start_sidecar(&pki);
    let relay = sidecar.binary.addr("inbound").unwrap();
    let postfix = Postfix::start(relay, "");
    let (head, body) = message();
    postfix.sendmail(
        "someone@woodgrovebank.com",
        "bob@example.test",
        format!("{head}\n{body}").as_bytes(),
    );

    let reply = "450 4.7.1 Domain Security: mail from woodgrovebank.com requires mutual TLS; \
                 no client certificate";
    let deferred = format!(
        "status=deferred (host 127.0.0.1[127.0.0.1] said: {reply} (in reply to MAIL FROM \
         command))"
    );
    let log = postfix.maillog_when("the deferral", |l| l.contains(&deferred));
    assert!(
        log.contains("TLS connection established to 127.0.0.1[127.0.0.1]:"),
        "{log}"
    );
    assert!(!log.contains("client-signature"), "{log}");
    // Deferred, with the sidecar's reply as the reason.
    let queue = postfix.queue();
    assert_eq!(queue.lines().count(), 1, "{queue}");
    assert!(queue.contains("\"queue_name\": \"deferred\""), "{queue}");
    assert!(
        queue.contains("\"sender\": \"someone@woodgrovebank.com\""),
        "{queue}"
    );
    assert!(
        queue.contains(&format!(
            "\"delay_reason\": \"host 127.0.0.1[127.0.0.1] said: {reply} (in reply to MAIL FROM \
             command)\""
        )),
        "{queue}"
    );

    // A forced retry (not Postfix's backoff): refused again the same way, still queued.
    let id = queue
        .split("\"queue_id\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let out = postfix.command(POSTQUEUE, &["-i", &id], None);
    assert!(out.status.success(), "postqueue -i: {}", text(&out));
    let log = postfix.maillog_when("the second deferral", |l| l.matches(&deferred).count() == 2);
    assert!(!log.contains("status=sent"), "{log}");
    // The log line comes first; qmgr moves the message to the deferred queue after it.
    let started = Instant::now();
    let deferred_again =
        |queue: &str| queue.contains("\"queue_name\": \"deferred\"") && queue.contains(&id);
    while !deferred_again(&postfix.queue()) {
        assert!(
            started.elapsed() < T,
            "not deferred again: {}",
            postfix.queue()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The sidecar refused twice, counted it, and passed nothing on.
    let refused = "smtp_sidecar_policy_rejections_total{enforced=\"true\",listener=\"inbound\",reason=\"domain_secure_no_client_certificate\"}";
    let metrics = scrape_until(sidecar.metrics, refused, "2");
    assert_eq!(metric(&metrics, refused).as_deref(), Some("2"), "{metrics}");
    assert_eq!(
        metric(&metrics, RECEIVED_TOTAL).as_deref(),
        Some("0"),
        "{metrics}"
    );
    // Its protocol log: a TLS session without a client certificate, refused at MAIL FROM.
    let log = sidecar.log_when(&format!("> {reply} session=2 "));
    assert_eq!(log.matches("no remote certificate").count(), 2, "{log}");
    assert_eq!(
        log.matches(&format!("> {reply} session=")).count(),
        2,
        "{log}"
    );
    assert!(sidecar.backend.messages().is_empty());
    let transcripts = sidecar.backend.transcripts.lock().unwrap().clone();
    for t in &transcripts {
        let t = String::from_utf8_lossy(t);
        assert!(!t.contains("MAIL FROM") && !t.contains("DATA"), "{t}");
    }
}
