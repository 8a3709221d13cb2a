//! Certificate selection end to end (issue 12), with real TLS on 127.0.0.1 and a test PKI made
//! with rcgen (`common/pki.rs`): by name, by SHA-1, by SHA-256; a rule that matches nothing
//! (`check` fails, `run` serves without STARTTLS, an implicit listener refuses to start); an
//! expired explicit choice; SNI (wildcards too), the `hostname` fallback and Exchange's order;
//! the self-signed default across restarts; the expiry gauge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::start_binary;
use common::pki::{
    implicit_presented, path, sha256, starttls_presented, KeyFormat, Leaf, Pki, Spec,
};
use common::{recording_backend, Client};
use smtp_sidecar::runtime::Running;

/// A configuration with `leaves` as the store and one listener with the `certificate` rule
/// given (a YAML flow mapping, or "" for none).
fn yaml(leaves: &[&Leaf], backend: SocketAddr, tls: &str, certificate: &str) -> String {
    let mut out = String::from("hostname: mx.test\nshutdown_grace: 1s\n");
    if !leaves.is_empty() {
        out.push_str("certificates:\n");
        for l in leaves {
            out.push_str(&l.yaml_entry());
        }
    }
    out.push_str(&format!(
        "listeners:\n  - name: inbound\n    listen: 127.0.0.1:0\n    tls: {tls}\n\
         \x20   backend: {{servers: [\"{backend}\"], connect_timeout: 2s}}\n"
    ));
    if !certificate.is_empty() {
        out.push_str(&format!("    certificate: {certificate}\n"));
    }
    out
}

/// The listener in this process, over the store of `leaves`.
async fn start(leaves: &[&Leaf], tls: &str, certificate: &str) -> (Running, SocketAddr) {
    let (backend, _rec) = recording_backend().await;
    let config = smtp_sidecar::config::parse(&yaml(leaves, backend, tls, certificate))
        .unwrap_or_else(|e| panic!("{:?}", e.problems));
    let running = smtp_sidecar::runtime::start(&config, &Pki::store(leaves))
        .await
        .unwrap();
    let addr = running.addr("inbound").unwrap();
    (running, addr)
}

fn colons_lower(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn explicit_name_sha1_and_sha256_are_served_whatever_the_sni() {
    let pki = Pki::new("explicit");
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let b = pki.leaf("b", Spec::ca(&["b.test"]).self_signed());
    let info = b.info();
    let rules = [
        "{name: b}".to_string(),
        format!("{{thumbprint: \"{}\"}}", info.sha1),
        format!("{{thumbprint: \"{}\"}}", colons_lower(&info.sha256)),
        format!(
            "{{thumbprint: \"{}\"}}",
            info.sha1.to_ascii_lowercase().replace("", " ").trim()
        ),
    ];
    for rule in &rules {
        let (running, addr) = start(&[&mx, &b], "starttls", rule).await;
        for sni in [Some("mx.test"), Some("b.test"), None] {
            let got = starttls_presented(addr, sni).await;
            assert_eq!(sha256(&got), info.sha256, "{rule}, SNI {sni:?}");
        }
        running.shutdown().await;
    }
}

#[tokio::test]
async fn sni_chooses_wildcards_one_label_and_hostname_without_sni() {
    let pki = Pki::new("sni");
    // Listed first and the newest: the best of all, if hostname did not decide.
    let other = pki.leaf(
        "other",
        Spec::ca(&["other.example.net"])
            .years(2024, 2090)
            .key(KeyFormat::Sec1),
    );
    let wild = pki.leaf("wild", Spec::ca(&["*.example.org"]));
    let rsa = pki.leaf(
        "rsa",
        Spec::ca(&["rsa.example.com"]).key(KeyFormat::RsaPkcs1),
    );
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]).years(2021, 2090));
    let leaves = [&other, &wild, &rsa, &mx];
    for tls in ["starttls", "implicit"] {
        let (running, addr) = start(&leaves, tls, "").await;
        let cases = [
            (Some("other.example.net"), &other),
            (Some("smtp.example.org"), &wild),
            (Some("rsa.example.com"), &rsa),
            (Some("mx.test"), &mx),
            // A wildcard covers exactly one label: these fall back to hostname.
            (Some("a.b.example.org"), &mx),
            (Some("example.org"), &mx),
            (Some("unknown.test"), &mx),
            (None, &mx),
        ];
        for (sni, want) in cases {
            let got = match tls {
                "starttls" => starttls_presented(addr, sni).await,
                _ => implicit_presented(addr, sni).await,
            };
            assert_eq!(sha256(&got), sha256(&want.der), "{tls}, SNI {sni:?}");
        }
        running.shutdown().await;
    }
}

