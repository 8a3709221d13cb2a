//! The command line of SPEC §2: `run`, `check` and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::runtime;

#[derive(Debug, Parser)]
#[command(
    name = "smtp-sidecar",
    version,
    about = "TLS sidecar for legacy mail servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run with the configuration file.
    Run {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration and certificates, print what each listener will use.
    Check {
        #[arg(short, long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// A self-contained trial: listener on 127.0.0.1:2525, a printing sink on 2526,
    /// metrics on 9725.
    Demo,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Demo => crate::cli::demo::run(),
    }
}

mod demo;
mod nofile;

fn load_or_report(path: &Path) -> Option<Config> {
    reported(
        path,
        "configuration is invalid",
        config::load(path).map_err(|e| e.problems),
    )
}

/// The value, or `None` once every problem is on stderr under a line saying what they make
/// invalid.
fn reported<T>(path: &Path, what: &str, result: Result<T, Vec<String>>) -> Option<T> {
    result
        .map_err(|problems| {
            eprintln!("{}: {what}:", path.display());
            for p in problems {
                eprintln!("  {p}");
            }
        })
        .ok()
}

/// Before anything opens a socket: the soft open-file limit up to the hard one, and a warning
/// if the listeners' `max_connections` still cannot fit in it.
fn raise_open_file_limit(config: &Config) {
    let limit = nofile::raise_to_hard_limit();
    if let Some(warning) = nofile::shortfall(config, limit) {
        tracing::warn!("{warning}");
    }
}

