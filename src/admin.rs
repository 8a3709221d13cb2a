//! The admin endpoint on `metrics.listen`: `GET /metrics` (Prometheus text format),
//! `/healthz` (the process is alive), `/readyz` (every listener is bound, the process is not
//! shutting down, and no terminate listener has all its backend servers known down), and the
//! status page, `/` (HTML) and `/status.json` ([`crate::status`]). `HEAD` is answered as `GET` without the body; another
//! method on one of these paths is `405`, any other path `404`. The endpoint has its own
//! small budget of connections, buffers and time, so that nothing arriving on the admin port
//! can take the descriptors or tasks the SMTP sessions need; every answer is built from one
//! snapshot of the registry, with no lock held across an await.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clock::unix_now;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Watch};
use crate::status::{ListenerInfo, Status};

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

/// The Content-Type of `/metrics`: the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The status page runs no script and loads nothing: a browser is told so.
const PAGE_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Serve the admin endpoint on `listener`. `listeners` is what the status page and
/// `/readyz` know of each listener beyond its metrics (its mode and address); a reload
/// replaces it, and each connection reads it once. `shutdown` is the process's: once it is
/// draining, `/readyz` says so, and a balancer sends no new sessions to listeners that no
/// longer accept them.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    listeners: Arc<arc_swap::ArcSwap<Vec<ListenerInfo>>>,
    shutdown: Watch,
) {
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
        let listeners = listeners.load_full();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let running = shutdown.borrow() == Shutdown::Running;
                let response = respond(&req, &metrics, &listeners, running);
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

/// The answer to `req`; `running` is false once the process is shutting down.
fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    listeners: &[ListenerInfo],
    running: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/" | "/status.json" | "/metrics" | "/healthz" | "/readyz"
    ) {
        return response(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    // HEAD: hyper sends the head of the GET answer, Content-Length included, and no body.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => response(StatusCode::OK, METRICS_CONTENT_TYPE, metrics.render()),
        "/healthz" => response(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if !running => response(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: shutting down\n",
        ),
        // Listeners are bound before this endpoint starts.
        "/readyz" => match Status::gather(metrics, listeners, unix_now()).readiness() {
            Ok(()) => response(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => response(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/status.json" => response(
            StatusCode::OK,
            "application/json",
            Status::gather(metrics, listeners, unix_now()).json(),
        ),
        _ => {
            let page = Status::gather(metrics, listeners, unix_now()).html();
            let mut r = response(StatusCode::OK, "text/html; charset=utf-8", page);
            let headers = r.headers_mut();
            headers.insert(
                "content-security-policy",
                HeaderValue::from_static(PAGE_POLICY),
            );
            headers.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            r
        }
    }
}

/// A response that no cache keeps: every answer here is of this instant.
fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
