//! A minimal SMTP server that accepts every message: the stand-in legacy server of
//! `smtp-sidecar demo` (which prints what it receives) and of the tests (which record every
//! byte it receives). Not for production: it stores nothing.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line the sink reads (commands and body lines).
const MAX_LINE: u64 = 64 * 1024;

/// What the sink reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkEvent {
    /// A message was accepted: envelope and the body as received (dot-stuffed, with the
    /// final `.` CRLF).
    Message {
        helo: String,
        from: String,
        rcpts: Vec<String>,
        data: Vec<u8>,
    },
    /// A connection ended; `transcript` is every byte received on it (when recording).
    Closed { transcript: Vec<u8> },
}

pub type SinkHandler = Arc<dyn Fn(SinkEvent) + Send + Sync>;

/// Accept connections forever. `record`: keep a transcript of each connection.
pub async fn serve(listener: TcpListener, record: bool, handler: SinkHandler) {
    let mut id = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        id += 1;
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let mut transcript = Vec::new();
            let _ = session(stream, id, record.then_some(&mut transcript), &handler).await;
            if record {
                handler(SinkEvent::Closed { transcript });
            }
        });
    }
}

async fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    transcript: &mut Option<&mut Vec<u8>>,
) -> std::io::Result<bool> {
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', line)
        .await?;
    if let Some(t) = transcript.as_mut() {
        t.extend_from_slice(line);
    }
    Ok(n > 0)
}

async fn session(
    stream: TcpStream,
    id: u64,
    mut transcript: Option<&mut Vec<u8>>,
    handler: &SinkHandler,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"220 sink.local ESMTP demo sink\r\n")
        .await?;
    let (mut helo, mut from, mut rcpts) = (String::new(), String::new(), Vec::new());
    let mut line = Vec::new();
    let mut queued = 0u32;
    while read_line(&mut reader, &mut line, &mut transcript).await? {
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => {
                helo = text[4..].trim().to_string();
                b"250-sink.local\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1073741824\r\n250 ENHANCEDSTATUSCODES\r\n"
            }
            "HELO" => {
                helo = text[4..].trim().to_string();
                b"250 sink.local\r\n"
            }
            "MAIL" => {
                from = text.get(10..).unwrap_or("").to_string();
                rcpts.clear();
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                rcpts.push(text.get(8..).unwrap_or("").to_string());
                b"250 2.1.5 Ok\r\n"
            }
            "DATA" => {
                reader
                    .get_mut()
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                loop {
                    if !read_line(&mut reader, &mut line, &mut transcript).await? {
                        return Ok(());
                    }
                    data.extend_from_slice(&line);
                    if line == b".\r\n" {
                        break;
                    }
                }
                queued += 1;
                handler(SinkEvent::Message {
                    helo: helo.clone(),
                    from: std::mem::take(&mut from),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                });
                let reply = format!("250 2.0.0 Ok: queued as {id}.{queued}\r\n");
                reader.get_mut().write_all(reply.as_bytes()).await?;
                continue;
            }
            "RSET" | "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                reader.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"502 5.5.2 Error: command not recognized\r\n",
        };
        reader.get_mut().write_all(reply).await?;
    }
    Ok(())
}