#[tokio::test]
async fn exchange_order_valid_then_ca_issued_then_newest() {
    let pki = Pki::new("order");
    let for_mx = |name, spec: Spec<'_>| pki.leaf(name, spec);
    let expired_ca = for_mx("expired-ca", Spec::ca(&["mx.test"]).years(2025, 2026));
    let self_signed_newest = for_mx(
        "ss-new",
        Spec::ca(&["mx.test"]).years(2026, 2090).self_signed(),
    );
    let self_signed_older = for_mx(
        "ss-old",
        Spec::ca(&["mx.test"]).years(2022, 2090).self_signed(),
    );
    let ca_older = for_mx("ca-old", Spec::ca(&["mx.test"]).years(2020, 2090));
    let ca_newer = for_mx("ca-new", Spec::ca(&["mx.test"]).years(2023, 2090));
    let cases: [(&[&Leaf], &Leaf); 4] = [
        (
            &[&expired_ca, &self_signed_newest, &ca_older, &ca_newer],
            &ca_newer,
        ),
        // Valid before expired, even self-signed against CA-issued.
        (&[&expired_ca, &self_signed_older], &self_signed_older),
        // CA-issued before self-signed, even an older one.
        (&[&self_signed_newest, &ca_older], &ca_older),
        // Newest notBefore among equals.
        (
            &[&self_signed_older, &self_signed_newest],
            &self_signed_newest,
        ),
    ];
    for (leaves, want) in cases {
        let names: Vec<_> = leaves.iter().map(|l| l.name.as_str()).collect();
        let (running, addr) = start(leaves, "starttls", "").await;
        for sni in [Some("mx.test"), None] {
            let got = starttls_presented(addr, sni).await;
            assert_eq!(sha256(&got), sha256(&want.der), "{names:?}, SNI {sni:?}");
        }
        running.shutdown().await;
    }
}

