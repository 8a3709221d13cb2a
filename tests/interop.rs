//! Interoperability with real software from Debian: the real `smtp-sidecar` binary, started
//! from a YAML file on 127.0.0.1, driven by swaks, openssl s_client, Postfix's smtp-sink and
//! smtp-source and Python's smtplib. A missing tool is a failure naming its Debian package.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::process::{free_port, wait_accepting, Guard, TempDir};
use smtp_sidecar::sink::SinkEvent;

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The tool with its arguments (split on spaces), or a failure naming the Debian package.
fn tool(name: &str, package: &str, args: &str) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').chain(["/usr/sbin", "/sbin"]).collect();
    let found = dirs
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    let found = found.unwrap_or_else(|| panic!("{name} not found: apt-get install {package}"));
    let mut cmd = Command::new(found);
    cmd.args(args.split_whitespace());
    cmd
}

/// The real binary, running `run -c <dir>/config.yaml` with one terminate listener.
struct Sidecar {
    port: u16,
    child: Guard,
    dir: TempDir,
}

impl Sidecar {
    /// `tls`: starttls | implicit; `policy`: lines of the listener's `policy:` section.
    fn start(tls: &str, backend: SocketAddr, policy: &[&str]) -> Sidecar {
        let dir = TempDir::new("interop");
        let policy: String = policy.iter().map(|l| format!("      {l}\n")).collect();
        for _attempt in 0..3 {
            let port = free_port();
            let state = dir.0.join("state");
            let yaml = format!(
                "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\ncertificates: []\n\
                 listeners:\n  - name: inbound\n    mode: terminate\n    listen: 127.0.0.1:{port}\n\
                 \x20   tls: {tls}\n    backend:\n      servers: [\"{backend}\"]\n\
                 \x20     connect_timeout: 2s\n    policy:\n{policy}",
                state.display()
            );
            let config = dir.0.join("config.yaml");
            std::fs::write(&config, yaml).unwrap();
            let log = std::fs::File::create(dir.0.join("sidecar.log")).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"));
            cmd.arg("run").arg("-c").arg(&config).stdin(Stdio::null());
            let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn();
            let mut child = Guard(child.unwrap());
            if wait_accepting(&mut child.0, port) {
                return Sidecar { port, child, dir };
            }
            eprintln!("sidecar exited (port {port} taken?):\n{}", read_log(&dir));
        }
        panic!("the sidecar did not start");
    }
}

fn read_log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("sidecar.log")).unwrap_or_default()
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if std::thread::panicking() {
            eprintln!("--- sidecar log ---\n{}", read_log(&self.dir));
        }
    }
}

/// The built-in sink as a recording backend.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<SinkEvent>>>);

type Message = (String, Vec<String>, String);

