//! End to end with the real binary: the resource bounds around the sessions. The open-file
//! limit raised at start (and logged), `check`'s warning when `max_connections` cannot fit in
//! it, and the admin endpoint's own connection cap and timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, wait_accepting, Guard, TempDir};

/// The deadline on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// The hard open-file limit this test process hands down to its children.
fn hard_limit() -> Option<u64> {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().ok() // "unlimited": None
}

/// A backend on a free port of its own: each connection served by `serve` on a thread.
fn backend(serve: fn(TcpStream)) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

/// A backend that greets every connection with `220` and then holds it open, reading and
/// discarding, until the test ends: each session in front of it keeps its descriptor.
fn greeting_backend() -> SocketAddr {
    backend(|mut stream| {
        if stream.write_all(b"220 backend.test ESMTP\r\n").is_ok() {
            let mut buf = [0u8; 512];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    })
}

/// The real binary running `run`, its stderr in `<dir>/sidecar.log`.
struct Sidecar {
    smtp: SocketAddr,
    admin: Option<SocketAddr>,
    dir: TempDir,
    _child: Guard,
}

impl Sidecar {
    /// `policy`: lines of the listener's `policy:` section; `shell`: commands run before the
    /// binary is exec'd (e.g. `ulimit -Sn 256`); `admin`: with a `metrics.listen` endpoint.
    fn start(backend: SocketAddr, policy: &str, shell: &str, admin: bool) -> Sidecar {
        let dir = TempDir::new("resources");
        for _attempt in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            let metrics = if admin {
                format!("metrics:\n  listen: 127.0.0.1:{admin_port}\n")
            } else {
                String::new()
            };
            let yaml = format!(
                "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\n{metrics}\
                 listeners:\n  - name: inbound\n    mode: terminate\n    listen: 127.0.0.1:{port}\n\
                 \x20   backend:\n      servers: [\"{backend}\"]\n      connect_timeout: 2s\n\
                 \x20   policy:\n{policy}",
                dir.0.join("state").display()
            );
            let config = dir.0.join("config.yaml");
            std::fs::write(&config, yaml).unwrap();
            let log = std::fs::File::create(dir.0.join("sidecar.log")).unwrap();
            let child = Command::new("sh")
                .arg("-c")
                .arg(format!("{shell}\nexec \"$0\" run -c \"$1\""))
                .arg(env!("CARGO_BIN_EXE_smtp-sidecar"))
                .arg(&config)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            let mut child = Guard(child.unwrap());
            let up = wait_accepting(&mut child.0, port)
                && (!admin || wait_accepting(&mut child.0, admin_port));
            if up {
                return Sidecar {
                    smtp: SocketAddr::from(([127, 0, 0, 1], port)),
                    admin: admin.then(|| SocketAddr::from(([127, 0, 0, 1], admin_port))),
                    dir,
                    _child: child,
                };
            }
            eprintln!("sidecar exited (port taken?):\n{}", self::log(&dir));
        }
        panic!("the sidecar did not start");
    }

    fn log(&self) -> String {
        log(&self.dir)
    }
}

fn log(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("sidecar.log")).unwrap_or_default()
}

/// Connect with a read deadline on the stream.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// The first line the server sends, or what went wrong instead.
fn first_line(s: &TcpStream) -> String {
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(0) => "(closed)".into(),
        Ok(_) => line,
        Err(e) => format!("({e})"),
    }
}

/// True when the server closes `s` within `within` (EOF or reset); false if it is still
/// open then.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    }
}

/// More sessions than a soft limit of 256 descriptors allows (two each: client and backend)
/// all get the greeting, because the sidecar raises its soft limit to the hard one at start.
#[test]
fn sessions_beyond_the_inherited_soft_limit_all_get_the_greeting() {
    const SESSIONS: usize = 300;
    let hard = hard_limit();
    // A test never skips: a machine whose hard limit cannot hold the sessions fails here.
    assert!(
        hard.is_none_or(|h| h >= 2 * SESSIONS as u64 + 100),
        "the hard open-file limit here ({hard:?}) is too low for this test: raise it (ulimit -Hn)"
    );
    let backend = greeting_backend();
    let sidecar = Sidecar::start(
        backend,
        "      max_connections: 1000\n      max_connections_per_ip: 1000\n",
        "ulimit -Sn 256 || exit 99",
        false,
    );
    let mut sessions = Vec::new();
    let mut refused = Vec::new();
    // One deadline for all: a sidecar out of descriptors may leave connections unanswered.
    let deadline = Instant::now() + 3 * WAIT;
    for i in 0..SESSIONS {
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let greeting = match TcpStream::connect_timeout(&sidecar.smtp, left()) {
            Ok(s) => {
                s.set_read_timeout(Some(left())).unwrap();
                let greeting = first_line(&s);
                sessions.push(s);
                greeting
            }
            Err(e) => format!("(connect: {e})"),
        };
        if !greeting.starts_with("220 ") {
            refused.push(format!("session {i}: {greeting:?}"));
        }
    }
    let log = sidecar.log();
    assert!(
        refused.is_empty(),
        "{} of {SESSIONS} sessions were not greeted, first: {}\n{}",
        refused.len(),
        refused[0],
        &log[..log.len().min(4000)]
    );
    let after = hard.map_or("unlimited".to_string(), |h| h.to_string());
    assert!(
        log.contains("open-file limit raised") && log.contains("before=256"),
        "{log}"
    );
    assert!(log.contains(&format!("after={after}")), "{log}");
}

