//! The admin endpoint's status page (issue 14), on the real sidecar started in-process with a
//! recording backend: after known traffic, `/status.json` has the exact counts, headless
//! Chromium renders `/` with them (and saves a screenshot, target/status-page.png), and the
//! endpoint answers unknown paths, other methods and HEAD as HTTP says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/admin_http.rs"]
mod admin_http;
#[path = "common/chromium.rs"]
mod chromium;
mod common;
#[path = "common/partner_pki.rs"]
mod partner_pki;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{config_yaml, recording_backend, start, Client, T};
use partner_pki::{client_config, PartnerPki};
use serde_json::Value;

/// Over the listener's `max_message_size: 1000`.
const BIG: usize = 1500;

async fn message(c: &mut Client, from: &str, body: &[u8]) -> String {
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{from}>")).await,
        "250 2.1.0 Ok\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Ok\r\n");
    assert_eq!(
        c.cmd("DATA").await,
        "354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    c.send(body).await;
    c.send(b".\r\n").await;
    c.reply().await
}

async fn status(admin: SocketAddr) -> Value {
    let r = admin_http::get(admin, "/status.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).unwrap()
}

/// Poll `/status.json` until `done` holds (sessions end a moment after their QUIT).
async fn status_when(admin: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let s = status(admin).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never settled: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_after_known_traffic() {
    // Fail at once, before any traffic, when the browser is missing.
    chromium::binary();
    let pki = PartnerPki::new();
    let (backend, rec) = recording_backend().await;
    let policy = "      max_message_size: 1000\n      client_certificates: request\n      \
                  domain_secure: [woodgrovebank.com]\n";
    let yaml = format!(
        "{}{}metrics:\n  listen: 127.0.0.250:0\n",
        pki.trust_yaml(),
        config_yaml(backend, "starttls", policy)
    );
    let running = start(&yaml).await;
    let smtp = running.addr("inbound").unwrap();
    let admin = running.metrics_addr.expect("metrics.listen");

    // Before any traffic: the listener at 0, no share yet.
    let s = status(admin).await;
    assert_eq!(s["listeners"][0]["sessions_total"], 0);
    assert_eq!(s["listeners"][0]["tls_share_percent"], Value::Null);

    // Over STARTTLS with the partner's certificate: two accepted (one from the
    // domain-secure partner domain), one refused for size.
    let mut c = Client::connect(smtp).await;
    assert_eq!(c.reply().await, "220 mx.test ESMTP\r\n");
    assert!(c
        .cmd("EHLO mail.woodgrovebank.com")
        .await
        .contains("250 STARTTLS\r\n"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS\r\n");
    let (tls, _) = client_config(Some(&pki.partner));
    let mut c = c.try_upgrade(tls).await.expect("handshake");
    assert!(c
        .cmd("EHLO mail.woodgrovebank.com")
        .await
        .starts_with("250-"));
    for from in ["alice@woodgrovebank.com", "a@x.test"] {
        assert!(message(&mut c, from, b"Subject: t\r\n\r\nbody\r\n")
            .await
            .starts_with("250 "));
    }
    let big = [b"x".repeat(BIG - 2).as_slice(), b"\r\n"].concat();
    assert_eq!(
        message(&mut c, "a@x.test", &big).await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(c.cmd("QUIT").await.starts_with("221"));
    // In plaintext: one accepted.
    let mut p = Client::connect(smtp).await;
    assert_eq!(p.reply().await, "220 mx.test ESMTP\r\n");
    assert!(p.cmd("EHLO plain.test").await.starts_with("250-"));
    assert!(message(&mut p, "p@x.test", b"Subject: p\r\n\r\nplain\r\n")
        .await
        .starts_with("250 "));
    assert!(p.cmd("QUIT").await.starts_with("221"));
    assert_eq!(rec.messages().len(), 3);
    // A third session stays open while the page is looked at.
    let mut open = Client::connect(smtp).await;
    assert_eq!(open.reply().await, "220 mx.test ESMTP\r\n");

    // (a) /status.json: exact counts once the two finished sessions have ended.
    let s = status_when(admin, |s| {
        s["listeners"][0]["sessions_active"] == 1 && s["listeners"][0]["sessions_total"] == 3
    })
    .await;
    let l = &s["listeners"][0];
    assert_eq!(l["name"], "inbound");
    assert_eq!(l["mode"], "terminate");
    assert_eq!(l["listen"], smtp.to_string());
    assert_eq!(l["sessions_active"], 1);
    assert_eq!(l["sessions_total"], 3);
    assert_eq!(l["sessions_refused"], 0);
    assert_eq!(l["messages_accepted"], 3);
    assert_eq!(l["messages_rejected"], 1);
    assert_eq!(l["messages_failed"], 0);
    assert_eq!(l["messages_tls"], 3);
    assert_eq!(l["tls_share_percent"], 75.0);
    let bytes = l["message_bytes"].as_u64().unwrap();
    assert_eq!(bytes, 20 + 20 + 21, "the bodies of the accepted messages");
    assert_eq!(s["listeners"].as_array().unwrap().len(), 1);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["config_generation"], 1);
    assert!(s["config_loaded_at"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(
        s["domains"],
        serde_json::json!([{"domain": "woodgrovebank.com", "received": 1, "sent": 0,
            "outbound_failures": 0, "last_failure": null}])
    );
    let certs = s["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(certs[0]["state"], "valid");
    assert!(certs[0]["subject"].as_str().unwrap().contains("mx.test"));
    let days = certs[0]["days_to_expiry"].as_i64().unwrap();
    assert!(days >= 14, "{days}");
    assert_eq!(
        s["backends"],
        serde_json::json!([{"listener": "inbound", "server": backend.to_string(), "state": "up"}])
    );

    // (b) The page in a real browser: the same counts in the rendered table.
    let url = format!("http://{admin}/");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium::dump_dom(&url)
    })
    .await
    .unwrap();
    assert!(dom.contains("<title>smtp-sidecar status</title>"), "{dom}");
    assert_eq!(
        chromium::row_cells(&dom, "data-listener=\"inbound\""),
        [
            "inbound".to_owned(),
            "terminate".to_owned(),
            smtp.to_string(),
            "1".to_owned(),
            "3".to_owned(),
            "0".to_owned(),
            "3".to_owned(),
            "1".to_owned(),
            "0".to_owned(),
            "75.0%".to_owned(),
            bytes.to_string(),
        ]
    );
    let text = chromium::text(&dom);
    assert!(text.contains(&format!("inbound{backend}up")), "{text}");
    assert!(text.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))));
    assert!(text.contains("configuration generation 1"));
    assert!(text.contains(&format!("{days} days")), "{text}");
    assert_eq!(
        chromium::row_cells(&dom, "data-domain=\"woodgrovebank.com\""),
        ["woodgrovebank.com", "1", "0", "0", "-", "-"]
    );
    let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    tokio::task::spawn_blocking({
        let png = png.clone();
        move || chromium::screenshot(&url, &png, 1280, 900)
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 10_000, "a {size}-byte screenshot is a blank page");

    // (c) HTTP: content types, unknown paths, other methods, HEAD.
    let r = admin_http::get(admin, "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .starts_with("default-src 'none'"));
    let r = admin_http::get(admin, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.text().contains(
        "smtp_sidecar_messages_total{listener=\"inbound\",result=\"accepted\",tls=\"yes\"} 2\n"
    ));
    let r = admin_http::get(admin, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = admin_http::get(admin, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    for path in ["/nope", "/index.html", "/metrics/", "/status.json/x"] {
        for method in ["GET", "HEAD", "POST"] {
            let r = admin_http::request(admin, method, path).await;
            assert_eq!(r.status, 404, "{method} {path}");
        }
    }
    for path in ["/", "/status.json", "/metrics", "/healthz", "/readyz"] {
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
            let r = admin_http::request(admin, method, path).await;
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
        let get = admin_http::get(admin, path).await;
        let head = admin_http::request(admin, "HEAD", path).await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {path}"
        );
        let length: usize = head
            .header("content-length")
            .unwrap_or_else(|| panic!("HEAD {path}: no Content-Length"))
            .parse()
            .unwrap();
        assert!(length > 0, "HEAD {path}");
        assert_eq!(
            get.body.len(),
            get.header("content-length")
                .unwrap()
                .parse::<usize>()
                .unwrap()
        );
    }

    assert!(open.cmd("QUIT").await.starts_with("221"));
    running.shutdown().await;
}
