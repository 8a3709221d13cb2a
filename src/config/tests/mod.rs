//! Whole-file tests of [`parse`] and [`load`]: the shipped example, SPEC §3's sample, defaults,
//! and that problems from everywhere in a file are reported together with their paths.

use super::raw::{
    Keys, RawBackend, RawCertificate, RawCertificateRef, RawConfig, RawListener, RawLog,
    RawMetrics, RawPolicy, RawResolver, RawTimeouts, RawTrust,
};
use super::*;

mod originate;
mod resolver;
mod trust_policy;
mod values;

const EXAMPLE: &str = include_str!("../../../config.yaml.example");
const SPEC_SAMPLE: &str = include_str!("../testdata/spec_sample.yaml");

pub(super) fn ok(yaml: &str) -> Config {
    match parse(yaml) {
        Ok(config) => config,
        Err(err) => panic!("{err}\n--- for ---\n{yaml}"),
    }
}

pub(super) fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(config) => panic!("expected problems, got {config:?}\n--- for ---\n{yaml}"),
        Err(err) => err.problems,
    }
}

/// The terminate part of a listener that must be one.
pub(super) fn term(listener: &Listener) -> &TerminateListener {
    match &listener.mode {
        ListenerMode::Terminate(t) => t,
        ListenerMode::Originate(o) => panic!("{} is originate: {o:?}", listener.name),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// One terminate listener; `extra` is spliced in at the listener's indentation.
pub(super) fn one_listener(extra: &str) -> String {
    format!("listeners:\n  - listen: 127.0.0.1:2525\n    backend: {{servers: [\"192.0.2.1:25\"]}}\n{extra}")
}

#[test]
fn example_parses_to_documented_values() {
    let config = ok(EXAMPLE);
    assert_eq!(config.hostname, "mx1.example.com");
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/smtp-sidecar"));
    assert_eq!(config.shutdown_grace, secs(30));
    assert_eq!(
        config.metrics_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9725")
    );
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert!(config.certificates.is_empty());
    let [listener] = config.listeners.as_slice() else {
        panic!("{:?}", config.listeners)
    };
    assert_eq!(listener.name, "inbound");
    assert_eq!(listener.listen.to_string(), "0.0.0.0:25");
    assert_eq!(term(listener).tls, ListenerTls::Starttls);
    assert_eq!(term(listener).certificate, CertificateSelection::Automatic);
    assert_eq!(term(listener).backend.servers, ["127.0.0.1:2525"]);
    assert_eq!(term(listener).backend.connect_timeout, secs(5));
    assert_default_policy(&term(listener).policy);
}

fn assert_default_policy(policy: &Policy) {
    assert!(!policy.require_tls);
    assert!(policy.auth_requires_tls);
    assert_eq!(policy.tls_min_version, TlsVersion::V1_2);
    assert_eq!(policy.bare_newlines, BareNewlines::Reject);
    assert_eq!(policy.long_lines, LongLines::Fold);
    assert!(policy.received_header);
    assert_eq!(policy.max_message_size, 35 * 1024 * 1024);
    assert_eq!(policy.max_recipients, 100);
    assert_eq!(policy.max_connections, 1000);
    assert_eq!(policy.max_connections_per_ip, 20);
    assert_eq!(policy.max_errors, 20);
    assert_eq!(policy.max_handshakes, 128);
    let timeouts = Timeouts {
        greeting: secs(300),
        command: secs(300),
        data_block: secs(180),
        tls_handshake: secs(30),
        backend_reply: secs(300),
        proxy_header: secs(10),
    };
    assert_eq!(policy.timeouts, timeouts);
}

/// The reference documents every key of SPEC §3 (originate's in the commented-out listener).
#[test]
fn example_mentions_every_key() {
    fn check<T: Keys>(example: &str) {
        for key in T::KEYS {
            assert!(
                example.contains(&format!("{key}:")),
                "config.yaml.example lacks {key}"
            );
        }
    }
    check::<RawConfig>(EXAMPLE);
    check::<RawMetrics>(EXAMPLE);
    check::<RawLog>(EXAMPLE);
    check::<RawCertificate>(EXAMPLE);
    check::<RawResolver>(EXAMPLE);
    check::<RawTrust>(EXAMPLE);
    check::<RawListener>(EXAMPLE);
    check::<RawCertificateRef>(EXAMPLE);
    check::<RawBackend>(EXAMPLE);
    check::<RawPolicy>(EXAMPLE);
    check::<RawTimeouts>(EXAMPLE);
}

#[test]
fn spec_sample_parses_with_both_modes() {
    let config = ok(SPEC_SAMPLE);
    assert_eq!(config.resolver, ResolverConfig::default());
    let [inbound, outbound] = config.listeners.as_slice() else {
        panic!("{:?}", config.listeners)
    };
    assert_eq!(inbound.mode_name(), "terminate");
    assert_eq!(outbound.mode_name(), "originate");
    assert_eq!(outbound.name, "outbound");
    assert_eq!(outbound.listen.to_string(), "127.0.0.1:10025");
    // The rest of the originate listener: tests/originate.rs.
    assert_eq!(
        outbound.originate(),
        Some(&originate::spec_sample_outbound())
    );
}

#[test]
fn spec_sample_terminate_listener() {
    let terminate_only = SPEC_SAMPLE
        .split("\n  - name: outbound")
        .next()
        .unwrap_or_default();
    let both = ok(terminate_only);
    assert_eq!(
        term(&both.listeners[0]).certificate,
        CertificateSelection::NameAndThumbprint {
            name: "internet".into(),
            thumbprint: "E8DA062786FD097DD8D79FF10C583CC23AD64F6C".into()
        }
    );
    let config = ok(&terminate_only.replace("      thumbprint:", "      # thumbprint:"));
    assert_eq!(config.certificates.len(), 1);
    assert_eq!(config.certificates[0].name, "internet");
    assert_eq!(
        config.certificates[0].cert,
        PathBuf::from("/etc/smtp-sidecar/mail.pem")
    );
    assert_eq!(
        term(&config.listeners[0]).certificate,
        CertificateSelection::Name("internet".into())
    );
    assert_default_policy(&term(&config.listeners[0]).policy);
    let by_thumbprint = ok(&terminate_only.replace("      name: internet", "      # name:"));
    assert_eq!(
        term(&by_thumbprint.listeners[0]).certificate,
        CertificateSelection::Thumbprint("E8DA062786FD097DD8D79FF10C583CC23AD64F6C".into())
    );
}

#[test]
fn minimal_config_gets_spec_defaults() {
    let config = ok(&one_listener(""));
    assert_eq!(config.hostname, validate::machine_hostname());
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/smtp-sidecar"));
    assert_eq!(config.shutdown_grace, secs(30));
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert!(config.certificates.is_empty());
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "127.0.0.1:2525");
    assert_eq!(term(listener).tls, ListenerTls::Starttls);
    assert_eq!(term(listener).certificate, CertificateSelection::Automatic);
    assert_eq!(term(listener).backend.connect_timeout, secs(5));
    assert_default_policy(&term(listener).policy);
    // An empty section and a timeouts map with one key keep the other defaults.
    let config = ok(&one_listener(
        "    policy: {timeouts: {command: 1m}}\nmetrics: {}\nlog:\n",
    ));
    assert_eq!(config.metrics_listen, None);
    assert_eq!(term(&config.listeners[0]).policy.timeouts.command, secs(60));
    assert_eq!(
        term(&config.listeners[0]).policy.timeouts.greeting,
        secs(300)
    );
}

#[test]
fn unknown_keys_everywhere_reported_together() {
    let yaml = one_listener("    bakend: {}\n    policy: {timeouts: {comand: 5m}}\nhostnmae: x\n")
        .replace("servers:", "tls_verfy: true, servers:");
    assert_eq!(
        problems(&yaml),
        [
            "hostnmae: unknown key (expected one of: hostname, state_dir, shutdown_grace, \
             metrics, log, certificates, resolver, trust, listeners)",
            "listeners[0].bakend: unknown key (expected one of: name, mode, listen, tls, \
             certificate, proxy_protocol, backend, policy, next_hop, client_certificate)",
            "listeners[0].backend.tls_verfy: unknown key (expected one of: servers, tls, \
             tls_verify, xclient, connect_timeout, health_check_interval)",
            "listeners[0].policy.timeouts.comand: unknown key (expected one of: greeting, \
             command, data_block, tls_handshake, backend_reply, proxy_header)",
        ]
    );
}

#[test]
fn bad_values_and_references_reported_together() {
    let yaml = "\
certificates: [{name: internet, cert: a.pem, key: a.key}]
listeners:
  - name: in
    listen: 127.0.0.1:25
    certificate: {name: intranet}
    backend: {servers: [\"10.0.0.1:25\"]}
    policy: {max_message_size: 35XB, timeouts: {command: 5x}}
  - name: in
    listen: 127.0.0.1:26
    backend: {servers: [\"10.0.0.1:25\"]}
";
    assert_eq!(
        problems(yaml),
        [
            "listeners[0].policy.max_message_size: invalid size \"35XB\" \
             (use bytes or e.g. 35MiB, 10MB, 512KiB)",
            "listeners[0].policy.timeouts.command: invalid duration \"5x\" (use e.g. 30s, 5m, 1h)",
            "listeners[1].name: duplicate listener name \"in\" (also listeners[0])",
        ]
    );
}

#[test]
fn yaml_syntax_error_is_one_problem_with_position() {
    let got = problems("hostname: [\nlisteners: x\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("YAML: ") && got[0].contains("line "),
        "{got:?}"
    );
}

#[test]
fn display_lists_every_problem_on_its_own_line() {
    let err = match parse("foo: 1\nbar: 2\nlisteners: []\n") {
        Ok(config) => panic!("{config:?}"),
        Err(err) => err,
    };
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "invalid configuration (3 problems):");
    assert!(
        lines[1].trim_start().starts_with("foo: unknown key"),
        "{text}"
    );
    assert!(
        lines[3].trim_start().starts_with("listeners: at least one"),
        "{text}"
    );
}

#[test]
fn load_reads_the_file_and_names_it_on_error() {
    let dir = std::env::temp_dir().join(format!("smtp-sidecar-config-test-{}", std::process::id()));
    let missing = dir.join("missing.yaml");
    let err = match load(&missing) {
        Ok(config) => panic!("{config:?}"),
        Err(err) => err,
    };
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].starts_with(&format!("{}: cannot read", missing.display())));

    let file = dir.join("config.yaml");
    let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, EXAMPLE));
    assert!(written.is_ok(), "{written:?}");
    let loaded = load(&file);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(loaded.is_ok(), "{loaded:?}");
}
