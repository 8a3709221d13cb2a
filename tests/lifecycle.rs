//! End to end: shutdown and drain, a hostile backend, and the real binary's signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::process::{accepted, free_port, wait_listening, Guard};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::test]
async fn shutdown_lets_the_transaction_finish_then_says_421() {
    let (backend, rec) = recording_backend().await;
    let running = start(&config_yaml(backend, "starttls", "")).await;
    let addr = running.addr("inbound").unwrap();
    let mut idle = Client::connect(addr).await;
    idle.reply().await;
    let mut busy = Client::connect(addr).await;
    busy.reply().await;
    busy.cmd("EHLO client.test").await;
    assert_eq!(busy.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Ok\r\n");
    let stopping = tokio::spawn(running.shutdown());
    // The idle session is told at once; the one in a transaction carries on.
    assert_eq!(idle.reply().await, "421 4.3.2 Service shutting down\r\n");
    assert!(idle.closed().await);
    assert_eq!(busy.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        busy.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    busy.send(b"x\r\n.\r\n").await;
    assert!(busy.reply().await.starts_with("250 2.0.0 Ok"));
    assert_eq!(busy.reply().await, "421 4.3.2 Service shutting down\r\n");
    assert_eq!(rec.messages().len(), 1);
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// A STARTTLS listener in front of `backend` whose shutdown grace is 300 ms.
fn short_grace(backend: std::net::SocketAddr) -> String {
    config_yaml(backend, "starttls", "").replace("shutdown_grace: 2s", "shutdown_grace: 300ms")
}

#[tokio::test]
async fn shutdown_grace_expiry_closes_what_is_left() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&short_grace(backend)).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    c.cmd("DATA").await;
    c.send(b"a message that never ends\r\n").await;
    let started = std::time::Instant::now();
    running.shutdown().await;
    assert_eq!(c.reply().await, "421 4.3.2 Service shutting down\r\n");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A client silent after STARTTLS's `220` is in no wait the session's loop watches (the
/// handshake's, up to its deadline): at the grace's end it is given up like any session, and
/// the shutdown does not wait beyond.
#[tokio::test]
async fn shutdown_grace_expiry_ends_a_handshake_after_starttls() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&short_grace(backend)).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let started = std::time::Instant::now();
    running.shutdown().await;
    // The runtime waits 5 s past the grace for what is left: none is.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(c.closed().await);
}

/// The same for a handshake the sidecar starts: a backend silent after its `220` to our
/// STARTTLS (`backend.tls: starttls`).
#[tokio::test]
async fn shutdown_grace_expiry_ends_a_handshake_with_the_backend() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (stalled_tx, stalled) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        s.write_all(b"220 legacy.test ESMTP\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
        s.write_all(b"250-legacy.test\r\n250 STARTTLS\r\n")
            .await
            .unwrap();
        let _ = s.read(&mut buf).await;
        s.write_all(b"220 go ahead\r\n").await.unwrap();
        let _ = stalled_tx.send(());
        // The ClientHello, then silence until the sidecar gives up.
        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let yaml = short_grace(backend).replace(
        "      connect_timeout: 2s\n",
        "      connect_timeout: 2s\n      tls: starttls\n      tls_verify: false\n",
    );
    let running = start(&yaml).await;
    let _client = tokio::net::TcpStream::connect(running.addr("inbound").unwrap())
        .await
        .unwrap();
    tokio::time::timeout(T, stalled).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    running.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

/// A listener on `tls` (`proxy`: its PROXY line, or nothing) whose shutdown grace outlasts
/// the test: a shutdown that returns at once did not wait for the connections below.
fn no_session_yet_yaml(backend: std::net::SocketAddr, tls: &str, proxy: &str) -> String {
    config_yaml(backend, tls, "")
        .replace("shutdown_grace: 2s", "shutdown_grace: 20s")
        .replace(
            "    tls: starttls\n",
            &format!("    tls: starttls\n{proxy}"),
        )
}

/// A connection that is no session yet, waited for in its implicit-TLS handshake or its
/// PROXY header, does not hold the shutdown up until its deadline (30 and 10 s) or the
/// grace's end: it is closed at once.
#[tokio::test]
async fn shutdown_closes_a_connection_that_is_no_session_yet() {
    for (tls, proxy) in [("implicit", ""), ("starttls", "    proxy_protocol: true\n")] {
        let (backend, _rec) = recording_backend().await;
        let running = start(&no_session_yet_yaml(backend, tls, proxy)).await;
        let addr = running.addr("inbound").unwrap();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accepted, and waiting for the client.
        eventually(|| accepted(addr.port(), port), "accepted").await;
        let stopping = tokio::time::timeout(Duration::from_secs(5), running.shutdown());
        stopping
            .await
            .unwrap_or_else(|_| panic!("{tls}{proxy}: shutdown held up"));
        // Closed by the sidecar (a FIN), not reset as a connection still in the accept queue
        // is when the listener closes: it was accepted and waited for.
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(T, silent.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0)), "{tls}{proxy}: {read:?}");
    }
}