impl Recorder {
    async fn start() -> (SocketAddr, Recorder) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Recorder::default();
        let events = Arc::clone(&rec.0);
        let handler = Arc::new(move |e: SinkEvent| events.lock().unwrap().push(e));
        tokio::spawn(smtp_sidecar::sink::serve(listener, true, handler));
        (addr, rec)
    }

    /// (from, rcpts, data) of every message, in order.
    fn messages(&self) -> Vec<Message> {
        let events = self.0.lock().unwrap();
        let msgs = events.iter().filter_map(|e| match e {
            SinkEvent::Message {
                from, rcpts, data, ..
            } => Some((from.clone(), rcpts.clone(), text(data))),
            SinkEvent::Closed { .. } => None,
        });
        msgs.collect()
    }

    fn bodies(&self) -> Vec<String> {
        self.messages().into_iter().map(|(_, _, d)| d).collect()
    }

    /// Wait for a closed backend connection whose transcript contains `needle`.
    async fn transcript_with(&self, needle: &str) -> String {
        for _ in 0..400 {
            for e in self.0.lock().unwrap().iter() {
                match e {
                    SinkEvent::Closed { transcript } if text(transcript).contains(needle) => {
                        return text(transcript);
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no backend transcript containing {needle:?}");
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running tool: its stdin, its stdout line by line, its stderr collected.
struct Proc {
    child: Guard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

/// What a tool did: success, stdout, stderr.
struct Done {
    ok: bool,
    out: String,
    err: String,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Guard(child.spawn().unwrap());
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut err = child.0.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 || tx.send(line).is_err() {
                return;
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            text(&v)
        });
        Proc {
            stdin: child.0.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    /// Close stdin and wait (at most [`TOOL_TIMEOUT`]) for the exit; `out` is the stdout
    /// not read yet.
    fn finish(mut self) -> Done {
        drop(self.stdin.take());
        let deadline = Instant::now() + TOOL_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} still running",
                self.child.0.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.lines.iter().collect();
        Done {
            ok: status.success(),
            out,
            err: self.stderr.join().unwrap(),
        }
    }
}

/// Run a tool with nothing on stdin.
async fn run(cmd: Command) -> Done {
    let done = tokio::task::spawn_blocking(move || Proc::spawn(cmd).finish())
        .await
        .unwrap();
    assert!(done.ok, "failed:\n{}\n{}", done.out, done.err);
    done
}

fn swaks(port: u16, tls: &str) -> Command {
    let args = format!("--server 127.0.0.1:{port} {tls} --from a@x.test --to b@y.test");
    let mut cmd = tool("swaks", "swaks", &args);
    cmd.args([
        "--ehlo",
        "client.test",
        "--timeout",
        "20",
        "--body",
        "hello interop",
    ]);
    cmd
}

/// The message swaks sent, as the sink recorded it; swaks' own output.
fn assert_swaks(rec: &Recorder, out: &str) {
    assert!(out.contains(" ~> .\n<~  250 2.0.0 Ok: queued as "), "{out}");
    assert!(out.contains(" ~> QUIT\n<~  221 2.0.0 Bye\n"), "{out}");
    let m = rec.messages();
    assert_eq!(m.len(), 1, "{m:?}");
    let (from, rcpts, data) = &m[0];
    assert_eq!(
        (from.as_str(), rcpts.as_slice()),
        ("<a@x.test>", &["<b@y.test>".to_string()][..])
    );
    assert!(data.starts_with("Date: "), "{data}");
    assert!(
        data.contains("\r\nTo: b@y.test\r\nFrom: a@x.test\r\n"),
        "{data}"
    );
    assert!(data.contains("\r\n\r\nhello interop\r\n"), "{data}");
    assert!(
        data.ends_with("\r\n.\r\n") && !data.contains("\r\n.\r\n\r\n"),
        "{data}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_starttls() {
    let (backend, rec) = Recorder::start().await;
    let sc = Sidecar::start("starttls", backend, &["received_header: false"]);
    let out = run(swaks(sc.port, "--tls")).await.out;
    assert!(out.contains("<-  220 mx.test ESMTP\n"), "{out}");
    assert!(
        out.contains("<-  250 STARTTLS\n -> STARTTLS\n<-  220 2.0.0 Ready to start TLS\n"),
        "{out}"
    );
    assert_swaks(&rec, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_tls_on_connect_implicit() {
    let (backend, rec) = Recorder::start().await;
    let sc = Sidecar::start("implicit", backend, &["received_header: false"]);
    let out = run(swaks(sc.port, "--tls-on-connect")).await.out;
    assert!(out.contains("=== TLS started with cipher TLSv1.3"), "{out}");
    assert!(out.contains("<~  220 mx.test ESMTP\n"), "{out}");
    assert!(!out.contains("STARTTLS"), "{out}");
    assert_swaks(&rec, &out);
}

/// `openssl s_client -starttls smtp` with `flags`, driven line by line: each command is
/// written only after the reply to the previous one arrived.
async fn s_client(port: u16, flags: &str) -> Done {
    let args = format!(
        "s_client -starttls smtp -connect 127.0.0.1:{port} -crlf -quiet -brief \
         -servername mx.test -name client.test {flags}"
    );
    let mut p = Proc::spawn(tool("openssl", "openssl", &args));
    tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let script = [
            ("EHLO client.test\n", "250"),
            ("MAIL FROM:<a@x.test>\n", "250"),
            ("RCPT TO:<b@y.test>\n", "250"),
            ("DATA\n", "354"),
            ("Subject: openssl\n\nhello from openssl\n.\n", "250"),
            ("QUIT\n", "221"),
        ];
        for (send, code) in script {
            let stdin = p.stdin.as_mut().unwrap();
            if stdin
                .write_all(send.as_bytes())
                .and_then(|_| stdin.flush())
                .is_err()
            {
                break;
            }
            // One whole reply: up to its last line, "ddd text".
            let mut last = String::new();
            while let Ok(line) = p.lines.recv_timeout(Duration::from_secs(20)) {
                out.push_str(&line);
                last = line;
                if last.as_bytes().get(3) != Some(&b'-') {
                    break;
                }
            }
            if !last.starts_with(code) {
                break;
            }
        }
        let done = p.finish();
        Done {
            out: out + &done.out,
            ..done
        }
    })
    .await
    .unwrap()
}

const OPENSSL_MAIL: &str =
    "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as ";
const OPENSSL_BODY: &str = "Subject: openssl\r\n\r\nhello from openssl\r\n.\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_starttls_byte_exact() {
    let (backend, rec) = Recorder::start().await;
    let sc = Sidecar::start("starttls", backend, &["received_header: false"]);
    let Done { ok, out, err } = s_client(sc.port, "").await;
    assert!(ok, "s_client failed:\n{out}\n{err}");
    assert!(
        out.starts_with("250-mx.test\r\n") && out.contains(OPENSSL_MAIL),
        "{out}"
    );
    assert!(out.ends_with("\r\n221 2.0.0 Bye\r\n"), "{out}");
    assert_eq!(rec.bodies(), [OPENSSL_BODY]);
    let t = rec.transcript_with("MAIL FROM").await;
    let expected = format!(
        "EHLO client.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
         DATA\r\n{OPENSSL_BODY}QUIT\r\n"
    );
    assert_eq!(t, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_tls12_and_tls13() {
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (backend, rec) = Recorder::start().await;
        let sc = Sidecar::start("starttls", backend, &["received_header: true"]);
        let Done { ok, out, err } = s_client(sc.port, flag).await;
        assert!(ok, "{flag}: s_client failed:\n{out}\n{err}");
        assert!(
            err.contains(&format!("Protocol version: {version}\n")),
            "{flag}: {err}"
        );
        assert!(out.contains(OPENSSL_MAIL), "{flag}: {out}");
        let bodies = rec.bodies();
        assert_eq!(bodies.len(), 1, "{flag}: {bodies:?}");
        let head = "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (smtp-sidecar) with ESMTPS\r\n";
        let head = format!("{head}\t(version={version} cipher=");
        assert!(bodies[0].starts_with(&head), "{flag}: {}", bodies[0]);
        assert!(
            bodies[0].ends_with(&format!(" +0000\r\n{OPENSSL_BODY}")),
            "{}",
            bodies[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_tls12_refused_under_tls13_minimum() {
    let (backend, rec) = Recorder::start().await;
    let sc = Sidecar::start("starttls", backend, &["tls_min_version: \"1.3\""]);
    let Done { ok, out, err } = s_client(sc.port, "-tls1_2").await;
    assert!(
        !ok && out.is_empty(),
        "a TLS 1.2 handshake succeeded:\n{out}\n{err}"
    );
    assert!(rec.messages().is_empty());
}

const PY_PRELUDE: &str = "import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=20)
print(s.ehlo()[0], s.starttls(context=ctx)[0], s.ehlo()[0])
";

/// Python's smtplib after EHLO, STARTTLS, EHLO, running `script`; its stdout.
async fn python(port: u16, script: &str) -> String {
    let mut cmd = tool("python3", "python3", "-c");
    cmd.arg(format!("{PY_PRELUDE}{script}"))
        .arg(port.to_string());
    run(cmd).await.out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_sink_backend() {
    let dumps = TempDir::new("interop");
    std::fs::set_permissions(&dumps.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let port = free_port();
    // -u is required when run as root; -d dumps each message to a file of its own.
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let user = if root { "-u nobody" } else { "" };
    let args = format!("{user} -c -d {}/%M. 127.0.0.1:{port} 10", dumps.0.display());
    let mut cmd = tool("smtp-sink", "postfix", &args);
    let mut sink = Guard(cmd.stdout(Stdio::null()).spawn().unwrap());
    assert!(
        wait_accepting(&mut sink.0, port),
        "smtp-sink exited: {:?}",
        sink.0.try_wait()
    );
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let sc = Sidecar::start("starttls", backend, &["received_header: true"]);
    let script = "print(' '.join(sorted(s.esmtp_features)))
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(b'Subject: postfix\\r\\n\\r\\nhi\\r\\n')[0])
print(s.quit()[0])";
    let out = python(sc.port, script).await;
    // smtp-sink's XCLIENT, XFORWARD and empty extension line are removed; AUTH stays (in TLS).
    let features = "8bitmime auth dsn enhancedstatuscodes pipelining size";
    assert_eq!(out, format!("250 220 250\n{features}\n250 250 250\n221\n"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let dump = loop {
        let files: Vec<_> = std::fs::read_dir(&dumps.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let contents = files
            .first()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default());
        match contents {
            Some(c) if c.ends_with("\nhi\n\n") => break c,
            _ if Instant::now() > deadline => panic!("no complete dump: {files:?} {contents:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let envelope = "X-Client-Addr: 127.0.0.1\nX-Client-Proto: ESMTP\nX-Helo-Args: client.test\n\
                    X-Mail-Args: <a@x.test>\nX-Rcpt-Args: <b@y.test>\n";
    assert!(dump.starts_with(envelope), "{dump}");
    let ours =
        "Received: from client.test ([127.0.0.1])\n\tby mx.test (smtp-sidecar) with ESMTPS\n\
                \t(version=TLSv1.3 cipher=TLS13_";
    let at = dump
        .find(ours)
        .unwrap_or_else(|| panic!("no sidecar Received header:\n{dump}"));
    let rest: Vec<&str> = dump[at..].lines().collect();
    assert!(
        rest[3].starts_with('\t') && rest[3].ends_with(" +0000"),
        "{dump}"
    );
    assert_eq!(rest[4..], ["Subject: postfix", "", "hi", ""], "{dump}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_smtp_source_load() {
    let (backend, rec) = Recorder::start().await;
    let sc = Sidecar::start("starttls", backend, &["received_header: false"]);
    let args = format!(
        "-c -m 20 -s 5 -l 2048 -M client.test -f a@x.test -t b@y.test 127.0.0.1:{}",
        sc.port
    );
    run(tool("smtp-source", "postfix", &args)).await;
    let m = rec.messages();
    assert_eq!(m.len(), 20, "{m:?}");
    let payload = |d: &str| d.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    let first = payload(&m[0].2).unwrap_or_default();
    assert!(
        first.starts_with("1XXXX") && first.ends_with("XX\r\n.\r\n"),
        "{first}"
    );
    assert!(first.len() >= 2048, "{}", first.len());
    for (from, rcpts, data) in &m {
        assert_eq!(
            (from.as_str(), rcpts.as_slice()),
            ("<a@x.test>", &["<b@y.test>".to_string()][..])
        );
        assert!(
            data.starts_with("From: <a@x.test>\r\nTo: <b@y.test>\r\n"),
            "{data}"
        );
        assert_eq!(payload(data).as_ref(), Some(&first));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_session() {
    let (backend, rec) = Recorder::start().await;
    let policy = ["received_header: false", "bare_newlines: normalize"];
    let sc = Sidecar::start("starttls", backend, &policy);
    let script =
        "def tx(body): return [s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.data(body)[0]]
print(*tx(b'Subject: one\\r\\n\\r\\nfirst\\r\\n'))
print(s.mail('a@x.test')[0], s.rcpt('c@y.test')[0], s.rset()[0], s.docmd('DATA')[0])
print(*tx(b'Subject: two\\r\\n\\r\\nsecond\\r\\n'))
print(s.sendmail('a@x.test', ['b@y.test'], b'Subject: dots\\r\\n\\r\\n.leading\\r\\nend\\r\\n'))
print(s.mail('a@x.test')[0], s.rcpt('b@y.test')[0], s.docmd('DATA')[0])
s.send(b'a\\n.\\nb\\r\\n.\\r\\n')
print(s.getreply()[0], s.quit()[0])";
    let out = python(sc.port, script).await;
    let expected =
        "250 220 250\n250 250 250\n250 250 250 503\n250 250 250\n{}\n250 250 354\n250 221\n";
    assert_eq!(out, expected);
    let bodies = [
        "Subject: one\r\n\r\nfirst\r\n.\r\n",
        "Subject: two\r\n\r\nsecond\r\n.\r\n",
        "Subject: dots\r\n\r\n..leading\r\nend\r\n.\r\n",
        "a\r\n..\r\nb\r\n.\r\n",
    ];
    assert_eq!(rec.bodies(), bodies);
    let t = rec.transcript_with("RSET").await;
    let rset =
        "\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nRSET\r\nMAIL FROM:<a@x.test>\r\n";
    assert!(
        t.contains(rset) && t.ends_with("\r\nb\r\n.\r\nQUIT\r\n"),
        "{t}"
    );
}
