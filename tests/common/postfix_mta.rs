//! Real Postfix instances for the interoperability tests, each under a scratch directory of its
//! own (`<dir>/conf` with main.cf and master.cf, `<dir>/queue`, `<dir>/data`, `<dir>/maillog`),
//! started with `postfix -c <dir>/conf start` and stopped (then killed if need be) when dropped,
//! before the directory is removed. The system's Postfix is never configured or started.
//!
//! Three roles:
//! - [`PostfixMta::legacy`]: a legacy MTA that relays everything to a smart host in plaintext
//!   (`relayhost = [ip]:port`, `smtp_tls_security_level = none`); mail comes in through its
//!   `sendmail`, `postdrop` and `pickup`, it has no inet service.
//! - [`PostfixMta::next_hop`]: a receiving MTA whose `smtpd` listens on 127.0.0.1 with
//!   STARTTLS (`smtpd_tls_security_level = may`, a given certificate) and delivers every
//!   recipient of one domain to one Maildir (the `virtual` agent, as the postfix user).
//! - [`PostfixMta::backend`]: a legacy backend behind the sidecar, the same receiving MTA with
//!   what [`SmtpdOptions`] asks for: STARTTLS, a second smtpd with implicit TLS, XCLIENT
//!   from 127.0.0.0/8. It stores messages as the client sent them, but for the trace header
//!   fields it adds on top ([`split_trace`]) and LF line ends.
//!
//! Instances of any roles run side by side: each has its own queue, data directory, ports and
//! `myhostname`, and listens on 127.0.0.1 only.
//!
//! Only the services each role needs run, none chrooted (a chroot would need copies of system
//! files). Postfix must be started as root (its master drops privileges to the `postfix` user
//! and `postdrop` group the package creates), as scripts/test.sh and CI run. A missing Postfix is
//! a failure naming its Debian package, never a skip. Each instance logs to `<dir>/maillog`
//! (`maillog_file`, written by its postlogd), printed when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::process::{exactly, free_ports, TempDir};

/// Debian's Postfix commands (its `command_directory`).
pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const SENDMAIL: &str = "/usr/sbin/sendmail";
pub const POSTQUEUE: &str = "/usr/sbin/postqueue";

/// How long any wait on Postfix lasts at most.
pub const WAIT: Duration = Duration::from_secs(30);

/// Run `cmd` to its end (`secs` at most; killed then), its output captured through files: a
/// daemon it starts may keep inherited descriptors open, which pipes would wait for.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>, scratch: &Path, secs: u64) -> Output {
    let (out_path, err_path) = (scratch.join("cmd.out"), scratch.join("cmd.err"));
    cmd.stdout(std::fs::File::create(&out_path).unwrap());
    cmd.stderr(std::fs::File::create(&err_path).unwrap());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// stdout and stderr of a command, for messages.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `getent <db> <name>`, its first line.