#[tokio::test]
async fn expiry_gauge_is_each_certificates_not_after() {
    let pki = Pki::new("gauge");
    let a = pki.leaf("a", Spec::ca(&["mx.test"]).years(2024, 2031));
    let old = pki.leaf(
        "old",
        Spec::ca(&["old.test"]).years(2019, 2020).self_signed(),
    );
    let (running, _) = start(&[&a, &old], "starttls", "").await;
    let text = running.metrics.render();
    assert_eq!(a.not_after, 1_924_992_000); // 2031-01-01T00:00:00Z
    for (leaf, subject, value) in [
        (&a, "CN=mx.test", "1924992000"),
        (&old, "CN=old.test", "1577836800"),
    ] {
        let line = format!(
            "smtp_sidecar_certificate_expiry_timestamp_seconds{{name=\"{}\",subject=\"{subject}\",thumbprint=\"{}\"}} {value}\n",
            leaf.name,
            leaf.info().sha1
        );
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    running.shutdown().await;
}

/// `smtp-sidecar check -c` on `yaml` written to `dir`.
fn check(dir: &std::path::Path, yaml: &str) -> (Option<i32>, String, String) {
    let config = dir.join("check.yaml");
    std::fs::write(&config, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// With no certificates, `run` keeps the one it generates in `state_dir`, and exits 1 when it
/// cannot: `check` says so first, rather than "OK" (here its parent is a regular file).
#[test]
fn check_fails_when_state_dir_could_not_keep_a_generated_certificate() {
    let pki = Pki::new("check-state");
    let backend: SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let file = pki.dir.0.join("a-file");
    std::fs::write(&file, "").unwrap();
    for (state, code) in [
        (file.join("state"), Some(1)),
        (pki.dir.0.join("new/state"), Some(0)),
    ] {
        let text = format!(
            "state_dir: {}\n{}",
            state.display(),
            yaml(&[], backend, "starttls", "")
        );
        let (got, stdout, stderr) = check(&pki.dir.0, &text);
        assert_eq!(got, code, "{}: {stdout}{stderr}", state.display());
        if code == Some(1) {
            let want = format!(
                "state_dir {}: {} is not a directory",
                state.display(),
                file.display()
            );
            assert!(stderr.contains(&want), "{want} in\n{stderr}");
        }
    }
    assert!(!pki.dir.0.join("new").exists(), "check wrote nothing");
}

#[test]
fn check_says_what_each_rule_yields_and_fails_on_a_miss() {
    let pki = Pki::new("check");
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let b = pki.leaf("b", Spec::ca(&["b.test"]));
    let backend: SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let base = yaml(&[&mx, &b], backend, "starttls", "");
    let sha1 = b.info().sha1;
    let explicit = format!(
        "{base}  - name: second\n    listen: 127.0.0.1:2\n    certificate: {{thumbprint: \"{sha1}\"}}\n\
         \x20   backend: {{servers: [\"{backend}\"]}}\n"
    );
    let (code, stdout, stderr) = check(&pki.dir.0, &explicit);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("  certificate mx: without SNI or with an SNI no certificate has (matches hostname mx.test)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  SNI picks among 2 certificate(s) by name"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  certificate b: by certificate.thumbprint, served to every client"),
        "{stdout}"
    );

    let unknown = "AB".repeat(20);
    for (rule, named) in [
        (format!("{{thumbprint: \"{unknown}\"}}"), unknown.as_str()),
        ("{name: intranet}".to_string(), "\"intranet\""),
    ] {
        let (code, stdout, stderr) =
            check(&pki.dir.0, &yaml(&[&mx, &b], backend, "starttls", &rule));
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(
            stderr.contains("listener inbound: certificate."),
            "{stderr}"
        );
        assert!(stderr.contains(named), "{named} in {stderr}");
        assert!(stderr.contains("without STARTTLS"), "{stderr}");
    }
}

#[tokio::test]
async fn unknown_thumbprint_run_serves_without_starttls() {
    let pki = Pki::new("unknown-run");
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let (backend, _rec) = recording_backend().await;
    let unknown = "CD".repeat(32);
    let rule = format!("{{thumbprint: \"{}\"}}", colons_lower(&unknown));
    let sidecar = start_binary(&yaml(&[&mx], backend, "starttls", &rule));
    let log = sidecar.log();
    assert!(
        log.contains("ERROR") && log.contains(&unknown) && log.contains("STARTTLS is not offered"),
        "{log}"
    );
    for _ in 0..2 {
        let mut c = Client::connect(sidecar.addr("inbound").unwrap()).await;
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(
            ehlo.starts_with("250-mx.test\r\n") && !ehlo.contains("STARTTLS"),
            "{ehlo}"
        );
        assert_eq!(
            c.cmd("STARTTLS").await,
            "454 4.7.0 TLS not available due to temporary reason\r\n"
        );
        assert!(c.cmd("NOOP").await.starts_with("250"));
    }
}

#[tokio::test]
async fn unknown_thumbprint_implicit_listener_refuses_to_start() {
    let pki = Pki::new("unknown-implicit");
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let (backend, _rec) = recording_backend().await;
    let unknown = "EF".repeat(20);
    let rule = format!("{{thumbprint: \"{unknown}\"}}");
    let text = yaml(&[&mx], backend, "implicit", &rule);

    let config = smtp_sidecar::config::parse(&text).unwrap();
    let err = smtp_sidecar::runtime::start(&config, &Pki::store(&[&mx]))
        .await
        .expect_err("implicit without its certificate")
        .to_string();
    assert!(
        err.contains("tls: implicit") && err.contains(&unknown),
        "{err}"
    );

    // The real binary: exit 1 with the same message, no listening.
    let config_path = pki.dir.0.join("implicit.yaml");
    let state = pki.dir.0.join("state");
    std::fs::write(
        &config_path,
        format!(
            "state_dir: {}\n{}",
            path(&state),
            text.replace("127.0.0.1:0", "127.0.0.1:1")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_smtp-sidecar"))
        .args(["run", "-c"])
        .arg(&config_path)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the sidecar kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tls: implicit") && stderr.contains(&unknown),
        "{stderr}"
    );
    assert!(!stderr.contains(" listening"), "{stderr}");
}

#[tokio::test]
async fn explicit_expired_certificate_is_served_with_a_warning() {
    let pki = Pki::new("expired");
    let mx = pki.leaf("mx", Spec::ca(&["mx.test"]));
    let old = pki.leaf("old", Spec::ca(&["mx.test"]).years(2019, 2020));
    let (backend, _rec) = recording_backend().await;
    let sidecar = start_binary(&yaml(&[&mx, &old], backend, "starttls", "{name: old}"));
    let got = starttls_presented(sidecar.addr("inbound").unwrap(), Some("mx.test")).await;
    assert_eq!(sha256(&got), sha256(&old.der));
    let log = sidecar.log();
    let warning = log
        .lines()
        .find(|l| l.contains("has expired"))
        .unwrap_or_else(|| panic!("no expiry warning in\n{log}"));
    assert!(
        warning.contains("WARN")
            && warning.contains("certificate=old")
            && warning.contains("2020-01-01T00:00:00Z"),
        "{warning}"
    );
}

#[tokio::test]
async fn self_signed_default_is_kept_across_restarts_and_renewed_once_expired() {
    let pki = Pki::new("default");
    let state = pki.dir.0.join("state");
    let (backend, _rec) = recording_backend().await;
    let text = format!(
        "state_dir: {}\n{}",
        path(&state),
        yaml(&[], backend, "starttls", "")
    );

    let first = {
        let sidecar = start_binary(&text);
        starttls_presented(sidecar.addr("inbound").unwrap(), None).await
    };
    let second = {
        let sidecar = start_binary(&text);
        starttls_presented(sidecar.addr("inbound").unwrap(), Some("mx.test")).await
    };
    assert_eq!(
        sha256(&first),
        sha256(&second),
        "the same certificate after a restart"
    );
    let info = smtp_sidecar::tls::CertInfo::from_der(&first).unwrap();
    assert_eq!(info.sans, ["mx.test"]);

    // One with a few days left is still kept: it is replaced only once it has expired.
    let late = pki.leaf("late", Spec::ca(&["mx.test"]).self_signed().days_left(5));
    std::fs::copy(&late.cert, state.join("self-signed.crt")).unwrap();
    std::fs::copy(&late.key, state.join("self-signed.key")).unwrap();
    let kept = {
        let sidecar = start_binary(&text);
        starttls_presented(sidecar.addr("inbound").unwrap(), None).await
    };
    assert_eq!(sha256(&kept), sha256(&late.der), "kept until it expires");

    // An expired one in its place: replaced by a new, valid one at the next start.
    let expired = pki.leaf(
        "expired",
        Spec::ca(&["mx.test"]).years(2019, 2020).self_signed(),
    );
    std::fs::copy(&expired.cert, state.join("self-signed.crt")).unwrap();
    std::fs::copy(&expired.key, state.join("self-signed.key")).unwrap();
    let renewed = {
        let sidecar = start_binary(&text);
        starttls_presented(sidecar.addr("inbound").unwrap(), None).await
    };
    let renewed = smtp_sidecar::tls::CertInfo::from_der(&renewed).unwrap();
    assert_ne!(renewed.sha256, sha256(&expired.der));
    assert_ne!(renewed.sha256, info.sha256);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(renewed.is_valid_at(now));
    assert_eq!(renewed.sans, ["mx.test"]);
}

/// Log lines written while it is the thread's subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[tokio::test(start_paused = true)]
async fn expired_explicit_certificate_warned_again_each_day() {
    let pki = Pki::new("daily");
    let old = pki.leaf("old", Spec::ca(&["mx.test"]).years(2019, 2020));
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config =
        smtp_sidecar::config::parse(&yaml(&[&old], backend, "starttls", "{name: old}")).unwrap();
    let running = smtp_sidecar::runtime::start(&config, &Pki::store(&[&old]))
        .await
        .unwrap();
    let warning = "the certificate served has expired";
    assert_eq!(logs.count(warning), 1, "at start");
    tokio::time::sleep(Duration::from_secs(86_400 - 60)).await;
    assert_eq!(logs.count(warning), 1, "not before a day has passed");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(logs.count(warning), 2, "a day later");
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    assert_eq!(logs.count(warning), 3, "two days later");
    running.shutdown().await;
}
