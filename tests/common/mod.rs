//! Shared support for the end-to-end tests: a sidecar started on 127.0.0.1 with ephemeral
//! ports, a recording backend, and a small SMTP client that can do STARTTLS and implicit TLS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod aiosmtpd;
pub mod binary;
pub mod dns;
pub mod legacy_backend;
pub mod next_hop;
pub mod pki;
pub mod process;
pub mod scripted;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smtp_sidecar::runtime::Running;
use smtp_sidecar::sink::SinkEvent;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const T: Duration = Duration::from_secs(20);

/// Poll `f` until true (5 s at most).
pub async fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 5 s");
}

/// A recording backend: every byte each connection received, and the messages.
#[derive(Clone, Default)]
pub struct Recorder {
    pub transcripts: Arc<Mutex<Vec<Vec<u8>>>>,
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    /// Wait until `n` backend connections have closed; return their transcripts.
    pub async fn closed(&self, n: usize) -> Vec<Vec<u8>> {
        for _ in 0..400 {
            let t = self.transcripts.lock().unwrap().clone();
            if t.len() >= n {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "backend connections did not close: {:?}",
            self.transcripts.lock().unwrap().len()
        );
    }

    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

/// What a backend receives on a health check of the sidecar (hostname `mx.test`): such
/// connections are not the sessions a test counts, and the recorders leave them out.
pub fn is_health_check(received: &[u8]) -> bool {
    received == b"EHLO mx.test\r\nQUIT\r\n"
}

/// Start the built-in sink as a recording backend on an ephemeral port.
pub async fn recording_backend() -> (SocketAddr, Recorder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Recorder::default();
    let r = rec.clone();
    let handler = Arc::new(move |e: SinkEvent| match e {
        SinkEvent::Closed { transcript } if is_health_check(&transcript) => {}
        SinkEvent::Closed { transcript } => r.transcripts.lock().unwrap().push(transcript),
        SinkEvent::Message { data, .. } => r.messages.lock().unwrap().push(data),
    });
    tokio::spawn(smtp_sidecar::sink::serve(listener, true, handler));
    (addr, rec)
}

/// A listener section with the given backend and policy lines (YAML, indented 6 spaces).
pub fn config_yaml(backend: SocketAddr, tls: &str, policy: &str) -> String {
    format!(
        "hostname: mx.test\n\
         shutdown_grace: 2s\n\
         listeners:\n\
         \x20 - name: inbound\n\
         \x20   mode: terminate\n\
         \x20   listen: 127.0.0.1:0\n\
         \x20   tls: {tls}\n\
         \x20   backend:\n\
         \x20     servers: [\"{backend}\"]\n\
         \x20     connect_timeout: 2s\n\
         \x20   policy:\n\
         \x20     received_header: false\n\
         {policy}"
    )
}

/// Start a sidecar from YAML with a self-signed certificate for mx.test made in memory.
pub async fn start(yaml: &str) -> Running {
    let config = smtp_sidecar::config::parse(yaml).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let cert = smtp_sidecar::tls::self_signed("mx.test").unwrap();
    let store = smtp_sidecar::tls::CertStore { certs: vec![cert] };
    smtp_sidecar::runtime::start(&config, &store).await.unwrap()
}

/// Start a sidecar with no certificate at all.
pub async fn start_without_certificate(yaml: &str) -> Running {
    let config = smtp_sidecar::config::parse(yaml).unwrap_or_else(|e| panic!("{:?}", e.problems));
    let store = smtp_sidecar::tls::CertStore { certs: vec![] };
    smtp_sidecar::runtime::start(&config, &store).await.unwrap()
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A test SMTP client.
pub struct Client {
    io: BufReader<Box<dyn Io>>,
    /// Our end of the connection.
    local: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Client {
            local: tcp.local_addr().unwrap(),
            io: BufReader::new(Box::new(tcp)),
        }
    }

    /// A client over a connection already set up (a TLS handshake of the test's own) from
    /// `local`.
    #[allow(dead_code)]
    pub fn from_io<S: Io + 'static>(io: S, local: SocketAddr) -> Client {
        Client {
            local,
            io: BufReader::new(Box::new(io)),
        }
    }

    /// Connect and complete a TLS handshake first (port 465 style).
    pub async fn connect_implicit(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let local = tcp.local_addr().unwrap();
        let tls = tls_connect(tcp).await.unwrap();
        Client {
            io: BufReader::new(Box::new(tls)),
            local,
        }
    }

    /// The port the server sees this client connect from.
    #[allow(dead_code)]
    pub fn local_port(&self) -> u16 {
        self.local.port()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
        self.io.get_mut().flush().await.unwrap();
    }

    /// One whole reply (all lines of a multi-line reply), as received.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(T, self.io.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// After `220 2.0.0 Ready to start TLS`: the handshake.
    pub async fn upgrade(self) -> Client {
        self.try_upgrade(client_tls_config()).await.unwrap()
    }

    /// The handshake with a given client configuration.
    pub async fn try_upgrade(self, config: Arc<rustls::ClientConfig>) -> std::io::Result<Client> {
        let buffered = self.io.buffer().len();
        assert_eq!(buffered, 0, "plaintext left after STARTTLS");
        let tls = tls_connect_with(config, self.io.into_inner()).await?;
        Ok(Client {
            io: BufReader::new(Box::new(tls)),
            local: self.local,
        })
    }

    /// Shut down our sending side (a TCP half-close); replies can still be read.
    pub async fn shutdown_write(&mut self) {
        self.io.get_mut().shutdown().await.unwrap();
    }

    /// Everything the server sends until it closes the connection.
    pub async fn read_to_close(&mut self) -> String {
        let mut all = String::new();
        tokio::time::timeout(T, self.io.read_to_string(&mut all))
            .await
            .expect("server closed in time")
            .unwrap();
        all
    }

    /// True when the server closed the connection (EOF) within the test timeout.
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(T, self.io.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// Greeting, EHLO, STARTTLS, handshake, EHLO again.
    pub async fn starttls_session(addr: SocketAddr) -> Client {
        Client::starttls_session_as(addr, "client.test").await
    }

    /// As [`Client::starttls_session`], with `name` in the EHLO after STARTTLS.
    pub async fn starttls_session_as(addr: SocketAddr, name: &str) -> Client {
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
        assert!(c.cmd("EHLO client.test").await.contains("250 STARTTLS\r\n"));
        assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
        let mut c = c.upgrade().await;
        let ehlo = format!("EHLO {name}");
        assert!(c.cmd(&ehlo).await.starts_with("250-mx.test\r\n"));
        c
    }
}

/// A client TLS config that accepts any certificate (the tests' self-signed ones).
pub fn client_tls_config() -> Arc<rustls::ClientConfig> {
    client_tls_config_with(rustls::DEFAULT_VERSIONS)
}

/// The same, limited to the given protocol versions.
pub fn client_tls_config_with(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny::new(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

pub async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    tls_connect_with(client_tls_config(), s).await
}

pub async fn tls_connect_with<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<rustls::ClientConfig>,
    s: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = rustls::pki_types::ServerName::try_from("mx.test").unwrap();
    tokio::time::timeout(T, connector.connect(name, s))
        .await
        .expect("handshake in time")
}

/// A plaintext client at `addr` taken to DATA's `354` (greeting, EHLO, MAIL, RCPT, DATA,
/// each reply checked by its code), as its two halves: a body written from a task of its
/// own while the replies are read.
#[allow(dead_code)]
pub async fn plain_client_in_data(
    addr: SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut read = BufReader::new(read);
    for (line, code) in [
        ("", "220 "),
        ("EHLO client.test\r\n", "250 "),
        ("MAIL FROM:<a@x.test>\r\n", "250 "),
        ("RCPT TO:<b@y.test>\r\n", "250 "),
        ("DATA\r\n", "354 "),
    ] {
        write.write_all(line.as_bytes()).await.unwrap();
        let mut reply = String::new();
        while reply.len() < 4 || reply.as_bytes()[3] == b'-' {
            reply.clear();
            let n = tokio::time::timeout(T, read.read_line(&mut reply)).await;
            assert!(n.unwrap().unwrap() > 0, "closed before {code}");
        }
        assert!(reply.starts_with(code), "{line:?}: {reply:?}");
    }
    (read, write)
}

/// A client configuration that takes any server certificate ([`AcceptAny`]), offering only
/// `schemes` when given, and where the leaf it was shown will be.
#[allow(dead_code)]
pub fn showing_client_config(
    schemes: Option<Vec<rustls::SignatureScheme>>,
) -> (rustls::ClientConfig, Arc<Mutex<Option<Vec<u8>>>>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut verifier = AcceptAny::new(provider.clone());
    verifier.schemes = schemes;
    let seen = verifier.seen.clone();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    (config, seen)
}

/// Accepts any server certificate (the handshake signatures are still checked) and keeps
/// the leaf it was shown, for tests of which certificate a listener serves.
#[derive(Debug)]
pub struct AcceptAny {
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub seen: Arc<Mutex<Option<Vec<u8>>>>,
    /// The signature schemes offered (signature_algorithms): all the provider verifies,
    /// unless narrowed here (a legacy client that knows RSA only).
    pub schemes: Option<Vec<rustls::SignatureScheme>>,
}

impl AcceptAny {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> AcceptAny {
        AcceptAny {
            provider,
            seen: Arc::default(),
            schemes: None,
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone().unwrap_or_else(|| {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        })
    }
}

/// A listening socket that answers no new connection: its accept queue is full, so further
/// SYNs are dropped and a connect to it waits for its whole timeout.
pub async fn black_hole(addr: SocketAddr) -> (SocketAddr, Vec<TcpStream>, TcpListener) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => return (addr, held, listener),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// Two clients of the same address at `addr`, whose listener allows one per address: the
/// first greeted, the second refused with `421 4.7.0`. Both are returned as they are.
pub async fn one_place_per_address(addr: SocketAddr) -> (Client, Client) {
    let mut first = Client::connect(addr).await;
    assert_eq!(first.reply().await, "220 mx.test ESMTP\r\n");
    let mut second = Client::connect(addr).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    (first, second)
}