fn getent(db: &str, name: &str) -> Option<String> {
    let out = Command::new("getent").args([db, name]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Postfix is installed, with the user and group its daemons and setgid commands run as, and
/// we are root (only root may start its master).
pub fn check_postfix() {
    for tool in [POSTFIX, SENDMAIL, POSTQUEUE] {
        assert!(
            Path::new(tool).is_file(),
            "{tool} not found: apt-get install postfix (scripts/test.sh does, unconfigured)"
        );
    }
    for (db, name) in [("passwd", "postfix"), ("group", "postdrop")] {
        assert!(
            getent(db, name).is_some(),
            "no {name} in {db}: Debian's postfix package creates it (apt-get install postfix)"
        );
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "Postfix's master must be started as root (as scripts/test.sh and CI run)"
    );
}

/// The postfix user's uid and gid (third and fourth fields of its passwd entry).
fn postfix_ids() -> (String, String) {
    let entry = getent("passwd", "postfix").expect("the postfix user (apt-get install postfix)");
    let fields: Vec<&str> = entry.split(':').collect();
    (fields[2].to_owned(), fields[3].to_owned())
}

/// main.cf lines every instance shares: its own queue, data directory and log, no local
/// delivery, no DNS, IPv4 on the loopback only, short timeouts.
fn common_main_cf(dir: &Path, hostname: &str) -> String {
    format!(
        "compatibility_level = 3.6\n\
         queue_directory = {dir}/queue\n\
         data_directory = {dir}/data\n\
         maillog_file = {dir}/maillog\n\
         maillog_file_prefixes = {dir}\n\
         myhostname = {hostname}\n\
         mydomain = {domain}\n\
         myorigin = $mydomain\n\
         mydestination =\n\
         local_recipient_maps =\n\
         alias_maps =\n\
         alias_database =\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         mynetworks = 127.0.0.0/8\n\
         smtp_dns_support_level = disabled\n\
         smtp_host_lookup = native\n\
         smtp_connect_timeout = 5s\n\
         smtp_helo_timeout = 15s\n\
         smtp_mail_timeout = 15s\n\
         smtp_rcpt_timeout = 15s\n\
         smtp_data_init_timeout = 15s\n\
         smtp_data_xfer_timeout = 15s\n\
         smtp_data_done_timeout = 15s\n\
         queue_run_delay = 300s\n\
         minimal_backoff_time = 300s\n\
         maximal_backoff_time = 600s\n\
         biff = no\n",
        dir = dir.display(),
        domain = hostname.split_once('.').map_or(hostname, |(_, d)| d),
    )
}

/// main.cf lines of a receiving MTA: every recipient in `domain` delivered to one Maildir,
/// `{DIR}/mail/maildir/`, by the `virtual` agent as the postfix user; nothing relayed.
fn receiver_main_cf(domain: &str) -> String {
    let (uid, gid) = postfix_ids();
    format!(
        "virtual_mailbox_domains = {domain}\n\
         virtual_mailbox_maps = static:maildir/\n\
         virtual_mailbox_base = {{DIR}}/mail\n\
         virtual_uid_maps = static:{uid}\n\
         virtual_gid_maps = static:{gid}\n\
         virtual_minimum_uid = 1\n\
         relay_domains =\n\
         smtpd_relay_restrictions = reject_unauth_destination\n\
         smtpd_timeout = 20s\n"
    )
}

/// main.cf lines for smtpd's STARTTLS with the PEM chain `cert` and key `key`, logged and
/// named in the Received header.
fn tls_main_cf(cert: &Path, key: &Path) -> String {
    format!(
        "smtpd_tls_security_level = may\n\
         smtpd_tls_cert_file = {cert}\n\
         smtpd_tls_key_file = {key}\n\
         smtpd_tls_loglevel = 1\n\
         smtpd_tls_received_header = yes\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// The delivery agent of the receiving roles.
const VIRTUAL: &str = "virtual   unix  - n n -     - virtual";

/// The services of master.cf every role needs (none chrooted).
const BASE_SERVICES: [&str; 18] = [
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
    "showq     unix  n - n -     - showq",
    "error     unix  - - n -     - error",
    "retry     unix  - - n -     - error",
    "discard   unix  - - n -     - discard",
    "anvil     unix  - - n -     1 anvil",
    "scache    unix  - - n -     1 scache",
    "postlog   unix-dgram n - n - 1 postlogd",
];

/// A running Postfix instance.
pub struct PostfixMta {
    pub conf: PathBuf,
    pub dir: TempDir,
    /// The smtpd port on 127.0.0.1 (next hop and backend only).
    pub port: Option<u16>,
    /// The port of the smtpd with implicit TLS, when [`SmtpdOptions::implicit_tls`] asked for it.
    pub implicit_port: Option<u16>,
}

/// What a backend's smtpd offers besides plain SMTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmtpdOptions<'a> {
    /// STARTTLS (`smtpd_tls_security_level = may`) with this PEM chain and key.
    pub tls: Option<(&'a Path, &'a Path)>,
    /// A second smtpd, on [`PostfixMta::implicit_port`], speaking TLS from the first byte
    /// (`smtpd_tls_wrappermode = yes`; needs `tls`).
    pub implicit_tls: bool,
    /// XCLIENT advertised to and accepted from 127.0.0.0/8 (`smtpd_authorized_xclient_hosts`):
    /// what it sets shows in the Received header ([`received_from`]).
    pub xclient: bool,
}

impl PostfixMta {
    /// A legacy MTA relaying everything to `relay` in plaintext, as `hostname`.
    pub fn legacy(hostname: &str, relay: SocketAddr) -> PostfixMta {
        let main = format!(
            "relayhost = [{ip}]:{port}\n\
             relay_domains =\n\
             smtp_tls_security_level = none\n",
            ip = relay.ip(),
            port = relay.port()
        );
        let services = [
            "smtp      unix  - - n -     - smtp",
            "relay     unix  - - n -     - smtp",
        ];
        PostfixMta::start("postfix-legacy", hostname, &main, &services, &[])
    }

    /// A receiving MTA as `hostname` on 127.0.0.1:<free port>, STARTTLS offered with the PEM
    /// chain `cert` and key `key`, every recipient in `domain` delivered to [`Self::maildir`].
    pub fn next_hop(hostname: &str, domain: &str, cert: &Path, key: &Path) -> PostfixMta {
        let main = receiver_main_cf(domain) + &tls_main_cf(cert, key);
        PostfixMta::start("postfix-next-hop", hostname, &main, &[VIRTUAL], &[""])
    }

    /// A legacy backend as `hostname` on 127.0.0.1:<free port> with what `options` asks for,
    /// every recipient in `domain` delivered to [`Self::maildir`]. Its clients get no header
    /// rewriting (no From, Date or Message-ID added) and no name look-up (`unknown`, or
    /// XCLIENT's NAME, in the Received header).
    pub fn backend(hostname: &str, domain: &str, options: &SmtpdOptions<'_>) -> PostfixMta {
        let mut main = receiver_main_cf(domain)
            + "local_header_rewrite_clients =\n\
               smtpd_peername_lookup = no\n";
        if let Some((cert, key)) = options.tls {
            main += &tls_main_cf(cert, key);
        }
        if options.xclient {
            main += "smtpd_authorized_xclient_hosts = 127.0.0.0/8\n";
        }
        let mut inet = vec![""];
        if options.implicit_tls {
            assert!(options.tls.is_some(), "implicit TLS needs a certificate");
            inet.push("-o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt");
        }
        PostfixMta::start("postfix-backend", hostname, &main, &[VIRTUAL], &inet)
    }

    /// Write the configuration and start the master, with one smtpd on 127.0.0.1 on a free
    /// port for each entry of `inet` (its master.cf `-o` overrides): on [`Self::port`], then
    /// [`Self::implicit_port`]. Other ports if one was taken meanwhile: 3 attempts.
    fn start(
        tag: &str,
        hostname: &str,
        main_extra: &str,
        services: &[&str],
        inet: &[&str],
    ) -> PostfixMta {
        check_postfix();
        let dir = TempDir::new(tag);
        let d = |p: &str| dir.0.join(p);
        let conf = d("conf");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(d("queue")).unwrap();
        // Postfix creates the queue's subdirectories itself; its data directory (master.lock,
        // the PRNG seed) and the mailboxes belong to the postfix user.
        for owned in ["data", "mail"] {
            std::fs::create_dir_all(d(owned)).unwrap();
            let chown = Command::new("chown").arg("postfix").arg(d(owned)).output();
            assert!(chown.unwrap().status.success(), "chown postfix {owned}");
        }
        let main_cf = common_main_cf(&dir.0, hostname)
            + &main_extra.replace("{DIR}", &dir.0.display().to_string());
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        let mut mta = PostfixMta {
            conf,
            dir,
            port: None,
            implicit_port: None,
        };
        for _attempt in 0..3 {
            let mut lines: Vec<String> = BASE_SERVICES.iter().map(|s| s.to_string()).collect();
            lines.extend(services.iter().map(|s| s.to_string()));
            let ports = free_ports(inet.len());
            for (port, overrides) in ports.iter().zip(inet) {
                lines.push(format!("127.0.0.1:{port} inet n - n - - smtpd {overrides}"));
            }
            (mta.port, mta.implicit_port) = (ports.first().copied(), ports.get(1).copied());
            std::fs::write(mta.conf.join("master.cf"), lines.join("\n") + "\n").unwrap();
            // `postfix start` waits for the master's initialisation (`master -w`): a port
            // taken meanwhile is a failure here.
            let out = mta.command(POSTFIX, &["start"], None);
            if out.status.success() {
                return mta;
            }
            eprintln!("postfix start: {}\n{}", text(&out), mta.maillog());
            if inet.is_empty() {
                break;
            }
        }
        panic!("postfix start failed ({tag})");
    }

    /// One of Postfix's commands on this instance's configuration (`-c`/`-C`), 20 s at most.
    pub fn command(&self, tool: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(tool);
        cmd.arg(if tool == SENDMAIL { "-C" } else { "-c" });
        cmd.arg(&self.conf).args(args);
        run(cmd, stdin, &self.dir.0, 20)
    }

    /// Inject `message` (LF line ends, as a local program writes it) with Postfix's sendmail:
    /// `-i`, so that a line of a single `.` is content, not the end.
    pub fn sendmail(&self, from: &str, to: &str, message: &[u8]) {
        let out = self.command(SENDMAIL, &["-i", "-f", from, "--", to], Some(message));
        assert!(out.status.success(), "sendmail: {}", text(&out));
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("maillog")).unwrap_or_default()
    }

    /// The maillog once `done` holds ([`WAIT`] at most).
    pub fn maillog_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.maillog();
            if done(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in the maillog of {} after {WAIT:?}:\n{log}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `postqueue -j`: one JSON object per queued message.
    pub fn queue(&self) -> String {
        let out = self.command(POSTQUEUE, &["-j"], None);
        assert!(out.status.success(), "postqueue -j: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `postqueue -j` once `done` holds (`within` at most).
    pub fn queue_when(&self, what: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let queue = self.queue();
            if done(&queue) {
                return queue;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in the queue of {} after {within:?}:\n{queue}",
                self.dir.0.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Maildir a next hop delivers to.
    pub fn maildir(&self) -> PathBuf {
        self.dir.0.join("mail/maildir")
    }

    /// The messages delivered to the Maildir so far (`new/`, by file name).
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(self.maildir().join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    }

    /// The messages delivered once there are `n` ([`WAIT`] at most), and no more.
    pub fn delivered_when(&self, n: usize) -> Vec<Vec<u8>> {
        exactly(n, "messages delivered", WAIT, || self.delivered())
    }

    /// The master's process id, from its pid file.
    fn master_pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.0.join("queue/pid/master.pid")).ok()?;
        let pid = pid.trim().to_owned();
        (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
    }
}

/// The header fields Postfix puts on top of a message it stores: Received when it accepts it,
/// the others when the `virtual` agent delivers it.
const TRACE_FIELDS: [&str; 4] = [
    "Return-Path: ",
    "X-Original-To: ",
    "Delivered-To: ",
    "Received: ",
];

/// A message as the `virtual` agent stored it, split after the [`TRACE_FIELDS`] on top (with
/// their continuation lines): those fields, and the rest, which is what the client sent (LF
/// line ends).
pub fn split_trace(stored: &[u8]) -> (String, Vec<u8>) {
    let mut at = 0;
    for line in stored.split_inclusive(|&b| b == b'\n') {
        let field = TRACE_FIELDS.iter().any(|f| line.starts_with(f.as_bytes()));
        if !(field || (at > 0 && line.starts_with(b"\t"))) {
            break;
        }
        at += line.len();
    }
    let trace = String::from_utf8_lossy(&stored[..at]).into_owned();
    (trace, stored[at..].to_vec())
}

/// What Postfix's (first) Received header names the client by: `HELO (NAME [ADDR])`, the
/// session's own or what XCLIENT set. `HELO=` of XCLIENT lasts only until the EHLO that must
/// follow it: that EHLO's name is the one recorded.
pub fn received_from(stored: &[u8]) -> String {
    let (trace, _) = split_trace(stored);
    let line = trace.lines().find(|l| l.starts_with("Received: from "));
    let line = line.unwrap_or_else(|| panic!("no Received header from Postfix:\n{trace}"));
    line["Received: from ".len()..].to_owned()
}

/// Stop the instance of `conf` (`postfix -c conf stop`, 10 s at most), then its master
/// `pid` if it outlives that by 5 s.
pub fn stop(conf: &Path, pid: Option<String>) {
    let mut stop = Command::new(POSTFIX);
    stop.arg("-c").arg(conf).arg("stop");
    stop.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(mut child) = stop.spawn() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // The master's children exit when it does; one that outlives 5 s is killed.
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(&pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(&pid) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// GET /metrics of the sidecar's admin endpoint on 127.0.0.1:`port` over plain HTTP/1.0.
pub fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first line of `body` that starts with `series`.
pub fn metric(body: &str, series: &str) -> Option<String> {
    body.lines()
        .find(|l| l.starts_with(series))
        .map(|l| l[series.len()..].trim().to_owned())
}

/// Scrape until `series` has `value` (10 s at most), then return the whole scrape.
pub fn scrape_until(port: u16, series: &str, value: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = scrape(port);
        if metric(&body, series).as_deref() == Some(value) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // pid (comm) STATE ...: the state follows the last ')'.
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    state.is_some_and(|s| !s.starts_with('Z') && !s.starts_with('X'))
}

impl Drop for PostfixMta {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- postfix maillog ({}) ---\n{}",
                self.dir.0.display(),
                self.maillog()
            );
        }
        stop(&self.conf, self.master_pid());
    }
}