/// `smtp-sidecar check -c <dir>/config.yaml` with the open-file limit set to `limit` (soft
/// and hard: lowering the hard limit needs no privilege).
fn check(dir: &TempDir, listeners: &[u32], limit: u64) -> Output {
    let mut yaml = format!(
        "hostname: mx.test\nstate_dir: {}\nlisteners:\n",
        dir.0.join("state").display()
    );
    for (i, max) in listeners.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: l{i}\n    listen: 127.0.0.1:{}\n    backend: {{servers: [\"127.0.0.1:2526\"]}}\n",
            2600 + i
        ));
        if *max != 0 {
            yaml.push_str(&format!("    policy: {{max_connections: {max}}}\n"));
        }
    }
    let config = dir.0.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {limit} || exit 99\nexec \"$0\" check -c \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn check_warns_when_max_connections_cannot_fit_in_the_open_file_limit() {
    const LIMIT: u64 = 4000;
    assert!(
        hard_limit().is_none_or(|h| h >= LIMIT),
        "the hard open-file limit here is below {LIMIT}: raise it (ulimit -Hn)"
    );
    let dir = TempDir::new("resources-check");
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // The default max_connections (1000): 2000 descriptors, 1000 for lingering closes and
    // the reserve fit in 4000.
    let out = check(&dir, &[0], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("warning"), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));
    // A huge one: warned about with the figures, still valid.
    let out = check(&dir, &[1_000_000], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "warning: listeners allow up to 1000000 sessions (2 descriptors each, 1 each for \
             as many lingering closes, 64 reserved) but the open-file limit is 4000; raise it \
             (LimitNOFILE= in systemd) or lower max_connections"
        ),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("configuration OK"), "{}", text(&out));
    // The sum over listeners counts: 1000 + 1000 sessions do not fit, either alone would.
    let out = check(&dir, &[1000, 1000], LIMIT);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("up to 2000 sessions"),
        "{}",
        text(&out)
    );
}

/// One `GET /metrics`; the status line and the body.
fn get_metrics(admin: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn admin_endpoint_caps_its_connections_and_times_out_idle_ones() {
    use smtp_sidecar::admin::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
    let backend = greeting_backend();
    let sidecar = Sidecar::start(backend, "      max_connections_per_ip: 100\n", "", true);
    let admin = sidecar.admin.unwrap();
    // wait_accepting's probe may still hold a place for a moment: wait until a request works.
    let deadline = Instant::now() + WAIT;
    while !get_metrics(admin).is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "no /metrics\n{}", sidecar.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server task gives its place back just after the client has read the end of that
    // response: let it, or one of the idle connections below could find the cap full.
    std::thread::sleep(Duration::from_millis(200));
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(admin)).collect();
    // Each accepted in turn, so that "oldest" below is the order they were opened in.
    let mut excess: Vec<TcpStream> = (0..4)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            connect(admin)
        })
        .collect();
    // Over the cap, a newcomer takes the place of the oldest connection that has sent no
    // request: the first four are closed at once, the rest and the newcomers stay open.
    let (evicted, kept) = idle.split_at_mut(4);
    for s in evicted {
        assert!(closed_within(s, Duration::from_secs(2)), "oldest kept open");
    }
    for s in kept.iter_mut().chain(&mut excess) {
        assert!(!closed_within(s, Duration::from_millis(20)), "closed early");
    }
    // So idle connections cannot lock a scraper out: it is answered with all places held.
    let response = get_metrics(admin).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut idle: Vec<TcpStream> = idle.drain(5..).chain(excess).collect();
    // SMTP is not affected.
    let smtp = connect(sidecar.smtp);
    assert_eq!(first_line(&smtp), "220 mx.test ESMTP\r\n");
    // The idle ones never send a request head: the header timeout closes them.
    let mut closed_at = Vec::new();
    for s in &mut idle {
        assert!(
            closed_within(s, HEADER_READ_TIMEOUT + Duration::from_secs(3)),
            "idle admin connection still open after {:?}",
            opened.elapsed()
        );
        closed_at.push(opened.elapsed());
    }
    let first = closed_at[0];
    assert!(
        first >= HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed after {first:?}, before the header timeout"
    );
    // Their places are free again.
    let response = get_metrics(admin).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("smtp_sidecar_connections_total"),
        "{response}"
    );
}

