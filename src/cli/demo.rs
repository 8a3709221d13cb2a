//! `smtp-sidecar demo`: the whole path on one machine with no configuration file. A STARTTLS
//! listener on 127.0.0.1:2525 with a self-signed certificate made at start, the printing sink
//! on 127.0.0.1:2526 standing in for the legacy server, metrics on 127.0.0.1:9725.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{
    Backend, BackendTls, BareNewlines, CertificateSelection, ClientCertificates, Config, Listener,
    ListenerMode, ListenerTls, LogConfig, LogFormat, LongLines, OnFailure, Policy, ResolverConfig,
    TerminateListener, Timeouts, TlsVersion, TrustConfig,
};
use crate::sink::SinkEvent;
use crate::tls::CertStore;

const LISTEN: &str = "127.0.0.1:2525";
const SINK: &str = "127.0.0.1:2526";
const METRICS: &str = "127.0.0.1:9725";
/// The most of a message body the demo prints.
const PRINT_MAX: usize = 16 * 1024;

fn addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn demo_config() -> Config {
    Config {
        hostname: "localhost".into(),
        state_dir: PathBuf::from("."),
        shutdown_grace: Duration::from_secs(5),
        metrics_listen: Some(addr(METRICS)),
        log: LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            protocol_log: false,
        },
        certificates: Vec::new(),
        resolver: ResolverConfig::default(),
        // The demo verifies no peer: it asks for no client certificates.
        trust: TrustConfig {
            system_roots: false,
            ca_files: Vec::new(),
            crl_files: Vec::new(),
        },
        listeners: vec![Listener {
            name: "demo".into(),
            listen: addr(LISTEN),
            proxy_protocol: false,
            mode: ListenerMode::Terminate(TerminateListener {
                tls: ListenerTls::Starttls,
                certificate: CertificateSelection::Automatic,
                backend: Backend {
                    servers: vec![SINK.into()],
                    tls: BackendTls::None,
                    tls_verify: true,
                    xclient: false,
                    connect_timeout: Duration::from_secs(5),
                    health_check_interval: Duration::from_secs(2),
                },
                policy: Policy {
                    require_tls: false,
                    max_handshakes: 128,
                    auth_requires_tls: true,
                    client_certificates: ClientCertificates::None,
                    domain_secure: Vec::new(),
                    on_failure: OnFailure::Defer,
                    enforce: true,
                    tls_min_version: TlsVersion::V1_2,
                    bare_newlines: BareNewlines::Reject,
                    long_lines: LongLines::Fold,
                    received_header: true,
                    max_message_size: 35 * 1024 * 1024,
                    max_recipients: 100,
                    max_connections: 1000,
                    max_connections_per_ip: 20,
                    max_errors: 20,
                    timeouts: Timeouts {
                        greeting: Duration::from_secs(300),
                        command: Duration::from_secs(300),
                        data_block: Duration::from_secs(180),
                        tls_handshake: Duration::from_secs(30),
                        backend_reply: Duration::from_secs(300),
                        proxy_header: Duration::from_secs(10),
                    },
                },
            }),
        }],
    }
}

fn print_event(event: SinkEvent) {
    if let SinkEvent::Message {
        helo,
        from,
        rcpts,
        data,
    } = event
    {
        // The message as the backend stores it: without the terminating "." line.
        let data = data.strip_suffix(b".\r\n").unwrap_or(&data);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "--- sink received a message: EHLO {}, MAIL FROM:{}, RCPT TO:{}, {} bytes ---",
            terminal_safe(&helo),
            terminal_safe(&from),
            terminal_safe(&rcpts.join(" ")),
            data.len()
        );
        let shown = &data[..data.len().min(PRINT_MAX)];
        let text = String::from_utf8_lossy(shown).replace("\r\n", "\n");
        let _ = out.write_all(terminal_safe(&text).as_bytes());
        if data.len() > PRINT_MAX {
            let _ = writeln!(out, "[... {} more bytes]", data.len() - PRINT_MAX);
        }
        let _ = writeln!(out, "--- end of message ---");
    }
}

/// Peer text as the terminal shows it: line breaks and tabs kept, any other control character
/// (an escape sequence would be the terminal's to act on: a title, a colour, a cursor move),
/// line separator or bidirectional mark as `?`.
fn terminal_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if smtp_core::session::unsafe_in_log(c) => '?',
            c => c,
        })
        .collect()
}

pub fn run() -> ExitCode {
    let config = demo_config();
    let _log = crate::log::init(&config.log);
    super::raise_open_file_limit(&config);
    let cert = match crate::tls::self_signed(&config.hostname) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot generate the demo certificate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = CertStore { certs: vec![cert] };
    let rt = match super::tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let signals = super::StopSignals::install();
        let sink = match tokio::net::TcpListener::bind(SINK).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("demo sink: cannot listen on {SINK}: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(crate::sink::serve(sink, false, Arc::new(print_event)));
        let running = match crate::runtime::start(&config, &store).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "smtp-sidecar demo\n\
             \x20 SMTP with STARTTLS on {LISTEN} (self-signed certificate for localhost)\n\
             \x20 relaying to the demo sink on {SINK}, which prints every message it receives\n\
             \x20 metrics on http://{METRICS}/metrics\n\
             Send a test message, for example:\n\
             \x20 swaks --server {LISTEN} --tls --from me@example.com --to you@example.com\n\
             \x20 python3 -c \"import smtplib; s = smtplib.SMTP('127.0.0.1', 2525); s.starttls(); \
             s.sendmail('me@example.com', ['you@example.com'], 'Subject: hello\\r\\n\\r\\nhi\\r\\n'); s.quit()\"\n\
             \x20 openssl s_client -starttls smtp -connect {LISTEN} -crlf\n\
             Ctrl-C stops."
        );
        signals.wait().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    /// What a client sends reaches the demo's terminal without its escape sequences.
    #[test]
    fn peer_text_reaches_the_terminal_without_escapes() {
        assert_eq!(
            super::terminal_safe("Subject: \u{1b}]0;owned\u{7}x\r\n\tfolded\n\u{202E}abc"),
            "Subject: ?]0;owned?x?\n\tfolded\n?abc"
        );
    }
}