/// Such a connection's close is logged, one line each: what it was waiting for, and whose it
/// was (the client's address; the balancer's, before its PROXY header). It is no session, so
/// no session's closing line would tell of it.
#[tokio::test]
async fn a_connection_closed_at_shutdown_before_its_session_is_logged() {
    const WHY: &str = "connection closed: shutting down before its session began";
    for (tls, proxy, waiting) in [
        ("implicit", "", "TLS handshake"),
        ("starttls", "    proxy_protocol: true\n", "PROXY header"),
    ] {
        let (backend, _rec) = recording_backend().await;
        let sidecar = binary::start_binary(&no_session_yet_yaml(backend, tls, proxy));
        let addr = sidecar.addr("inbound").unwrap();
        let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accepted, and waiting for the client.
        eventually(|| accepted(addr.port(), port), "accepted").await;
        sidecar.signal("TERM");
        sidecar.wait_log(WHY, 1).await;
        let log = sidecar.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(WHY)).collect();
        let whose = if proxy.is_empty() { "peer" } else { "proxy" };
        assert_eq!(lines.len(), 1, "{tls}{proxy}: {log}");
        for field in [
            format!("{whose}=127.0.0.1:{port}"),
            format!("waiting=\"{waiting}\""),
            "listener=inbound".to_string(),
        ] {
            assert!(lines[0].contains(&field), "{field} missing: {}", lines[0]);
        }
    }
}

/// A backend whose EHLO reply is `lines` lines long, optionally never finished.
async fn hostile_backend(lines: usize, finish: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"220 hostile ESMTP\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf).await;
        let mut reply = Vec::new();
        for i in 0..lines {
            reply.extend_from_slice(format!("250-X-EXTENSION-{i}\r\n").as_bytes());
        }
        if finish {
            reply.extend_from_slice(b"250 END\r\n");
        }
        let _ = s.write_all(&reply).await;
        let _ = s.read(&mut buf).await;
    });
    addr
}

