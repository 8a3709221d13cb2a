//! One next-hop connection: the greeting, the SMTP dialogue before and inside TLS, the
//! handshake, and the recording of it all into a [`Session`].

use std::collections::HashMap;
use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::{Cut, End, Message, Session, TlsInfo, READ_TIMEOUT, STALL};

pub(super) enum Tls {
    Off,
    Serve(TlsAcceptor),
    Fail,
}

pub(super) struct Config {
    pub(super) greeting: String,
    pub(super) extensions: Vec<String>,
    pub(super) tls: Tls,
    /// TLS from the first byte (SMTPS) instead of STARTTLS.
    pub(super) implicit: bool,
    pub(super) rcpt_replies: HashMap<String, String>,
    pub(super) eod_reply: String,
    /// `drop_after` or `stall_after`.
    pub(super) cut: Option<(usize, Cut)>,
}

pub(super) async fn serve(tcp: TcpStream, config: &Config) -> Session {
    let mut session = Session::default();
    session.end = match converse(tcp, config, &mut session).await {
        Ok(end) => end,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => End::TimedOut,
        Err(e) => End::Io(e.to_string()),
    };
    session
}

/// Where the dialogue is: after a refusing greeting, before TLS, inside TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Refused,
    Plain,
    Tls,
}

enum Step {
    End(End),
    StartTls,
}

async fn converse(tcp: TcpStream, config: &Config, s: &mut Session) -> io::Result<End> {
    tcp.set_nodelay(true)?;
    if config.implicit {
        let Tls::Serve(acceptor) = &config.tls else {
            unreachable!("implicit TLS is built with a certificate")
        };
        let tls = match accept(acceptor, tcp, s).await {
            Ok(tls) => tls,
            Err(end) => return Ok(end),
        };
        let mut io = BufReader::new(tls);
        write(&mut io, &config.greeting).await?;
        return inside_tls(&mut io, config, s).await;
    }
    let mut io = BufReader::new(tcp);
    write(&mut io, &config.greeting).await?;
    let phase = match &config.greeting {
        g if g.starts_with("421") => return Ok(End::ServerClosed),
        g if g.starts_with("220") => Phase::Plain,
        _ => Phase::Refused,
    };
    let record = &mut s.plaintext;
    if let Step::End(end) = dialogue(&mut io, config, phase, record, &mut s.messages).await? {
        return Ok(end);
    }
    // Pipelined after STARTTLS: recorded, then discarded (RFC 3207).
    s.plaintext.extend_from_slice(io.buffer());
    let mut tcp = io.into_inner();
    let Tls::Serve(acceptor) = &config.tls else {
        // fail_handshake: wait for the ClientHello, answer it with garbage, close.
        let mut hello = [0u8; 512];
        timeout(READ_TIMEOUT, tcp.read(&mut hello)).await??;
        tcp.write_all(b"this is not a TLS handshake\r\n").await?;
        return Ok(End::ServerClosed);
    };
    let tls = match accept(acceptor, tcp, s).await {
        Ok(tls) => tls,
        Err(end) => return Ok(end),
    };
    inside_tls(&mut BufReader::new(tls), config, s).await
}

/// The server side of the handshake, recorded into the session.
async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    s: &mut Session,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, End> {
    let tls = match timeout(READ_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => return Err(End::TimedOut),
        Ok(Err(e)) => return Err(End::HandshakeFailed(e.to_string())),
        Ok(Ok(tls)) => tls,
    };
    let conn = tls.get_ref().1;
    s.tls = Some(TlsInfo {
        version: conn.protocol_version().unwrap(),
        sni: conn.server_name().map(str::to_owned),
        client_chain: conn.peer_certificates().unwrap_or_default().to_vec(),
    });
    Ok(tls)
}

/// The dialogue inside TLS, recorded as `encrypted`.
async fn inside_tls<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    config: &Config,
    s: &mut Session,
) -> io::Result<End> {
    match dialogue(io, config, Phase::Tls, &mut s.encrypted, &mut s.messages).await? {
        Step::End(end) => Ok(end),
        Step::StartTls => unreachable!("STARTTLS is refused inside TLS"),
    }
}

