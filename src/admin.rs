//! The admin endpoint on `metrics.listen`: `GET /metrics` (Prometheus text format),
//! `/healthz` (the process is alive), `/readyz` (every listener is bound). The endpoint has
//! its own small budget of connections, buffers and time, so that nothing arriving on the
//! admin port can take the descriptors or tasks the SMTP sessions need.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Admin connections served at once; one more is closed as soon as it is accepted. A
/// Prometheus server and a health checker need one or two each, and every connection costs a
/// descriptor and a task that an SMTP session could use (the open-file reserve counts these).
pub const MAX_CONNECTIONS: usize = 16;

/// How long a request head may take to arrive, counted from the connection's start and again
/// after each response: an idle connection or a slow sender loses its place after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most any admin connection lives, whatever it does: a scraper reading `/metrics` slowly
/// or a client sending requests back to back cannot keep its place beyond this. Prometheus
/// simply reconnects for the next scrape.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The most of a request the endpoint buffers: its requests are a line and a few headers.
const MAX_BUF_SIZE: usize = 16 * 1024;

pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            // Debug, not info: a flood of these must not become a flood of log lines.
            tracing::debug!(%peer, "admin endpoint: {MAX_CONNECTIONS} connections open; closing");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_SIZE)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(place);
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(metrics.render()),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        // Listeners are bound before this endpoint starts; backend checks come with the
        // backend pool.
        (&Method::GET, "/readyz") => (StatusCode::OK, "text/plain", Bytes::from_static(b"ready\n")),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}
