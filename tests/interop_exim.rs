//! Interoperability with Exim 4 as the legacy backend: the real `smtp-sidecar` binary in front
//! of a real Exim daemon (Debian's exim4-daemon-light, unpacked under
//! target/interop-tools/exim4 by scripts/test.sh) that appends every message it accepts to a
//! file, driven by Python's smtplib. A missing Exim is a failure, never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::process::{free_port, wait_accepting, Guard, TempDir};

/// Start `cmd` (stdout and stderr to `log`) listening on a port `make` chose; 3 attempts.
fn start(what: &str, log: &Path, mut make: impl FnMut(u16) -> Command) -> (Guard, u16) {
    for _attempt in 0..3 {
        let port = free_port();
        let out = std::fs::File::create(log).unwrap();
        let mut cmd = make(port);
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap());
        let mut child = Guard(cmd.stderr(out).spawn().unwrap());
        if wait_accepting(&mut child.0, port) {
            return (child, port);
        }
        let log = std::fs::read_to_string(log).unwrap_or_default();
        eprintln!("{what} exited (port {port} taken?):\n{log}");
    }
    panic!("{what} did not start");
}

/// Exim as a foreground daemon on 127.0.0.1, appending every message to `<dir>/out/mailbox`
/// exactly as stored (no prefix, no suffix), plus the sidecar in front of it.
struct Setup {
    dir: TempDir,
    sidecar_port: u16,
    _exim: Guard,
    _sidecar: Guard,
}

impl Setup {
    fn start(policy: &[&str]) -> Setup {
        let exim = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-tools/exim4");
        let exim = exim.join("usr/sbin/exim4");
        // Debian's build looks its user up before reading any configuration.
        let user = Command::new("getent")
            .args(["passwd", "Debian-exim"])
            .output();
        assert!(
            exim.is_file() && user.unwrap().status.success(),
            "{} or the Debian-exim user missing: run scripts/test.sh (it unpacks Debian's \
             exim4-daemon-light there and creates the user)",
            exim.display()
        );
        let dir = TempDir::new("exim");
        let (spool, out) = (dir.open_subdir("spool"), dir.open_subdir("out"));
        let conf = format!(
            "primary_hostname = legacy.test\nqualify_domain = legacy.test\n\
             exim_path = {exim}\nspool_directory = {spool}\nlog_file_path = {spool}/%slog\n\
             keep_environment =\nhost_lookup =\nrfc1413_hosts =\ntls_advertise_hosts =\n\
             local_interfaces = 127.0.0.1\nprdr_enable = true\nacl_smtp_rcpt = rcpt\n\
             begin acl\nrcpt:\n  accept hosts = 127.0.0.1\n  deny\n\
             begin routers\nall:\n  driver = accept\n  transport = mailbox\n\
             begin transports\nmailbox:\n  driver = appendfile\n  file = {out}/mailbox\n\
             \x20 user = Debian-exim\n  message_prefix =\n  message_suffix =\n",
            exim = exim.display(),
            spool = spool.display(),
            out = out.display(),
        );
        let conf_path = dir.0.join("exim.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // -bdf: daemon in the foreground; -oX: its port; -odi: deliver at once, no queue runner.
        let (exim, exim_port) = start("exim", &dir.0.join("exim.log"), |port| {
            let mut cmd = Command::new(&exim);
            cmd.arg("-C").arg(&conf_path);
            cmd.args(["-bdf", "-odi", "-oX", &port.to_string()]);
            cmd
        });
        let policy: String = policy.iter().map(|l| format!("      {l}\n")).collect();
        let config = dir.0.join("config.yaml");
        let (sidecar, sidecar_port) = start("sidecar", &dir.0.join("sidecar.log"), |port| {
            let yaml = format!(
                "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\ncertificates: []\n\
                 listeners:\n  - name: inbound\n    mode: terminate\n    listen: 127.0.0.1:{port}\n\
                 \x20   tls: starttls\n    backend:\n      servers: [\"127.0.0.1:{exim_port}\"]\n\
                 \x20     connect_timeout: 2s\n    policy:\n      received_header: true\n{policy}",
                dir.0.join("state").display()
            );
            std::fs::write(&config, yaml).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"));
            cmd.arg("run").arg("-c").arg(&config);
            cmd
        });
        Setup {
            dir,
            sidecar_port,
            _exim: exim,
            _sidecar: sidecar,
        }
    }

    /// What Exim appended to its mailbox so far ("" if it has not created it).
    fn mailbox(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("out/mailbox")).unwrap_or_default()
    }

    /// Poll the mailbox (10 s at most) until `done` holds.
    fn mailbox_when(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.mailbox();
            if done(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "mailbox after 10 s:\n{m}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let read = |p: &str| std::fs::read_to_string(self.dir.0.join(p)).unwrap_or_default();
            let (side, exim, main) = (read("sidecar.log"), read("exim.log"), read("spool/mainlog"));
            eprintln!("--- sidecar ---\n{side}--- exim ---\n{exim}--- exim mainlog ---\n{main}");
        }
    }
}

