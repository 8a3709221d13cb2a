//! A scripted legacy backend for the end-to-end tests: answers like a small strict MTA
//! (optionally one that refuses a second EHLO, demands AUTH, or breaks the protocol on
//! purpose) and records every byte each connection received, and how many it sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The SASL PLAIN initial response the backend accepts (`\0a\0b`).
pub const PLAIN_IR: &str = "AGEAYg==";

#[derive(Clone)]
pub struct Script {
    /// The whole reply to EHLO.
    pub ehlo: &'static str,
    /// Answer a second HELO/EHLO with `503 5.5.1 Invalid command: Already identified`, as
    /// OpenSMTPD does.
    pub refuse_second_helo: bool,
    /// `530 5.7.0 Authentication required` to MAIL before a successful AUTH PLAIN.
    pub require_auth: bool,
    /// The reply to DATA; the body is read only after a 354.
    pub data_reply: &'static str,
    /// The reply to the end of data (may carry extra, unsolicited lines).
    pub eod_reply: &'static str,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            ehlo: "250-legacy.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10000000\r\n",
            refuse_second_helo: false,
            require_auth: false,
            data_reply: "354 go ahead\r\n",
            eod_reply: "250 2.0.0 queued\r\n",
        }
    }
}

/// What each backend connection received, in connection order, and the octets it sent (its
/// 221 to QUIT excepted).
#[derive(Clone, Default)]
pub struct Transcripts(Arc<Mutex<Vec<Vec<u8>>>>, Arc<Mutex<Vec<usize>>>);

impl Transcripts {
    /// The octets each connection (health checks left out) sent before its reply to QUIT:
    /// what a sidecar that closes right after its QUIT reads of it.
    pub fn sent(&self) -> Vec<usize> {
        let (t, sent) = (self.0.lock().unwrap(), self.1.lock().unwrap());
        t.iter()
            .zip(sent.iter())
            .filter(|(b, _)| !super::is_health_check(b))
            .map(|(_, n)| *n)
            .collect()
    }

    pub fn get(&self) -> Vec<String> {
        let t = self.0.lock().unwrap();
        t.iter()
            .filter(|b| !super::is_health_check(b))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    pub fn count(&self) -> usize {
        self.get().len()
    }

    /// Wait until connection `n` (from 0) has received something ending with `suffix`.
    pub async fn wait_for(&self, n: usize, suffix: &str) -> Vec<String> {
        for _ in 0..400 {
            let t = self.get();
            if t.get(n).is_some_and(|s| s.ends_with(suffix)) {
                return t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!(
            "backend connection {n} never got {suffix:?}: {:?}",
            self.get()
        );
    }
}

pub async fn scripted_backend(script: Script) -> (SocketAddr, Transcripts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let transcripts = Transcripts::default();
    let t = transcripts.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let n = {
                t.1.lock().unwrap().push(0);
                let mut all = t.0.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            tokio::spawn(serve(tcp, script.clone(), t.clone(), n));
        }
    });
    (addr, transcripts)
}

async fn serve(tcp: tokio::net::TcpStream, script: Script, t: Transcripts, n: usize) {
    let mut io = BufReader::new(tcp);
    let (mut greeted, mut authed, mut in_data, mut in_auth) = (false, false, false, false);
    let greeting = "220 legacy.test ESMTP\r\n";
    t.1.lock().unwrap()[n] += greeting.len();
    if io.get_mut().write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let mut line = Vec::new();
        match io.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        t.0.lock().unwrap()[n].extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let upper = text.to_ascii_uppercase();
        let reply: &str = if in_data {
            if text != "." {
                continue;
            }
            in_data = false;
            script.eod_reply
        } else if in_auth {
            in_auth = false;
            authed = text == PLAIN_IR;
            if authed {
                "235 2.7.0 Authentication successful\r\n"
            } else {
                "535 5.7.8 Bad credentials\r\n"
            }
        } else if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            if greeted && script.refuse_second_helo {
                "503 5.5.1 Invalid command: Already identified\r\n"
            } else {
                greeted = true;
                if upper.starts_with("EHLO") {
                    script.ehlo
                } else {
                    "250 legacy.test\r\n"
                }
            }
        } else if upper == "AUTH PLAIN" {
            in_auth = true;
            "334 \r\n"
        } else if upper.starts_with("AUTH PLAIN ") {
            authed = text["AUTH PLAIN ".len()..] == *PLAIN_IR;
            if authed {
                "235 2.7.0 Authentication successful\r\n"
            } else {
                "535 5.7.8 Bad credentials\r\n"
            }
        } else if upper.starts_with("MAIL") && script.require_auth && !authed {
            "530 5.7.0 Authentication required\r\n"
        } else if upper.starts_with("MAIL") {
            "250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT") {
            "250 2.1.5 Ok\r\n"
        } else if upper == "DATA" {
            in_data = script.data_reply.starts_with("354");
            script.data_reply
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            let _ = io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "500 5.5.1 Unknown command\r\n"
        };
        t.1.lock().unwrap()[n] += reply.len();
        if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
