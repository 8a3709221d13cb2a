//! The real `smtp-sidecar` binary for end-to-end tests: `run -c` on a configuration written
//! by [`super::config_yaml`], its listener on a free port of 127.0.0.1, its state directory
//! (where it keeps the self-signed certificate it generates) in a scratch directory.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{free_port, Guard, TempDir};

pub struct Binary {
    addr: SocketAddr,
    child: Guard,
    dir: TempDir,
}

/// Start the binary on `yaml` (whose listener is `127.0.0.1:0`) and wait until it accepts.
pub fn start_binary(yaml: &str) -> Binary {
    start_binary_on(yaml, None)
}

/// [`start_binary`], the process allowed on the CPUs `cpus` only (`taskset -c`), as a
/// deployment pinned to one core would be.
pub fn start_binary_on(yaml: &str, cpus: Option<&str>) -> Binary {
    let dir = TempDir::new("binary");
    for _attempt in 0..3 {
        let port = free_port();
        let yaml = yaml.replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
        // A state_dir of the test's own (kept across two starts) wins over the scratch one.
        let yaml = if yaml.contains("state_dir:") {
            yaml
        } else {
            format!("state_dir: {}\n{yaml}", dir.0.join("state").display())
        };
        let config = dir.0.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(dir.0.join("sidecar.log")).unwrap();
        let bin = env!("CARGO_BIN_EXE_smtp-sidecar");
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus, bin]);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .arg("run")
            .arg("-c")
            .arg(&config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let mut child = Guard(child.unwrap_or_else(|e| match cpus {
            Some(_) => panic!("taskset (Debian package util-linux): {e}"),
            None => panic!("{bin}: {e}"),
        }));
        if wait_listening(&mut child.0, &dir) {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            return Binary { addr, child, dir };
        }
        eprintln!("sidecar exited (port {port} taken?):\n{}", log_of(&dir));
    }
    panic!("the sidecar did not start");
}

impl Binary {
    /// What the binary has logged so far (stdout and stderr). Its log lines reach the file
    /// from a thread of their own a moment after they are logged: this returns once the file
    /// has not grown for 50 ms (2 s at most).
    pub fn log(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut log = log_of(&self.dir);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let now = log_of(&self.dir);
            if now.len() == log.len() || Instant::now() > deadline {
                return now;
            }
            log = now;
        }
    }

    /// Wait (10 s at most) until the log holds `needle` `n` times.
    pub async fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {needle:?} ({n}) in the log:\n{}", self.log());
    }

    /// The configuration file the binary runs with (a test may rewrite it).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.0.join("config.yaml")
    }

    /// The configuration as written (ports and `state_dir` filled in).
    pub fn config(&self) -> String {
        std::fs::read_to_string(self.config_path()).unwrap()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Send the binary a signal by name (`HUP`, `TERM`...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// The listener's address (one listener, whatever its name).
    pub fn addr(&self, _listener: &str) -> Option<SocketAddr> {
        Some(self.addr)
    }
}

/// Wait (10 s at most) for the log line that says the listener is bound; false if the
/// binary exited first. Not a probe connection: that would be a session of its own, with a
/// backend connection the tests would count.
fn wait_listening(child: &mut std::process::Child, dir: &TempDir) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if log_of(dir).contains(" listening") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the sidecar did not start listening within 10 s:\n{}",
        log_of(dir)
    );
}

fn log_of(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.0.join("sidecar.log")).unwrap_or_default()
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        if std::thread::panicking() {
            eprintln!("--- sidecar log ---\n{}", log_of(&self.dir));
        }
    }
}
