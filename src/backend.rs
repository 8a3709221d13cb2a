//! Connecting to the legacy server: `backend.servers` in order, each under
//! `connect_timeout`, the next one on failure (SPEC §3).

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

/// Connect to the first server that answers; the error names every attempt. `seen` learns
/// of each attempt (the server, whether it answered), for `backend_up`.
pub async fn connect(
    servers: &[String],
    connect_timeout: Duration,
    seen: impl Fn(&str, bool),
) -> Result<TcpStream, String> {
    let mut failures = Vec::new();
    for server in servers {
        let attempt = timeout(connect_timeout, TcpStream::connect(server.as_str())).await;
        seen(server, matches!(attempt, Ok(Ok(_))));
        match attempt {
            Ok(Ok(stream)) => {
                // Replies and commands are small and latency-bound (DESIGN.md §5).
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY on backend socket");
                }
                return Ok(stream);
            }
            Ok(Err(e)) => failures.push(format!("{server}: {e}")),
            Err(_) => failures.push(format!("{server}: timed out after {connect_timeout:?}")),
        }
    }
    Err(failures.join("; "))
}