/// Commands until QUIT, EOF, a dropped message or STARTTLS (answered 220); a new dialogue
/// starts unidentified, so MAIL needs EHLO first.
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    config: &Config,
    phase: Phase,
    record: &mut Vec<u8>,
    messages: &mut Vec<Message>,
) -> io::Result<Step> {
    let (mut greeted, mut txn) = (false, None::<Message>);
    loop {
        let Some(line) = read_line(io, record).await? else {
            return Ok(Step::End(End::ClientClosed));
        };
        let line = String::from_utf8_lossy(&line);
        let verb = line.split([' ', '\r', '\n']).next().unwrap_or_default();
        let reply = match (phase, verb.to_ascii_uppercase().as_str()) {
            (_, "QUIT") => {
                write(io, "221 2.0.0 Bye").await?;
                return Ok(Step::End(End::Quit));
            }
            (Phase::Refused, _) => "503 5.5.1 Bad sequence of commands".to_owned(),
            (_, "EHLO") => {
                (greeted, txn) = (true, None);
                ehlo_reply(config, phase)
            }
            (_, "HELO") => {
                (greeted, txn) = (true, None);
                "250 next.test".to_owned()
            }
            (Phase::Plain, "STARTTLS") if !matches!(config.tls, Tls::Off) => {
                write(io, "220 2.0.0 Ready to start TLS").await?;
                return Ok(Step::StartTls);
            }
            (_, "STARTTLS") => "502 5.5.1 STARTTLS not available".to_owned(),
            // Postfix's XCLIENT, when offered: a new greeting, and EHLO again.
            (_, "XCLIENT") if offers(config, "XCLIENT") => {
                (greeted, txn) = (false, None);
                config.greeting.clone()
            }
            (_, "MAIL") if !greeted => "503 5.5.1 Send EHLO first".to_owned(),
            (_, "MAIL") if txn.is_some() => "503 5.5.1 Nested MAIL command".to_owned(),
            (_, "MAIL") => {
                let mail_from = address(&line);
                txn = Some(Message {
                    mail_from,
                    ..Message::default()
                });
                "250 2.1.0 Ok".to_owned()
            }
            (_, "RCPT") => match &mut txn {
                None => "503 5.5.1 Need MAIL command".to_owned(),
                Some(m) => {
                    let rcpt = address(&line);
                    let reply = config.rcpt_replies.get(&rcpt.to_ascii_lowercase());
                    let reply = reply.map_or("250 2.1.5 Ok", String::as_str).to_owned();
                    if reply.starts_with('2') {
                        m.rcpt_to.push(rcpt);
                    }
                    reply
                }
            },
            (_, "DATA") => match txn.take() {
                Some(m) if !m.rcpt_to.is_empty() => {
                    write(io, "354 End data with <CR><LF>.<CR><LF>").await?;
                    let data = match body(io, config, record).await? {
                        Ok(data) => data,
                        Err(end) => return Ok(Step::End(end)),
                    };
                    if config.eod_reply.starts_with('2') {
                        messages.push(Message { data, ..m });
                    }
                    config.eod_reply.clone()
                }
                Some(m) => {
                    txn = Some(m);
                    "554 5.5.1 No valid recipients".to_owned()
                }
                None => "503 5.5.1 Need MAIL command".to_owned(),
            },
            (_, "RSET") => {
                txn = None;
                "250 2.0.0 Ok".to_owned()
            }
            (_, "NOOP") => "250 2.0.0 Ok".to_owned(),
            _ => "500 5.5.2 Command not recognized".to_owned(),
        };
        write(io, &reply).await?;
    }
}

/// The body up to `.\r\n` (exclusive), or how the connection ended before it.
async fn body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    config: &Config,
    record: &mut Vec<u8>,
) -> io::Result<Result<Vec<u8>, End>> {
    let mut data = Vec::new();
    loop {
        let Some(line) = read_line(io, record).await? else {
            return Ok(Err(End::ClientClosed));
        };
        if line == b".\r\n" {
            return Ok(Ok(data));
        }
        data.extend_from_slice(&line);
        match config.cut {
            Some((n, cut)) if data.len() >= n => {
                if let Cut::Stall = cut {
                    tokio::time::sleep(STALL).await;
                }
                return Ok(Err(End::Dropped));
            }
            _ => {}
        }
    }
}

fn ehlo_reply(config: &Config, phase: Phase) -> String {
    let offer_tls = phase == Phase::Plain && !matches!(config.tls, Tls::Off);
    let mut lines = vec!["next.test"];
    lines.extend(config.extensions.iter().map(String::as_str));
    lines.extend(offer_tls.then_some("STARTTLS"));
    let last = lines.len() - 1;
    let lines = lines.iter().enumerate().map(|(i, l)| {
        let sep = if i == last { ' ' } else { '-' };
        format!("250{sep}{l}\r\n")
    });
    lines.collect()
}

/// Whether the EHLO reply offers `keyword`.
fn offers(config: &Config, keyword: &str) -> bool {
    config
        .extensions
        .iter()
        .any(|e| e.split(' ').next() == Some(keyword))
}

/// The address between `<` and `>` in a MAIL or RCPT command.
fn address(line: &str) -> String {
    let inside = line
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'));
    inside.map(|(a, _)| a.to_owned()).unwrap_or_default()
}

/// One line (with its line end) appended to `record`, `None` at EOF.
async fn read_line<S: AsyncRead + Unpin>(
    io: &mut BufReader<S>,
    record: &mut Vec<u8>,
) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    timeout(READ_TIMEOUT, io.read_until(b'\n', &mut line)).await??; // Elapsed: TimedOut
    record.extend_from_slice(&line);
    Ok((!line.is_empty()).then_some(line))
}

/// A reply, with CRLF added when it has no line end.
async fn write<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    reply: &str,
) -> io::Result<()> {
    let crlf = if reply.ends_with('\n') { "" } else { "\r\n" };
    let io = io.get_mut();
    io.write_all(format!("{reply}{crlf}").as_bytes()).await?;
    io.flush().await
}
