//! Interoperability with OpenSMTPD as the legacy backend: the real `smtp-sidecar` binary in
//! front of a real OpenSMTPD (Debian's opensmtpd, unpacked under target/interop-tools/opensmtpd
//! by scripts/test.sh), driven by Python's smtplib. OpenSMTPD relays every message it accepts,
//! in plaintext, to a recording sink on 127.0.0.1, so the test sees the stored message byte for
//! byte as OpenSMTPD sends it on (local delivery would need its helpers at
//! /usr/libexec/opensmtpd, which is not installed). A missing OpenSMTPD is a failure, never a
//! skip. smtpd must be started as root (it drops privileges itself), as scripts/test.sh and CI
//! run.
//!
//! smtpd's queue (/var/spool/smtpd) and control socket (/var/run/smtpd.sock) are compiled in
//! and system-wide, so one instance runs at a time: the tests of this file take turns, and an
//! instance of another process (control socket busy) is waited for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod common;

use common::process::{free_port, wait_accepting, Guard, TempDir};
use common::{recording_backend, Recorder};

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

fn smtpd_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-tools/opensmtpd");
    let smtpd = root.join("usr/sbin/smtpd");
    let users = ["opensmtpd", "opensmtpq"].iter().all(|u| {
        let found = Command::new("getent").args(["passwd", u]).output();
        found.is_ok_and(|o| o.status.success())
    });
    assert!(
        smtpd.is_file() && users && Path::new("/var/lib/opensmtpd/empty").is_dir(),
        "{} missing, or the opensmtpd/opensmtpq users or /var/lib/opensmtpd/empty: run \
         scripts/test.sh (it unpacks Debian's opensmtpd there and creates them)",
        smtpd.display()
    );
    smtpd
}

