//! A test next-hop MTA for the originate-mode tests (and a TLS backend for terminate's), on
//! 127.0.0.1 with an ephemeral port: greets `220 next.test ESMTP`, answers EHLO with a
//! configurable extension list, and can offer STARTTLS (or implicit TLS) with a real rustls
//! handshake (a valid, untrusted, wrong-name, expired or revoked certificate, see [`Cert`]),
//! fail the handshake on purpose, ask for or require a client certificate, refuse recipients,
//! answer the end of data as told, or drop the connection in the middle of a message. RFC
//! 3207: after the handshake MAIL is refused until EHLO again. An offered XCLIENT
//! (`extensions(&["XCLIENT ADDR ..."])`) is answered with a new greeting.
//!
//! Each connection is recorded as a [`Session`] (bytes received before and inside TLS, the TLS
//! version, SNI, client chain, accepted messages, how it ended), delivered once it has closed:
//!
//! ```ignore
//! let pki = NextHopPki::new();
//! let hop = NextHop::builder()
//!     .starttls(&pki, Cert::Valid)
//!     .client_auth(ClientAuth::Require(pki.root_file.clone()))
//!     .rcpt_reply("bad@next.test", "550 5.1.1 No such user")
//!     .start()
//!     .await;
//! // ... the sidecar delivers to hop.addr, trusting pki.trust_yaml() ...
//! let session = hop.next_session().await;
//! assert_eq!(session.tls.unwrap().version, rustls::ProtocolVersion::TLSv1_3);
//! ```
//! Every read has a timeout ([`READ_TIMEOUT`]), so a stuck client ends as [`End::TimedOut`].

mod certs;
mod conn;

// Not every test binary uses all of them.
#[allow(unused_imports)]
pub use certs::{load_chain, load_key, Cert, NextHopPki, WRONG_NAME};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use conn::{serve, Config, Tls};

/// How long the next hop waits for any read (a line, the handshake) before giving up.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a `stall_after` next hop holds its connection without reading.
pub const STALL: Duration = Duration::from_secs(60);

/// How `drop_after` and `stall_after` end a message body.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cut {
    Drop,
    Stall,
}

/// Client certificates: none asked for, asked for, or required; checked against the CA(s) in
/// the PEM file (a certificate that does not verify fails the handshake in both modes).
#[derive(Debug, Clone)]
pub enum ClientAuth {
    None,
    Request(PathBuf),
    Require(PathBuf),
}

/// One connection, as the next hop saw it.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// Every byte received before the TLS handshake (including `STARTTLS\r\n` and anything
    /// pipelined after it, which is then discarded); every byte when there was no TLS.
    pub plaintext: Vec<u8>,
    /// Every byte received inside TLS.
    pub encrypted: Vec<u8>,
    /// Set when a handshake completed.
    pub tls: Option<TlsInfo>,
    /// Messages answered with a 2xx at the end of data.
    pub messages: Vec<Message>,
    pub end: End,
}

#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: ProtocolVersion,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// The client certificate chain (leaf first); empty when none was presented.
    pub client_chain: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub mail_from: String,
    /// The recipients answered with a 2xx.
    pub rcpt_to: Vec<String>,
    /// The body as received (still dot-stuffed), without the final `.\r\n`.
    pub data: Vec<u8>,
}

/// How a connection ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum End {
    /// The client sent QUIT (answered with 221).
    Quit,
    /// The client closed the connection without QUIT.
    #[default]
    ClientClosed,
    /// The next hop closed on purpose: a 421 greeting, or `fail_handshake`.
    ServerClosed,
    /// Closed by `drop_after` in the middle of a message, or by `stall_after` after its
    /// [`STALL`].
    Dropped,
    TimedOut,
    HandshakeFailed(String),
    Io(String),
}

/// The entry point: `NextHop::builder()...start().await`.
#[derive(Debug)]
pub struct NextHop;

impl NextHop {
    pub fn builder<'a>() -> NextHopBuilder<'a> {
        NextHopBuilder {
            host: "mx.next.test".into(),
            greeting: "220 next.test ESMTP".into(),
            extensions: [
                "PIPELINING",
                "SIZE 10240000",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
            ]
            .map(String::from)
            .to_vec(),
            starttls: StartTls::Off,
            implicit: false,
            client_auth: ClientAuth::None,
            versions: rustls::DEFAULT_VERSIONS.to_vec(),
            rcpt_replies: HashMap::new(),
            eod_reply: "250 2.0.0 Ok: queued".into(),
            cut: None,
        }
    }
}

enum StartTls<'a> {
    Off,
    Serve(&'a NextHopPki, Cert),
    Fail,
}

/// Without `starttls` or `fail_handshake`, STARTTLS is not offered (and refused with 502).
pub struct NextHopBuilder<'a> {
    host: String,
    greeting: String,
    extensions: Vec<String>,
    starttls: StartTls<'a>,
    implicit: bool,
    client_auth: ClientAuth,
    versions: Vec<&'static SupportedProtocolVersion>,
    rcpt_replies: HashMap<String, String>,
    eod_reply: String,
    cut: Option<(usize, Cut)>,
}

