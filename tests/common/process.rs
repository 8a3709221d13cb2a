//! Child processes and scratch directories for the tests that run real programs (the
//! sidecar binary, Exim, Postfix tools): everything is cleaned up when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("smtp-sidecar-{prefix}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir); // left over by a killed run with our pid
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A subdirectory anyone may write to, for programs that drop privileges.
    pub fn open_subdir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `n` free ports, all different: each is held until all are found (one port asked for twice
/// in a row can come back twice, as the kernel reuses the one just released).
#[allow(dead_code)]
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Wait (10 s at most) until `port` accepts connections while `child` runs; false if it
/// exited first.
pub fn wait_accepting(child: &mut Child, port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let what = format!("nothing accepting on 127.0.0.1:{port}");
    wait_for(child, &what, |_| {
        // A connection to a port nobody listens on can still succeed: on loopback the kernel
        // may give the connecting socket that very port, and it connects to itself.
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .is_ok_and(|c| c.local_addr().is_ok_and(|l| l.port() != port))
    })
}

/// Wait (10 s at most) until `child` itself listens on 127.0.0.1:`port`, not merely until
/// something accepts there (a port taken from `free_port` may have gone to another test's
/// listener meanwhile); false if it exited first.
pub fn wait_listening(child: &mut Child, port: u16) -> bool {
    let what = format!("process {} not listening on 127.0.0.1:{port}", child.id());
    wait_for(child, &what, |pid| listens(pid, port))
}

/// Poll `ready` (given the child's pid) every 50 ms while `child` runs: true once it holds,
/// false if the child exited first; after 10 s, a panic saying `what`.
fn wait_for(child: &mut Child, what: &str, ready: impl Fn(u32) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if ready(child.id()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} after 10 s");
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port`: a listening entry of
/// /proc/net/tcp (state 0A) whose inode is one of the process's descriptors.
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = tcp_table() else {
        return false;
    };
    let local = loopback(port);
    let inodes: Vec<String> = table
        .iter()
        .filter_map(|f| {
            (f.get(1) == Some(&local) && f.get(3).is_some_and(|s| s == "0A"))
                .then(|| f.get(9).map(|i| format!("socket:[{i}]")))
                .flatten()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Whether the server has accepted the connection from 127.0.0.1:`client` to 127.0.0.1:`server`:
/// the server's side in /proc/net/tcp has an inode, which a connection still in the accept
/// queue has not.
pub fn accepted(server: u16, client: u16) -> bool {
    let Ok(table) = tcp_table() else {
        return false;
    };
    let (local, remote) = (loopback(server), loopback(client));
    table.iter().any(|f| {
        f.get(1) == Some(&local)
            && f.get(2) == Some(&remote)
            && f.get(9).is_some_and(|inode| inode != "0")
    })
}

/// The rows of /proc/net/tcp (the IPv4 sockets), each split into its fields: `[1]` the local
/// address and `[2]` the remote one (as [`loopback`] writes them), `[3]` the state (`01`
/// established, `0A` listening...), `[9]` the inode (0 for a connection no process has
/// accepted yet).
pub fn tcp_table() -> std::io::Result<Vec<Vec<String>>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let rows = table.lines().skip(1);
    Ok(rows
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect())
}

/// 127.0.0.1:`port` as /proc/net/tcp writes it.
pub fn loopback(port: u16) -> String {
    format!("0100007F:{port:04X}")
}

/// What `read` returns once it has `n` items (`within` at most), read again a moment later
/// (one more would come by then) and checked to be still `n`: the `what` a test waits for.
pub fn exactly<T>(n: usize, what: &str, within: Duration, read: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + within;
    while read().len() < n {
        assert!(
            Instant::now() < deadline,
            "{n} {what} not there after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let all = read();
    assert_eq!(all.len(), n, "more {what} than {n}");
    all
}
