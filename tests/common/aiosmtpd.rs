//! Python's aiosmtpd as a legacy backend (tests/aiosmtpd_backend.py, run by Debian's
//! `/usr/bin/python3` with the `python3-aiosmtpd` package that scripts/test.sh installs): on a
//! port of 127.0.0.1 it chose itself, as `legacy.test`, with STARTTLS or implicit TLS if asked,
//! storing each message's DATA exactly as it arrived (after dot-unstuffing) with its envelope.
//! A missing package is a failure naming it, never a skip. Stopped when dropped; its stderr
//! is printed when a test fails.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::process::{exactly, Guard, TempDir};

/// Debian's interpreter, the one its python3-aiosmtpd package installs for (a `python3`
/// earlier on PATH, such as pyenv's, would not have it).
const PYTHON: &str = "/usr/bin/python3";

/// How aiosmtpd offers TLS.
#[derive(Debug, Clone, Copy)]
pub enum Tls<'a> {
    None,
    /// STARTTLS with this PEM chain and key.
    Starttls(&'a Path, &'a Path),
    /// TLS from the first byte with this PEM chain and key.
    Implicit(&'a Path, &'a Path),
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The DATA bytes, as received, dot-unstuffed.
    pub data: Vec<u8>,
    /// `{"helo", "mail_from", "rcpt_tos", "tls"}`: what the session said and whether it was
    /// encrypted.
    pub envelope: serde_json::Value,
}

pub struct Aiosmtpd {
    pub addr: SocketAddr,
    child: Guard,
    dir: TempDir,
}

impl Aiosmtpd {
    pub fn start(tls: Tls<'_>) -> Aiosmtpd {
        let import = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .output();
        assert!(
            import.is_ok_and(|o| o.status.success()),
            "{PYTHON} cannot import aiosmtpd: apt-get install python3-aiosmtpd (scripts/test.sh \
             installs it)"
        );
        let dir = TempDir::new("aiosmtpd");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aiosmtpd_backend.py");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script)
            .arg(dir.open_subdir("store"))
            .arg("legacy.test");
        match tls {
            Tls::None => {}
            Tls::Starttls(cert, key) => _ = cmd.arg("starttls").arg(cert).arg(key),
            Tls::Implicit(cert, key) => _ = cmd.arg("implicit").arg(cert).arg(key),
        }
        let log = std::fs::File::create(dir.0.join("stderr")).unwrap();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = Guard(cmd.spawn().unwrap());
        // Its first line, `listening <port>`, says that it accepts.
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        let port = line.strip_prefix("listening ").map(|p| p.trim().parse());
        let Some(Ok(port)) = port else {
            let stderr = std::fs::read_to_string(dir.0.join("stderr")).unwrap_or_default();
            panic!("aiosmtpd did not start ({line:?}):\n{stderr}");
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Aiosmtpd { addr, child, dir }
    }

    /// The messages stored so far, in the order they came.
    pub fn stored(&self) -> Vec<Stored> {
        let store = self.dir.0.join("store");
        (1..)
            .map_while(|n| {
                let data = std::fs::read(store.join(format!("{n}.eml"))).ok()?;
                let envelope = std::fs::read(store.join(format!("{n}.json"))).unwrap();
                let envelope = serde_json::from_slice(&envelope).unwrap();
                Some(Stored { data, envelope })
            })
            .collect()
    }

    /// The messages stored once there are `n` (10 s at most), and no more.
    pub fn stored_when(&self, n: usize) -> Vec<Stored> {
        exactly(n, "messages stored", Duration::from_secs(10), || {
            self.stored()
        })
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if std::thread::panicking() {
            let stderr = std::fs::read_to_string(self.dir.0.join("stderr")).unwrap_or_default();
            eprintln!("--- aiosmtpd stderr ---\n{stderr}");
        }
    }
}
