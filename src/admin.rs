//! The admin endpoint on `metrics.listen`: `GET /metrics` (Prometheus text format),
//! `/healthz` (the process is alive), `/readyz` (every listener is bound, the process is not
//! shutting down, and no terminate listener has all its backend servers known down), and the
//! status page, `/` (HTML) and `/status.json` ([`crate::status`]). `HEAD` is answered as `GET` without the body; another
//! method on one of these paths is `405`, any other path `404`. The endpoint has its own
//! small budget of connections, buffers and time, so that nothing arriving on the admin port
//! can take the descriptors or tasks the SMTP sessions need; every answer is built from one
//! snapshot of the registry, with no lock held across an await.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::clock::unix_now;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Watch};
use crate::status::{ListenerInfo, Status};

/// Admin connections served at once. A Prometheus server and a health checker need one or
/// two each, and every connection costs a descriptor and a task that an SMTP session could
/// use (the open-file reserve counts these). When all are taken, a new connection takes the
/// place of the oldest that has not sent its request yet ([`Places`]), and is closed at once
/// only if every one has.
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
    let places = Arc::new(Places::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = places.take() else {
            // Debug, not info: a flood of these must not become a flood of log lines.
            tracing::debug!(%peer, "admin endpoint: {MAX_CONNECTIONS} requests in progress; closing");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let listeners = listeners.load_full();
        let shutdown = shutdown.clone();
        let places = Arc::clone(&places);
        tokio::spawn(async move {
            let asking = Arc::clone(&place);
            let service = hyper::service::service_fn(move |req| {
                asking.asked.store(true, Ordering::Relaxed);
                let running = shutdown.borrow() == Shutdown::Running;
                let response = respond(&req, &metrics, &listeners, running);
                async move { Ok::<_, Infallible>(response) }
            });
            // One request a connection: a place is held while a request is awaited (which
            // a newcomer may cut short) or answered, never idle between two.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_BUF_SIZE)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_DEADLINE, conn) => {}
                () = place.evicted.notified() => {}
            }
            places.give_back(&place);
        });
    }
}

/// The admin connections open, oldest first, at most [`MAX_CONNECTIONS`]. Holding one costs
/// a client nothing before its request (a connect, then silence until
/// [`HEADER_READ_TIMEOUT`]), so a full set of places would otherwise lock Prometheus and the
/// health checks out for as long as someone keeps reconnecting: a new connection takes the
/// place of the oldest that has sent no request, whose task ends at once.
#[derive(Default)]
struct Places(Mutex<VecDeque<Arc<Place>>>);

#[derive(Default)]
struct Place {
    /// Its request head has arrived: it is being answered, and keeps its place.
    asked: AtomicBool,
    evicted: Notify,
}

impl Places {
    /// A place for a new connection: a free one, or the oldest waiting for its request,
    /// taken from it; `None` if every connection is being answered.
    fn take(&self) -> Option<Arc<Place>> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_CONNECTIONS {
            let waiting = open.iter().position(|p| !p.asked.load(Ordering::Relaxed))?;
            let oldest = open.remove(waiting)?;
            // A permit if its task is not waiting yet: it ends at its next poll.
            oldest.evicted.notify_one();
        }
        let place = Arc::new(Place::default());
        open.push_back(Arc::clone(&place));
        Some(place)
    }

    /// The connection has ended: its place is free (if no newcomer took it already).
    fn give_back(&self, place: &Arc<Place>) {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = open.iter().position(|p| Arc::ptr_eq(p, place)) {
            open.remove(i);
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::{Places, MAX_CONNECTIONS};
    use std::sync::atomic::Ordering;

    /// A full set of places: a newcomer takes the oldest waiting for its request (which is
    /// told to end), never one being answered; with every one being answered, none.
    #[tokio::test]
    async fn a_newcomer_takes_the_place_of_the_oldest_waiting_for_its_request() {
        let places = Places::default();
        let open: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| places.take().unwrap())
            .collect();
        open[0].asked.store(true, Ordering::Relaxed);
        let newcomer = places.take().expect("a place");
        // The second is the oldest waiting: its end was asked for (a permit is stored).
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            open[1].evicted.notified(),
        )
        .await
        .expect("the oldest waiting is told to end");
        // Its task gives back a place it no longer has: the newcomer keeps it.
        places.give_back(&open[1]);
        assert_eq!(places.0.lock().unwrap().len(), MAX_CONNECTIONS);
        for place in open.iter().skip(2).chain([&newcomer]) {
            place.asked.store(true, Ordering::Relaxed);
        }
        assert!(
            places.take().is_none(),
            "every connection is being answered"
        );
        places.give_back(&open[0]);
        assert!(places.take().is_some(), "a place given back is free");
    }
}