/// OpenSMTPD in the foreground on 127.0.0.1, accepting mail for y.test and relaying it to
/// `sink`. Waits (60 s at most) while another process's instance holds the control socket.
fn start_smtpd(dir: &TempDir, sink: u16) -> (Smtpd, u16) {
    let smtpd = smtpd_binary();
    let (conf, log) = (dir.0.join("smtpd.conf"), dir.0.join("smtpd.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = 0;
    loop {
        let port = free_port();
        let text = format!(
            "listen on 127.0.0.1 port {port} hostname legacy.test\n\
             action \"sink\" relay host smtp+notls://127.0.0.1:{sink} helo legacy.test\n\
             match from src 127.0.0.1 for domain y.test action \"sink\"\n"
        );
        std::fs::write(&conf, text).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        // -d: foreground, log to stderr; -T smtp: trace every SMTP line (for failures).
        let mut cmd = Command::new(&smtpd);
        cmd.args(["-d", "-T", "smtp", "-f"]).arg(&conf);
        // OpenSMTPD looks up the name of every client address (and checks it forward) with its
        // own resolver, libasr, which reads RES_OPTIONS as lines of resolv.conf: this newline
        // makes it read /etc/hosts only, never ask the DNS servers of /etc/resolv.conf.
        cmd.env("RES_OPTIONS", "\nlookup file");
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap());
        let mut child = Smtpd(cmd.stderr(out).spawn().unwrap());
        if wait_accepting(&mut child.0, port) {
            return (child, port);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("control socket already listening") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        eprintln!("smtpd exited (port {port} taken?):\n{text}");
        failures += 1;
        assert!(failures < 3, "smtpd did not start");
    }
}

/// Start the sidecar binary listening on a port it is given; 3 attempts.
fn start_sidecar(dir: &TempDir, tls: &str, backend: u16) -> (Guard, u16) {
    let (config, log) = (dir.0.join("config.yaml"), dir.0.join("sidecar.log"));
    for _attempt in 0..3 {
        let port = free_port();
        let yaml = format!(
            "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\ncertificates: []\n\
             listeners:\n  - name: inbound\n    mode: terminate\n    listen: 127.0.0.1:{port}\n\
             \x20   tls: {tls}\n    backend:\n      servers: [\"127.0.0.1:{backend}\"]\n\
             \x20     connect_timeout: 2s\n    policy:\n      received_header: true\n",
            dir.0.join("state").display()
        );
        std::fs::write(&config, yaml).unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"));
        cmd.arg("run").arg("-c").arg(&config);
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap());
        let mut child = Guard(cmd.stderr(out).spawn().unwrap());
        if wait_accepting(&mut child.0, port) {
            return (child, port);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("sidecar exited (port {port} taken?):\n{text}");
    }
    panic!("sidecar did not start");
}

/// The recording sink, OpenSMTPD relaying to it, and the sidecar in front of OpenSMTPD.
/// Fields drop in order: the sidecar, then smtpd, then our turn.
struct Setup {
    sidecar_port: u16,
    _sidecar: Guard,
    _smtpd: Smtpd,
    sink: Recorder,
    _rt: tokio::runtime::Runtime,
    dir: TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Setup {
    fn start(tls: &str) -> Setup {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (sink_addr, sink) = rt.block_on(recording_backend());
        let dir = TempDir::new("opensmtpd");
        let (smtpd, smtpd_port) = start_smtpd(&dir, sink_addr.port());
        let (sidecar, sidecar_port) = start_sidecar(&dir, tls, smtpd_port);
        Setup {
            sidecar_port,
            _sidecar: sidecar,
            _smtpd: smtpd,
            sink,
            _rt: rt,
            dir,
            _turn: turn,
        }
    }

    /// The one message OpenSMTPD relayed to the sink, as sent (dot-stuffed, with the final
    /// `.` line); 20 s at most.
    fn relayed(&self) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let messages = self.sink.messages();
            if !messages.is_empty() {
                // Anything more would come within a moment.
                std::thread::sleep(Duration::from_millis(300));
                let messages = self.sink.messages();
                assert_eq!(messages.len(), 1, "{messages:?}");
                return messages.into_iter().next().unwrap();
            }
            assert!(Instant::now() < deadline, "nothing relayed after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let read = |p: &str| std::fs::read_to_string(self.dir.0.join(p)).unwrap_or_default();
            let (side, smtpd) = (read("sidecar.log"), read("smtpd.log"));
            eprintln!("--- sidecar ---\n{side}--- smtpd ---\n{smtpd}");
        }
    }
}

const PY_PRELUDE: &str = "import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
port = int(sys.argv[1])
def ehlo(s):
    code, msg = s.ehlo()
    return f'{code} ' + (' '.join(sorted(s.esmtp_features)) if code == 250 else msg.decode())
body = b'Subject: opensmtpd\\r\\n\\r\\nfirst line\\r\\n.leading\\r\\n..two dots\\r\\nlast line\\r\\n'
";

/// `python3 -c <prelude + script> <port>`: its output and whether it exited 0, within 30 s.
fn python(port: u16, script: &str) -> (String, bool) {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(format!("{PY_PRELUDE}{script}"));
    cmd.arg(port.to_string()).stdin(Stdio::null());
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = Guard(child.expect("python3 not found: apt-get install python3"));
    let (mut stdout, mut stderr) = (
        child.0.stdout.take().unwrap(),
        child.0.stderr.take().unwrap(),
    );
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "python still running after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    (format!("{out}{err}"), status.success())
}

/// What the client sees of OpenSMTPD's EHLO reply through the sidecar: all it offers (6.8 has
/// no PIPELINING) is on the allow-list.
const EHLO: &str = "250 8bitmime dsn enhancedstatuscodes help size";
/// The relayed message, line by line: OpenSMTPD's Received header, the sidecar's, the client's
/// Subject, the Date and Message-ID OpenSMTPD adds when they are missing, then the body, stored
/// with `.leading` and `..two dots` and stuffed again exactly once on the way to the sink.
fn assert_relayed(message: &[u8]) {
    let text = String::from_utf8(message.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let relayed = "first line\r\n..leading\r\n...two dots\r\nlast line\r\n.\r\n";
    assert_eq!(body, relayed, "{text}");
    let stored: Vec<&str> = body.strip_suffix(".\r\n").unwrap().split("\r\n").collect();
    let stored: Vec<&str> = stored
        .iter()
        .map(|l| l.strip_prefix('.').unwrap_or(l))
        .collect();
    let sent = "first line\r\n.leading\r\n..two dots\r\nlast line\r\n";
    assert_eq!(stored.join("\r\n"), sent, "{text}");

    let head: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(head.len(), 11, "{text}");
    // OpenSMTPD's; the name in parentheses is 127.0.0.1's in /etc/hosts.
    let theirs = head[0].starts_with("Received: from client.test (")
        && head[0].ends_with(" [127.0.0.1])")
        && head[1].starts_with("\tby legacy.test (OpenSMTPD) with ESMTP id ")
        && head[2] == "\tfor <b@y.test>;"
        && head[3].starts_with('\t');
    assert!(theirs, "{text}");
    let ours = head[4] == "Received: from client.test ([127.0.0.1])"
        && head[5] == "\tby mx.test (smtp-sidecar) with ESMTPS"
        && head[6].starts_with("\t(version=TLSv1.3 cipher=TLS13_")
        && head[6].ends_with(");")
        && head[7].starts_with('\t')
        && head[7].ends_with(" +0000");
    assert!(ours, "{text}");
    let added = head[9].starts_with("Date: ")
        && head[10].starts_with("Message-ID: <")
        && head[10].ends_with("@legacy.test>");
    assert!(head[8] == "Subject: opensmtpd" && added, "{text}");
}

#[test]
fn opensmtpd_backend_starttls_delivery() {
    let setup = Setup::start("starttls");
    let script = "s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20)
print(ehlo(s))
print(s.starttls(context=ctx)[0])
print(ehlo(s))
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(body)[0])
print(s.quit()[0])";
    let (out, ok) = python(setup.sidecar_port, script);
    // The EHLO after STARTTLS must reach OpenSMTPD as the first EHLO of a session: a second
    // one in the same session gets `503 5.5.1 Invalid command: Already identified`.
    let expected = format!("{EHLO} starttls\n220\n{EHLO}\n250 250 250\n221\n");
    assert_eq!(out, expected, "{out}");
    assert!(ok, "{out}");
    assert_relayed(&setup.relayed());
}

#[test]
fn opensmtpd_backend_implicit_tls_delivery() {
    let setup = Setup::start("implicit");
    let script = "s = smtplib.SMTP_SSL('127.0.0.1', port, local_hostname='client.test', timeout=20,
                     context=ctx)
print(ehlo(s))
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(body)[0])
print(s.quit()[0])";
    let (out, ok) = python(setup.sidecar_port, script);
    assert_eq!(out, format!("{EHLO}\n250 250 250\n221\n"), "{out}");
    assert!(ok, "{out}");
    assert_relayed(&setup.relayed());
}