impl<'a> NextHopBuilder<'a> {
    /// The name its certificates are for (default `mx.next.test`).
    pub fn host(mut self, name: &str) -> Self {
        self.host = name.into();
        self
    }

    /// Another greeting, e.g. `421 4.3.2 Busy` (sent, then closed) or `450 4.3.2 Busy` (then
    /// everything but QUIT gets 503).
    pub fn greeting(mut self, reply: &str) -> Self {
        self.greeting = reply.into();
        self
    }

    /// The EHLO extensions (default PIPELINING, SIZE 10240000, 8BITMIME, ENHANCEDSTATUSCODES);
    /// STARTTLS is added before TLS when it is configured.
    pub fn extensions(mut self, extensions: &[&str]) -> Self {
        self.extensions = extensions.iter().map(|e| (*e).to_owned()).collect();
        self
    }

    /// Offer STARTTLS and present `cert` (issued for `host`) in the handshake.
    pub fn starttls(mut self, pki: &'a NextHopPki, cert: Cert) -> Self {
        self.starttls = StartTls::Serve(pki, cert);
        self
    }

    /// TLS from the first byte (SMTPS) with `cert`, instead of STARTTLS.
    pub fn implicit_tls(mut self, pki: &'a NextHopPki, cert: Cert) -> Self {
        self.starttls = StartTls::Serve(pki, cert);
        self.implicit = true;
        self
    }

    /// Offer STARTTLS, answer 220, then send bytes that are not TLS and close.
    pub fn fail_handshake(mut self) -> Self {
        self.starttls = StartTls::Fail;
        self
    }

    pub fn client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = auth;
        self
    }

    /// The TLS versions it accepts (default: rustls's, 1.3 and 1.2).
    pub fn tls_versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    /// The reply to `RCPT TO:<address>` (case-insensitive; default `250 2.1.5 Ok`).
    pub fn rcpt_reply(mut self, address: &str, reply: &str) -> Self {
        self.rcpt_replies
            .insert(address.to_ascii_lowercase(), reply.into());
        self
    }

    /// The reply to the end of data (default `250 2.0.0 Ok: queued`).
    pub fn eod_reply(mut self, reply: &str) -> Self {
        self.eod_reply = reply.into();
        self
    }

    /// Close the connection, unanswered, once `bytes` of a message body have arrived.
    pub fn drop_after(mut self, bytes: usize) -> Self {
        self.cut = Some((bytes, Cut::Drop));
        self
    }

    /// Stop reading once `bytes` of a message body have arrived, and hold the connection open
    /// (for [`STALL`]), as a server that hangs: the sender's writes fill the buffers and wait.
    pub fn stall_after(mut self, bytes: usize) -> Self {
        self.cut = Some((bytes, Cut::Stall));
        self
    }

    pub async fn start(self) -> RunningNextHop {
        let tls = match self.starttls {
            StartTls::Off => Tls::Off,
            StartTls::Fail => Tls::Fail,
            StartTls::Serve(pki, cert) => {
                let (chain, key) = pki.server_cert(cert, &self.host);
                let config = server_config(chain, key, &self.client_auth, &self.versions);
                Tls::Serve(TlsAcceptor::from(config))
            }
        };
        let config = Arc::new(Config {
            greeting: self.greeting,
            extensions: self.extensions,
            tls,
            implicit: self.implicit,
            rcpt_replies: self.rcpt_replies,
            eod_reply: self.eod_reply,
            cut: self.cut,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (config, tx) = (Arc::clone(&config), tx.clone());
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let session = serve(tcp, &config).await;
                    // A relay's health check is not a delivery attempt.
                    if super::is_health_check(&session.plaintext) {
                        counter.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let _ = tx.send(session);
                });
            }
        });
        RunningNextHop {
            addr,
            host: self.host,
            sessions: Mutex::new(rx),
            accepted,
            task,
        }
    }
}

/// A started next hop; it stops accepting when dropped.
#[derive(Debug)]
pub struct RunningNextHop {
    pub addr: SocketAddr,
    /// The name its certificate is for.
    pub host: String,
    sessions: Mutex<mpsc::UnboundedReceiver<Session>>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RunningNextHop {
    /// The next connection to close, in closing order; panics after `common::T`.
    pub async fn next_session(&self) -> Session {
        self.try_next_session(super::T)
            .await
            .expect("a next-hop connection closed in time")
    }

    /// The next connection to close within `within`, if any.
    pub async fn try_next_session(&self, within: Duration) -> Option<Session> {
        let mut sessions = self.sessions.lock().await;
        timeout(within, sessions.recv()).await.ok().flatten()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RunningNextHop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    auth: &ClientAuth,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Request(ca) | ClientAuth::Require(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in load_chain(ca) {
                roots.add(cert).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth {
                ClientAuth::Request(_) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().unwrap())
        }
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap())
}