/// A backend that answers every command line with `250`, and `QUIT` with `221`.
fn answering_backend() -> SocketAddr {
    backend(|mut stream| {
        let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
        let _ = stream.write_all(b"220 backend.test ESMTP\r\n");
        while let Some(Ok(line)) = lines.next() {
            let quit = line.eq_ignore_ascii_case("QUIT");
            let reply: &[u8] = if quit { b"221 bye\r\n" } else { b"250 ok\r\n" };
            if stream.write_all(reply).is_err() || quit {
                break;
            }
        }
    })
}

/// One plain session: greeting, `EHLO`, `QUIT`; the replies' first lines.
fn ehlo_quit(addr: SocketAddr) -> std::io::Result<Vec<String>> {
    let s = TcpStream::connect_timeout(&addr, WAIT)?;
    s.set_read_timeout(Some(WAIT))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut reply = || -> std::io::Result<String> {
        let mut first = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(format!("{first}(closed)"));
            }
            if first.is_empty() {
                first = line.trim_end().to_string();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(first);
            }
        }
    };
    let greeting = reply()?;
    w.write_all(b"EHLO client.test\r\n")?;
    let ehlo = reply()?;
    w.write_all(b"QUIT\r\n")?;
    let quit = reply()?;
    Ok(vec![greeting, ehlo, quit])
}

/// Standard error is a pipe to whatever collects the log, and a collector can stop reading
/// (journald restarting, a paused terminal, a container runtime's full buffer). The sessions
/// do not wait for it: with stderr a pipe that nobody reads and the protocol log on (a line per
/// command and reply), 2,000 sessions are all served; the lines that did not fit the log's
/// queue are counted in `/metrics`, and once the pipe is read again the log says how many.
/// (Written from the runtime's threads, the log stopped the whole process at the first line
/// that did not fit the pipe.)
#[test]
fn a_log_reader_that_stalls_costs_log_lines_not_sessions() {
    const THREADS: usize = 4;
    const SESSIONS: usize = 500;
    let backend = answering_backend();
    let dir = TempDir::new("stalled-log");
    let fifo = dir.0.join("stderr");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "mkfifo (Debian package coreutils)"
    );
    let (port, admin_port) = (free_port(), free_port());
    let yaml = format!(
        "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\n\
         log:\n  level: info\n  protocol_log: true\n\
         metrics:\n  listen: 127.0.0.1:{admin_port}\n\
         listeners:\n  - name: inbound\n    mode: terminate\n    listen: 127.0.0.1:{port}\n\
         \x20   backend:\n      servers: [\"{backend}\"]\n\
         \x20   policy:\n      max_connections_per_ip: 1000\n",
        dir.0.join("state").display()
    );
    let config = dir.0.join("config.yaml");
    std::fs::write(&config, yaml).unwrap();
    // Descriptor 3 holds the pipe open for reading (nobody reads it), so that the writes to
    // stderr fill it and then wait, instead of failing.
    let child = Command::new("sh")
        .arg("-c")
        .arg("exec 3<>\"$2\"; exec \"$0\" run -c \"$1\" 2>\"$2\"")
        .arg(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .arg(&config)
        .arg(&fifo)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn();
    let mut child = Guard(child.unwrap());
    assert!(
        wait_accepting(&mut child.0, port),
        "the sidecar did not start"
    );
    assert!(
        wait_accepting(&mut child.0, admin_port),
        "no admin endpoint"
    );
    let smtp = SocketAddr::from(([127, 0, 0, 1], port));
    // Each client stops at its first failure: a stalled sidecar fails the test in one WAIT.
    let clients: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                (0..SESSIONS).find_map(|i| match ehlo_quit(smtp) {
                    Ok(r)
                        if r[0].starts_with("220 ")
                            && r[1].starts_with("250")
                            && r[2].starts_with("221 ") =>
                    {
                        None
                    }
                    Ok(r) => Some(format!("session {i}: {r:?}")),
                    Err(e) => Some(format!("session {i}: {e}")),
                })
            })
        })
        .collect();
    let failed: Vec<_> = clients
        .into_iter()
        .filter_map(|c| c.join().unwrap())
        .collect();
    assert!(failed.is_empty(), "sessions failed: {failed:?}");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let metrics = get_metrics(admin).unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("smtp_sidecar_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no log_lines_dropped_total in\n{metrics}"));
    assert!(
        dropped > 0,
        "no line dropped: the test's load did not fill the queue"
    );
    // Read the pipe again: what was queued comes out, then the warning.
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::fs::File::open(&fifo).unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let warning = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) if line.contains("log lines dropped") => break line,
            Ok(_) => {}
            Err(e) => panic!("no warning of the dropped lines in the log ({e})"),
        }
    };
    assert!(
        warning.contains("WARN") && warning.contains("lines="),
        "{warning}"
    );
}