/// One core to run on (`taskset`, a cgroup quota of one CPU): tokio's current-thread runtime,
/// the process's one thread running every session, with no work-stealing queues or wake-ups
/// handed between threads (3–4% less CPU per session on workload A). More: a worker per core.
/// It looks at its sockets every 8 tasks (tokio's default is 61), so that a session woken by
/// its socket waits behind a few tasks, not dozens. A handshake flood's work is not among
/// them: it runs on threads of its own, below the sessions' priority (`io::admission`).
fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
        return tokio::runtime::Builder::new_current_thread()
            .event_interval(8)
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run(path: &Path) -> ExitCode {
    // SPEC §2: the file is also re-read when it changes on disk. Looked at before it is read,
    // so that a change made while the sidecar starts is seen.
    let mut file = runtime::FileWatch::new(path);
    let Some(config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    // Dropped at the return: what is queued for standard error is written first.
    let _log = crate::log::init(&config.log);
    raise_open_file_limit(&config);
    let saved = runtime::load_certificates(&config).and_then(|(store, unsaved)| {
        match unsaved.map(crate::tls::Unsaved::save).transpose() {
            Ok(_) => Ok(store),
            Err(e) => Err(vec![format!(
                "state_dir {}: {e}",
                config.state_dir.display()
            )]),
        }
    });
    let store = match saved {
        Ok(s) => s,
        Err(problems) => {
            for p in problems {
                tracing::error!("{p}");
            }
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = crate::io::admission::handle() {
        tracing::error!(error = %e, "cannot start the admission threads: a handshake flood will be served at the sessions' priority");
    }
    let code = rt.block_on(async {
        let mut signals = StopSignals::install();
        let mut running = match runtime::start(&config, &store).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        running.set_config_path(path.to_owned());
        let mut poll = tokio::time::interval(FILE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut log_drops = crate::log::Drops::default();
        loop {
            tokio::select! {
                signal = signals.next() => match signal {
                    Signal::Stop => break,
                    Signal::Reload => {
                        tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
                        file.reset();
                        running.reload().await;
                    }
                },
                _ = poll.tick() => {
                    log_drops.report();
                    if file.poll() {
                        tracing::info!(config = %path.display(), "the configuration file changed: reloading");
                        running.reload().await;
                    }
                }
            }
        }
        tracing::info!("stopping: no new connections; draining sessions");
        running.shutdown().await;
        ExitCode::SUCCESS
    });
    // Not waiting for blocking work left behind: a reload's read abandoned at its deadline
    // (a file on a stalled mount), a backend's name still being resolved.
    rt.shutdown_timeout(EXIT_WAIT);
    code
}

/// How long the exit waits for blocking work still running.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the configuration file is looked at; a change is acted on once it has been
/// stable for one poll, so within two.
const FILE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a signal asks for.
enum Signal {
    /// SIGTERM or SIGINT: drain and exit.
    Stop,
    /// SIGHUP: reload the configuration and certificates.
    Reload,
}

/// The handlers of SIGTERM, SIGINT and SIGHUP, installed before any listener accepts: a
/// signal that came in between would otherwise end the process with its default action, not
/// with a drain and exit 0 (or, for SIGHUP, a reload).
struct StopSignals(Option<[tokio::signal::unix::Signal; 3]>);

impl StopSignals {
    /// Inside the tokio runtime.
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => StopSignals(Some([term, int, hup])),
            _ => {
                tracing::error!("cannot install signal handlers");
                StopSignals(None)
            }
        }
    }

    /// SIGTERM or SIGINT; SIGHUP is logged and ignored (the demo has no file to reload).
    async fn wait(mut self) {
        while let Signal::Reload = self.next().await {
            tracing::warn!("SIGHUP: the demo has no configuration file to reload");
        }
    }

    /// The next signal (cancel-safe).
    async fn next(&mut self) -> Signal {
        let Some([term, int, hup]) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        }
    }
}

/// Whether `run` can keep a certificate it generates in `dir`: the directory, or the nearest
/// of its parents that exists (`run` makes the rest), is a directory this process may write
/// in. `check` writes nothing, so it asks rather than tries.
fn state_dir_usable(dir: &Path) -> Result<(), String> {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    let mut at = dir;
    loop {
        let here = if at.as_os_str().is_empty() {
            Path::new(".")
        } else {
            at
        };
        match std::fs::metadata(here) {
            Ok(m) if m.is_dir() => {
                let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
                return rustix::fs::access(here, access)
                    .map_err(|e| format!("{} is not writable ({e})", here.display()));
            }
            Ok(_) => return Err(format!("{} is not a directory", here.display())),
            // Missing, or under a file: the parent says which.
            Err(e) if matches!(e.kind(), NotFound | NotADirectory) => match at.parent() {
                Some(parent) => at = parent,
                None => return Err(format!("{} does not exist", here.display())),
            },
            Err(e) => return Err(format!("{}: {e}", here.display())),
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    // With no certificates, `run` serves the self-signed certificate kept in state_dir, or
    // one it generates then; `check` writes nothing, so it builds with one generated in
    // memory in its place and announces the one to come.
    let mut to_be_generated = false;
    let store = if config.certificates.is_empty() {
        let kept = crate::tls::kept_self_signed(&config.state_dir, &config.hostname);
        to_be_generated = kept.is_none();
        println!(
            "certificates: none configured; the self-signed certificate for {} kept in {}{}",
            config.hostname,
            config.state_dir.display(),
            if to_be_generated {
                " (generated by the first run: ECDSA P-256, valid 5 years)"
            } else {
                ""
            }
        );
        kept.map_or_else(|| crate::tls::self_signed(&config.hostname), Ok)
            .map(|cert| crate::tls::CertStore { certs: vec![cert] })
            .map_err(|e| vec![e.to_string()])
    } else {
        crate::tls::CertStore::load(&config.certificates)
    };
    let store = reported(path, "certificates are invalid", store);
    let trust = reported(
        path,
        "trust is invalid",
        crate::tls::Trust::load(&config.trust),
    );
    if let Some(trust) = &trust {
        println!("{}", trust.describe());
    }
    let mut ok = store.is_some() && trust.is_some();
    if to_be_generated {
        let usable = state_dir_usable(&config.state_dir).map_err(|why| {
            vec![format!(
                "state_dir {}: {why}: the first run could not keep the certificate it generates",
                config.state_dir.display()
            )]
        });
        ok &= reported(path, "state_dir is unusable", usable).is_some();
    }
    // The build `run` and a reload do, over the same files: whatever stops it stops `run`.
    if let (Some(store), Some(trust)) = (&store, trust) {
        let metrics = crate::metrics::Metrics::new();
        let built = runtime::build(&config, store.clone(), trust, &metrics, None);
        ok &= reported(path, "the configuration cannot run", built).is_some();
    }
    for l in &config.listeners {
        let term = match &l.mode {
            config::ListenerMode::Terminate(term) => term,
            config::ListenerMode::Originate(o) => {
                ok &= print_originate(store.as_ref(), to_be_generated, l, o, &config);
                continue;
            }
        };
        let tls = match term.tls {
            config::ListenerTls::Starttls => "starttls",
            config::ListenerTls::Implicit => "implicit",
        };
        println!(
            "listener {} (terminate, tls: {tls}, listen: {}):",
            l.name, l.listen
        );
        print_proxy_protocol(l, &term.policy.timeouts);
        match &store {
            Some(_) if to_be_generated && self_signed_default(&term.certificate) => {
                println!("  certificate self-signed: generated by the first run")
            }
            Some(store) => ok &= print_certificate(store, l, term, &config.hostname),
            None => println!("  certificate: (certificates invalid)"),
        }
        let b = &term.backend;
        println!(
            "  backend: {} (tls: {}, connect_timeout {}, health checks every {}{})",
            b.servers.join(", "),
            b.tls_str(),
            duration(b.connect_timeout),
            duration(b.health_check_interval),
            if b.xclient { ", xclient" } else { "" }
        );
        if let Some(warning) = b.tls_warning() {
            println!("  warning: {warning}");
        }
        println!("{}", policy_lines(&term.policy));
    }
    // A warning, not a failure: the sidecar runs, only past the limit its accepts fail and
    // its backend connects end in 421 4.4.2.
    if let Some(warning) = nofile::shortfall(&config, nofile::hard_limit()) {
        eprintln!("warning: {warning}");
    }
    if ok {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// True when a rule picks the generated default of a configuration without certificates.
fn self_signed_default(selection: &config::CertificateSelection) -> bool {
    match selection {
        config::CertificateSelection::Automatic => true,
        config::CertificateSelection::Name(name) => name == crate::tls::SELF_SIGNED_NAME,
        _ => false,
    }
}

/// Which certificate the listener's `certificate` rule yields; false if it yields none.
fn print_certificate(
    store: &crate::tls::CertStore,
    l: &config::Listener,
    term: &config::TerminateListener,
    hostname: &str,
) -> bool {
    use crate::tls::CertPlan;
    match CertPlan::new(store, &term.certificate, hostname) {
        CertPlan::Explicit(cert) => {
            let by = match term.certificate {
                config::CertificateSelection::Name(_) => "certificate.name",
                config::CertificateSelection::Thumbprint(_) => "certificate.thumbprint",
                _ => "certificate.name and certificate.thumbprint",
            };
            println!(
                "  certificate {}: by {by}, served to every client\n{}",
                cert.name,
                indent(&cert.describe())
            );
            true
        }
        CertPlan::Automatic(candidates) => {
            if let Some((cert, matched)) = candidates.default_at(crate::clock::unix_now()) {
                let rule = if matched {
                    format!("matches hostname {hostname}")
                } else {
                    format!("none matches hostname {hostname}; the best of all")
                };
                println!(
                    "  certificate {}: without SNI or with an SNI no certificate has ({rule})\n{}",
                    cert.name,
                    indent(&cert.describe())
                );
            }
            println!(
                "  SNI picks among {} certificate(s) by name (valid before expired, CA-issued \
                 before self-signed, newest first)",
                candidates.len()
            );
            true
        }
        CertPlan::NoMatch(why) => {
            let consequence = match term.tls {
                config::ListenerTls::Implicit => "tls: implicit cannot start",
                config::ListenerTls::Starttls => "run would serve it without STARTTLS",
            };
            eprintln!("listener {}: {why} ({consequence})", l.name);
            println!("  certificate: {why}; {consequence}");
            false
        }
        CertPlan::NoCertificate => {
            println!("  certificate: none; STARTTLS not offered");
            term.tls == config::ListenerTls::Starttls
        }
    }
}

/// An originate listener as `check` shows it: the next hop, the client certificate it would
/// present, the level of each listed domain and the rest of its policy; false if its
/// `client_certificate` rule matches nothing.
fn print_originate(
    store: Option<&crate::tls::CertStore>,
    to_be_generated: bool,
    l: &config::Listener,
    o: &config::OriginateListener,
    config: &Config,
) -> bool {
    let mut ok = true;
    println!("listener {} (originate, listen: {}):", l.name, l.listen);
    print_proxy_protocol(l, &o.policy.timeouts);
    match o.next_hop {
        config::NextHopConfig::Mx { .. } => {
            let r = &config.resolver;
            let servers = if r.nameservers.is_empty() {
                "the system's (/etc/resolv.conf)".to_owned()
            } else {
                let list: Vec<String> = r.nameservers.iter().map(|a| a.to_string()).collect();
                list.join(", ")
            };
            // A test rig's switch, which an operator must see if it is on.
            let loopback = if r.allow_loopback {
                "; loopback next hops allowed (resolver.allow_loopback: a test rig)"
            } else {
                ""
            };
            println!(
                "  next_hop: mx (name servers: {servers}; timeout {}{loopback})",
                duration(r.timeout)
            );
        }
        config::NextHopConfig::Relay { .. } => println!("  next_hop: {}", o.next_hop),
    }
    let hostname = &config.hostname;
    // Whether the certificate presented for mutual TLS may authenticate a client.
    let mut client_auth = true;
    match store {
        Some(_) if to_be_generated && self_signed_default(&o.client_certificate) => {
            println!("  client certificate self-signed: generated by the first run")
        }
        Some(store) => {
            (ok, client_auth) = print_client_certificate(store, l, &o.client_certificate, hostname);
        }
        None => println!("  client certificate: (certificates invalid)"),
    }
    let p = &o.policy;
    let mutual = p.default == config::Level::DomainSecure
        || p.domains
            .iter()
            .any(|(_, level)| *level == config::Level::DomainSecure);
    // Nor is this: the handshake sends it, and the partner refuses it.
    if mutual && !client_auth {
        eprintln!(
            "warning: listener {}: the client certificate does not allow TLS client \
             authentication (its extendedKeyUsage lacks clientAuth); domain-secure partners \
             will refuse it",
            l.name
        );
    }
    // Not an error (the configuration works), but no partner will verify that certificate.
    if mutual && config.certificates.is_empty() && self_signed_default(&o.client_certificate) {
        eprintln!(
            "warning: listener {}: domain-secure would present the self-signed certificate; \
             partners will not verify it (add one from a CA they trust to `certificates`)",
            l.name
        );
    }
    let on_failure = match p.on_failure {
        smtp_core::outbound::OnFailure::Defer => "defer",
        smtp_core::outbound::OnFailure::Bounce => "bounce",
    };
    println!(
        "  policy: default: {}, on_failure: {on_failure}, enforce: {}",
        p.default.as_str(),
        p.enforce
    );
    for (domain, level) in &p.domains {
        println!("          {domain}: {}", level.as_str());
    }
    let t = &p.timeouts;
    println!(
        "          tls_min_version: {}, bare_newlines: {}, long_lines: {}, received_header: {}\n\
         \x20         max_message_size: {}, max_recipients: {}, max_connections: {}, \
         max_connections_per_ip: {}\n\
         \x20         timeouts: greeting {}, command {}, data_block {}, tls_handshake {}",
        tls_version(p.tls_min_version),
        bare_newlines(p.bare_newlines),
        long_lines(p.long_lines),
        p.received_header,
        size(p.max_message_size),
        p.max_recipients,
        p.max_connections,
        p.max_connections_per_ip,
        duration(t.greeting),
        duration(t.command),
        duration(t.data_block),
        duration(t.tls_handshake),
    );
    ok
}

/// The certificate an originate listener would present where mutual TLS is wanted: the one
/// its rule names, or with no rule the first of the store valid now; false if the rule
/// matches nothing. And whether that certificate (if any) may authenticate a TLS client.
fn print_client_certificate(
    store: &crate::tls::CertStore,
    l: &config::Listener,
    selection: &config::CertificateSelection,
    hostname: &str,
) -> (bool, bool) {
    use crate::tls::CertPlan;
    let plan = CertPlan::new(store, selection, hostname);
    match &plan {
        CertPlan::Explicit(cert) => {
            let by = match selection {
                config::CertificateSelection::Name(_) => "client_certificate.name",
                config::CertificateSelection::Thumbprint(_) => "client_certificate.thumbprint",
                _ => "client_certificate.name and client_certificate.thumbprint",
            };
            println!(
                "  client certificate {}: by {by}\n{}",
                cert.name,
                indent(&cert.describe())
            );
        }
        // Chosen as the build chooses it: the one a client without SNI would be served.
        CertPlan::Automatic(_) => match plan.served(None) {
            Some(cert) => println!(
                "  client certificate {}: the store's default for hostname {hostname}\n{}",
                cert.name,
                indent(&cert.describe())
            ),
            None => println!("  client certificate: none"),
        },
        CertPlan::NoMatch(why) => {
            // The store names the rule `certificate.*`; this one is `client_certificate.*`.
            eprintln!("listener {}: client_{why}", l.name);
            println!("  client certificate: client_{why}");
            return (false, true);
        }
        CertPlan::NoCertificate => println!("  client certificate: none"),
    }
    let client_auth = plan.served(None).is_none_or(|cert| cert.info.client_auth);
    (true, client_auth)
}

fn tls_version(v: config::TlsVersion) -> &'static str {
    match v {
        config::TlsVersion::V1_2 => "1.2",
        config::TlsVersion::V1_3 => "1.3",
    }
}

fn bare_newlines(b: config::BareNewlines) -> &'static str {
    match b {
        config::BareNewlines::Reject => "reject",
        config::BareNewlines::Normalize => "normalize",
    }
}

fn long_lines(l: config::LongLines) -> &'static str {
    match l {
        config::LongLines::Fold => "fold",
        config::LongLines::Reject => "reject",
    }
}

/// Whether connections begin with a PROXY header (nothing when they do not).
fn print_proxy_protocol(l: &config::Listener, t: &config::Timeouts) {
    if l.proxy_protocol {
        println!(
            "  proxy_protocol: a PROXY v1/v2 header first, within {} (proxy_header)",
            duration(t.proxy_header)
        );
    }
}

/// The policy as the YAML spells it.
fn policy_lines(p: &config::Policy) -> String {
    let version = tls_version(p.tls_min_version);
    let bare = bare_newlines(p.bare_newlines);
    let long = long_lines(p.long_lines);
    let client_certificates = match p.client_certificates {
        config::ClientCertificates::None => "none",
        config::ClientCertificates::Request => "request",
        config::ClientCertificates::Require => "require",
    };
    let on_failure = match p.on_failure {
        config::OnFailure::Defer => "defer",
        config::OnFailure::Reject => "reject",
    };
    let t = &p.timeouts;
    format!(
        "  policy: require_tls: {}, auth_requires_tls: {}, tls_min_version: {version}, \
         bare_newlines: {bare}, long_lines: {long}, received_header: {}\n\
         \x20         client_certificates: {client_certificates}, domain_secure: [{}], \
         on_failure: {on_failure}, enforce: {}\n\
         \x20         max_message_size: {}, max_recipients: {}, max_connections: {}, \
         max_connections_per_ip: {}\n\
         \x20         timeouts: greeting {}, command {}, data_block {}, tls_handshake {}",
        p.require_tls,
        p.auth_requires_tls,
        p.received_header,
        p.domain_secure.join(", "),
        p.enforce,
        size(p.max_message_size),
        p.max_recipients,
        p.max_connections,
        p.max_connections_per_ip,
        duration(t.greeting),
        duration(t.command),
        duration(t.data_block),
        duration(t.tls_handshake),
    )
}

fn duration(d: std::time::Duration) -> String {
    let (s, ms) = (d.as_secs(), d.subsec_millis());
    match (s, ms) {
        (s, 0) if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes.is_multiple_of(*unit))
        .map_or_else(
            || format!("{bytes}"),
            |(unit, name)| format!("{}{name}", bytes / unit),
        )
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