/// Python's smtplib, `python3 -u -c <script> <port>`, read line by line (20 s per line).
struct Python {
    child: Guard,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

const PY_PRELUDE: &str = "import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=20)
def features(): return ' '.join(sorted(s.esmtp_features))
";

impl Python {
    fn spawn(port: u16, script: &str) -> Python {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg("-c").arg(format!("{PY_PRELUDE}{script}"));
        cmd.arg(port.to_string()).stdin(Stdio::piped());
        let child = cmd.stdout(Stdio::piped()).spawn();
        let mut child = Guard(child.expect("python3 not found: apt-get install python3"));
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
                return;
            }
        });
        let stdin = child.0.stdin.take().unwrap();
        Python {
            child,
            stdin,
            lines,
        }
    }

    fn line(&self) -> String {
        let line = self.lines.recv_timeout(Duration::from_secs(20));
        line.unwrap_or_else(|e| panic!("no line from python: {e}"))
    }

    /// The rest of its output, and whether it exited 0 (within 20 s).
    fn finish(mut self) -> (String, bool) {
        let out: String =
            std::iter::from_fn(|| self.lines.recv_timeout(Duration::from_secs(20)).ok()).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "python still running: {out}");
            std::thread::sleep(Duration::from_millis(20));
        }
        (out, self.child.0.wait().unwrap().success())
    }
}

/// The Received header the sidecar adds, as Exim stores it (LF line ends).
const OURS: &str = "Received: from client.test ([127.0.0.1])\n\tby mx.test (smtp-sidecar) \
                    with ESMTPS\n\t(version=TLSv1.3 cipher=TLS13_";
/// The one Exim adds on top.
const EXIM: &str = "Received: from [127.0.0.1] (helo=client.test)\n\tby legacy.test with esmtp";

#[test]
fn exim_backend_starttls_delivery() {
    let setup = Setup::start(&[]);
    let script = "print(s.ehlo()[0], features())
print(s.starttls(context=ctx)[0])
print(s.ehlo()[0], features())
body = b'Subject: exim\\r\\n\\r\\nfirst line\\r\\n.leading\\r\\n..two dots\\r\\nlast line\\r\\n'
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(body)[0])
print(s.quit()[0])";
    let py = Python::spawn(setup.sidecar_port, script);
    let (out, ok) = py.finish();
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    // Exim advertises CHUNKING, PRDR and PIPECONNECT: none may reach the client; STARTTLS is
    // the sidecar's own, before TLS only.
    let ehlo = "8bitmime help pipelining size smtputf8";
    assert_eq!(lines[0], format!("250 {ehlo} starttls"), "{out}");
    let tls = format!("250 {ehlo}");
    assert_eq!(lines[1..3], ["220", tls.as_str()], "{out}");
    assert_eq!(lines[3..], ["250 250 250", "221"], "{out}");

    let body = "Subject: exim\n\nfirst line\n.leading\n..two dots\nlast line\n";
    let mbox = setup.mailbox_when(|m| m.ends_with(body));
    assert!(mbox.starts_with(EXIM), "{mbox}");
    let at = mbox
        .find(OURS)
        .unwrap_or_else(|| panic!("no sidecar header:\n{mbox}"));
    let ours: Vec<&str> = mbox[at..].lines().collect();
    let date_then_body = format!("{}\n{body}", ours[3]);
    assert!(
        ours[3].starts_with('\t') && ours[3].ends_with(" +0000"),
        "{mbox}"
    );
    assert!(mbox[at..].ends_with(&date_then_body), "{mbox}");
    assert_eq!(mbox.matches("Received: ").count(), 2, "{mbox}");
}

#[test]
fn exim_backend_smuggling_refused() {
    let setup = Setup::start(&["bare_newlines: reject"]);
    let script = "s.ehlo(); s.starttls(context=ctx); s.ehlo()
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.docmd('DATA')[0])
s.send(b'Subject: smuggle\\r\\n\\r\\nhello\\n.\\nMAIL FROM:<evil@x.test>\\r\\n'
       b'RCPT TO:<victim@y.test>\\r\\nDATA\\r\\nsmuggled\\r\\n\\r\\n.\\r\\n')
print(*s.getreply())
sys.stdin.readline()
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(b'Subject: after\\r\\n\\r\\nclean\\r\\n')[0])
print(s.quit()[0])";
    let mut py = Python::spawn(setup.sidecar_port, script);
    assert_eq!(py.line(), "250 250 354\n");
    let refused = py.line();
    assert!(refused.starts_with("550 b'5.6.11 "), "{refused}");
    // Nothing of the refused message may be delivered, smuggled or not.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(setup.mailbox(), "", "delivered after 550");
    py.stdin.write_all(b"go\n").unwrap();
    let (out, ok) = py.finish();
    assert!(ok && out == "250 250 250\n221\n", "{out}");
    let mbox = setup.mailbox_when(|m| m.ends_with("Subject: after\n\nclean\n"));
    let once = mbox.starts_with(EXIM) && mbox.matches("Received: ").count() == 2;
    assert!(
        once && !mbox.contains("smuggle") && !mbox.contains("evil"),
        "{mbox}"
    );
    // Exim's log: exactly one message accepted, the clean one.
    let log = std::fs::read_to_string(setup.dir.0.join("spool/mainlog")).unwrap();
    let accepted: Vec<&str> = log.lines().filter(|l| l.contains(" <= ")).collect();
    assert_eq!(accepted.len(), 1, "{log}");
    assert!(accepted[0].contains(" <= a@x.test "), "{log}");
}