#[tokio::test]
async fn twenty_thousand_line_ehlo_reply_is_refused() {
    let backend = hostile_backend(20_000, true).await;
    let running = start(&config_yaml(backend, "starttls", "")).await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn unterminated_multiline_reply_times_out() {
    let backend = hostile_backend(3, false).await;
    let running = start(&config_yaml(
        backend,
        "starttls",
        "      timeouts: {command: 1s}\n",
    ))
    .await;
    let mut c = Client::connect(running.addr("inbound").unwrap()).await;
    c.reply().await;
    let started = std::time::Instant::now();
    assert_eq!(
        c.cmd("EHLO client.test").await,
        "421 4.4.2 Backend unavailable, try again later\r\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn too_many_connections_in_total() {
    let (backend, _rec) = recording_backend().await;
    let running = start(&config_yaml(
        backend,
        "starttls",
        "      max_connections: 2\n",
    ))
    .await;
    let addr = running.addr("inbound").unwrap();
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    assert_eq!(a.reply().await, "220 mx.test ESMTP\r\n");
    assert_eq!(b.reply().await, "220 mx.test ESMTP\r\n");
    let mut c = Client::connect(addr).await;
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
}

#[test]
fn binary_exits_zero_on_sigterm_and_sigint() {
    let dir = std::env::temp_dir().join(format!("smtp-sidecar-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for signal in ["TERM", "INT"] {
        let port = free_port();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "hostname: mx.test\nstate_dir: {}\nshutdown_grace: 1s\nlisteners:\n  - name: in\n    listen: 127.0.0.1:{port}\n    backend: {{servers: [\"127.0.0.1:9\"]}}\n",
                dir.join("state").display()
            ),
        )
        .unwrap();
        // Killed if the test fails: left running, it would hold the test's output open.
        let mut guard = Guard(
            std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
                .args(["run", "-c"])
                .arg(&config)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let child = &mut guard.0;
        // Its own listener: the signal handlers are installed before it binds.
        assert!(wait_listening(child, port), "sidecar did not start");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let code = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(code.success(), "SIG{signal}: {code:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `smtp-sidecar check -c <config>`.
fn run_check(config: &std::path::Path) -> std::process::Output {
    sidecar("check", config)
}

/// `smtp-sidecar <command> -c <config>`, to its end.
fn sidecar(command: &str, config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args([command, "-c"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn check_exits_one_with_every_problem() {
    let dir = std::env::temp_dir().join(format!("smtp-sidecar-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.yaml");
    std::fs::write(
        &config,
        "listeners:\n  - name: x\n    listen: nope\n    backend: {servers: []}\n    colour: blue\n",
    )
    .unwrap();
    let out = run_check(&config);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "listeners[0].listen",
        "listeners[0].backend.servers",
        "listeners[0].colour: unknown key",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    let ok = run_check(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml.example").as_ref());
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("listener inbound (terminate, tls: starttls, listen: 0.0.0.0:25)"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_prints_the_certificate_each_listener_serves() {
    let dir = common::process::TempDir::new("check-cert");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["mail.example.test".to_string()]).unwrap();
    std::fs::write(dir.0.join("mail.pem"), cert.pem()).unwrap();
    std::fs::write(dir.0.join("mail.key"), signing_key.serialize_pem()).unwrap();
    let sha256 = smtp_sidecar::tls::CertInfo::from_der(cert.der())
        .unwrap()
        .sha256;
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "certificates:\n  - name: internet\n    cert: {0}/mail.pem\n    key: {0}/mail.key\n\
             listeners:\n  - name: smtps\n    listen: 127.0.0.1:465\n    tls: implicit\n\
             \x20   certificate: {{name: internet}}\n    backend: {{servers: [\"127.0.0.1:2525\"]}}\n",
            dir.0.display()
        ),
    )
    .unwrap();
    let out = run_check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listener smtps (terminate, tls: implicit, listen: 127.0.0.1:465)"),
        "{stdout}"
    );
    assert!(stdout.contains("  certificate internet:"), "{stdout}");
    assert!(stdout.contains("SANs:       mail.example.test"), "{stdout}");
    assert!(
        stdout.contains(&format!("SHA-256:    {sha256}")),
        "{stdout}"
    );
    assert!(stdout.contains("SHA-1:      "), "{stdout}");
    assert!(stdout.contains("(valid)"), "{stdout}");
    // A key that belongs to another certificate: exit 1, naming the file.
    let other = rcgen::generate_simple_self_signed(vec!["other.test".to_string()]).unwrap();
    std::fs::write(dir.0.join("mail.key"), other.signing_key.serialize_pem()).unwrap();
    let out = run_check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("mail.key") && stderr.contains("does not match"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_an_originate_listener_and_prints_its_policy() {
    let dir = common::process::TempDir::new("check-originate");
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "hostname: mx.test\nstate_dir: {}\n\
             resolver: {{nameservers: [\"127.0.0.1:5353\"], timeout: 2s, allow_loopback: true}}\n\
             listeners:\n  - name: outbound\n    mode: originate\n    listen: 127.0.0.1:10025\n\
             \x20   next_hop: mx\n    policy:\n      default: encrypt\n      on_failure: bounce\n\
             \x20     domains: {{woodgrovebank.com: domain-secure, example.net: verify}}\n",
            dir.0.join("state").display()
        ),
    )
    .unwrap();
    let out = run_check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for needle in [
        "listener outbound (originate, listen: 127.0.0.1:10025):",
        "  next_hop: mx (name servers: 127.0.0.1:5353; timeout 2s; loopback next hops allowed \
         (resolver.allow_loopback: a test rig))",
        "  policy: default: encrypt, on_failure: bounce, enforce: true",
        "          woodgrovebank.com: domain-secure",
        "          example.net: verify",
        "  client certificate self-signed: generated by the first run",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("domain-secure would present the self-signed certificate"),
        "{stderr}"
    );
}

/// A client certificate whose extendedKeyUsage lacks clientAuth works in no mutual TLS:
/// `check` warns where domain-secure would present it, and not for one that allows it.
#[test]
fn check_warns_of_a_client_certificate_without_client_auth() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    for (ekus, warned) in [
        (vec![ServerAuth], true),
        (vec![ServerAuth, ClientAuth], false),
    ] {
        let dir = common::process::TempDir::new("check-client-auth");
        let mut params = rcgen::CertificateParams::new(vec!["mx.test".into()]).unwrap();
        params.extended_key_usages = ekus;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.0.join("c.crt"), cert.pem()).unwrap();
        std::fs::write(dir.0.join("c.key"), key.serialize_pem()).unwrap();
        let config = dir.0.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "hostname: mx.test\nstate_dir: {state}\n\
                 certificates:\n  - name: relay\n    cert: {dir}/c.crt\n    key: {dir}/c.key\n\
                 listeners:\n  - name: outbound\n    mode: originate\n\
                 \x20   listen: 127.0.0.1:10025\n    next_hop: \"127.0.0.1:2525\"\n\
                 \x20   policy: {{default: domain-secure}}\n",
                state = dir.0.join("state").display(),
                dir = dir.0.display(),
            ),
        )
        .unwrap();
        let out = run_check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let warning = "warning: listener outbound: the client certificate does not allow TLS \
                       client authentication (its extendedKeyUsage lacks clientAuth); \
                       domain-secure partners will refuse it";
        assert_eq!(stderr.contains(warning), warned, "{stderr}");
    }
}

/// `check` builds what `run` builds: a backend hop that verifies with no anchor to verify
/// against stops both, with the same message naming the listener's key path.
#[test]
fn check_refuses_what_run_refuses() {
    let dir = common::process::TempDir::new("check-as-run");
    let config = dir.0.join("config.yaml");
    let state = dir.0.join("state");
    let yaml = format!(
        "hostname: mx.test\nstate_dir: {}\ntrust: {{system_roots: false}}\n\
         listeners:\n  - name: inbound\n    listen: 127.0.0.1:0\n\
         \x20   backend:\n      servers: [\"127.0.0.1:2526\"]\n      tls: starttls\n\
         \x20     tls_verify: true\n",
        state.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let problem = "listeners[0] (inbound).backend.tls: backend.tls_verify needs trust anchors";
    let out = run_check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(problem), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
        "{stderr}"
    );

    let run = sidecar("run", &config);
    let log = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{log}");
    assert!(log.contains(problem), "{log}");
}

/// `smtp-sidecar demo` as the README runs it: fixed ports 2525, 2526 and 9725.
#[tokio::test]
async fn demo_relays_a_message_and_prints_it() {
    /// Kills the demo if the test fails before stopping it.
    struct Demo(Option<std::process::Child>);
    impl Drop for Demo {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut demo = Demo(Some(
        std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
            .arg("demo")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let addr: std::net::SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let mut connected = None;
    for _ in 0..200 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            connected = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(connected.expect("demo listening on 127.0.0.1:2525"));
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, "220 localhost ESMTP\r\n");
    assert!(c.cmd("EHLO client.test").await.contains("250 STARTTLS\r\n"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let mut c = c.upgrade().await;
    c.cmd("EHLO client.test").await;
    assert_eq!(
        c.cmd("MAIL FROM:<me@example.com>").await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<you@example.com>").await, "250 2.1.5 Ok\r\n");
    c.cmd("DATA").await;
    c.send(b"Subject: demo test\r\n\r\nhello demo\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    c.cmd("QUIT").await;
    let metrics = {
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:9725")
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    assert!(
        metrics.contains(
            "smtp_sidecar_messages_total{listener=\"demo\",result=\"accepted\",tls=\"yes\"} 1"
        ),
        "{metrics}"
    );
    // The sink printed the message: stop the demo and read its output.
    let child = demo.0.take().unwrap();
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    let out = tokio::time::timeout(T, waited)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Send a test message"), "{stdout}");
    assert!(
        stdout.contains("sink received a message: EHLO client.test, MAIL FROM:<me@example.com>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Subject: demo test\n\nhello demo\n"),
        "{stdout}"
    );
}

/// The thread names of a running process.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// On one core (`taskset` here; a cgroup quota of one CPU counts the same) the binary runs
/// tokio's current-thread runtime: the process's one thread carries every session, with no
/// worker threads to hand them between (its other threads are the admission threads' one, idle
/// but under a handshake flood, and the log's writer, `log`). On more cores it has a worker
/// per core. Both relay.
#[tokio::test]
async fn one_core_is_one_thread_more_cores_a_worker_each() {
    let (backend, rec) = recording_backend().await;
    let cores = std::thread::available_parallelism().unwrap().get();
    // Unpinned on a one-core machine, it is the current-thread runtime too.
    let unpinned = if cores == 1 { 0 } else { cores };
    for (cpus, workers) in [(Some("0"), 0), (None, unpinned)] {
        let sidecar = binary::start_binary_on(&config_yaml(backend, "starttls", ""), cpus);
        let mut c = Client::connect(sidecar.addr("inbound").unwrap()).await;
        c.reply().await;
        c.cmd("EHLO client.test").await;
        c.cmd("MAIL FROM:<a@x.test>").await;
        c.cmd("RCPT TO:<b@y.test>").await;
        c.cmd("DATA").await;
        c.send(b"one core or two\r\n.\r\n").await;
        assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
        let threads = thread_names(sidecar.pid());
        let running = threads.iter().filter(|t| *t == "tokio-rt-worker").count();
        assert_eq!(running, workers, "{cpus:?}: {threads:?}");
        // And as many admission threads (a handshake flood's, `io::admission`) as cores.
        let admission = threads.iter().filter(|t| *t == "admission").count();
        assert_eq!(admission, workers.max(1), "{cpus:?}: {threads:?}");
        if cpus.is_some() {
            assert_eq!(threads, ["admission", "log", "smtp-sidecar"]);
        }
    }
    assert_eq!(rec.messages().len(), 2);
}

/// `RUST_LOG` is checked as `log.level` is: `warning` (a bare word the filter would take for a
/// module's name, showing no line of the sidecar's) is said and ignored, so the error of a
/// start that fails (its port is taken) is still written.
#[test]
fn a_rust_log_that_would_silence_the_sidecar_is_said_and_ignored() {
    let dir = std::env::temp_dir().join(format!("smtp-sidecar-rustlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "hostname: mx.test\nstate_dir: {}\nlisteners:\n  - name: in\n    listen: 127.0.0.1:{port}\n    backend: {{servers: [\"127.0.0.1:9\"]}}\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RUST_LOG ignored: unknown level \"warning\""),
        "{stderr}"
    );
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}
