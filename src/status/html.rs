//! `GET /`: the [`Status`] as one self-contained HTML page: inline CSS, no script, no
//! external asset, a meta refresh. Every text from configuration, certificates or metric
//! labels is escaped.

use std::fmt::Write;

use smtp_core::date::format_rfc3339;

use super::{BackendState, CertificateState, Status, EXPIRY_WARNING_DAYS};

/// Seconds between reloads of the page by the browser.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}\
header{background:#1f3a5f;color:#fff;padding:12px 24px}\
header h1{margin:0;font-size:20px}\
header p{margin:4px 0 0;color:#c9d6e6}\
header a{color:#fff}\
main{padding:8px 24px 24px}\
h2{font-size:16px;margin:20px 0 6px}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08);min-width:50%}\
th,td{border:1px solid #d5dbe1;padding:4px 10px;text-align:left;white-space:nowrap}\
th{background:#e8edf2;font-weight:600}\
th.group{text-align:center}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.wrap{white-space:normal;max-width:420px;word-break:break-all}\
tr.expiring td{background:#fbd3d0}\
tr.expired td{background:#f8b4b0;font-weight:600}\
.up{color:#116b2f;font-weight:600}\
.down{color:#b00020;font-weight:600}\
.unknown{color:#8a5a00}\
.bad{color:#b3261e;font-weight:600}\
.empty{color:#667;font-style:italic}\
footer{color:#667;padding:0 24px 16px;font-size:12px}";

/// Text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as RFC 3339 UTC, `-` for 0 (never).
fn time(unix: i64) -> String {
    if unix == 0 {
        "-".to_owned()
    } else {
        format_rfc3339(unix)
    }
}

/// How long ago `then` was, roughly: `42 s`, `5 min`, `3 h`, `2 d`.
pub(super) fn ago(now: i64, then: i64) -> String {
    let s = now.saturating_sub(then).max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7_199 => format!("{} min ago", s / 60),
        7_200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// One heading row.
fn headings(names: &[&str]) -> String {
    let cells: String = names.iter().map(|h| format!("<th>{h}</th>")).collect();
    format!("<tr>{cells}</tr>")
}

/// A table: `head` its heading rows, `columns` wide; `rows` already rendered; `empty` when
/// there are none.
fn table(out: &mut String, class: &str, head: &str, columns: usize, rows: &[String], empty: &str) {
    let _ = write!(out, "<table class=\"{class}\"><thead>{head}</thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td class=\"empty\" colspan=\"{columns}\">{empty}</td></tr>"
        );
    }
    for r in rows {
        out.push_str(r);
    }
    out.push_str("</tbody></table>\n");
}

pub fn render(s: &Status) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>smtp-sidecar status</title><style>{STYLE}</style></head>\n<body>\
         <header><h1>smtp-sidecar status</h1><p>version <span id=\"version\">{}</span> \
         &middot; configuration generation <span id=\"generation\">{}</span>, loaded {} \
         &middot; as of {} &middot; <a href=\"status.json\">JSON</a> &middot; \
         <a href=\"metrics\">metrics</a></p></header>\n<main>\n",
        escape(&s.version),
        s.config_generation,
        time(s.config_loaded_at),
        time(s.generated_at),
    );

    out.push_str("<h2>Listeners</h2>\n");
    let rows: Vec<String> = s
        .listeners
        .iter()
        .map(|l| {
            let share = l
                .tls_share_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%"));
            format!(
                "<tr data-listener=\"{name}\"><td>{name}</td><td>{mode}</td><td>{listen}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{share}</td><td class=\"n\">{}</td></tr>",
                l.sessions_active,
                l.sessions_total,
                l.sessions_refused,
                l.messages_accepted,
                l.messages_rejected,
                l.messages_failed,
                l.message_bytes,
                name = escape(&l.name),
                mode = escape(&l.mode),
                listen = escape(&l.listen),
            )
        })
        .collect();
    let head = format!(
        "<tr><th rowspan=\"2\">listener</th><th rowspan=\"2\">mode</th>\
         <th rowspan=\"2\">address</th><th colspan=\"3\" class=\"group\">sessions</th>\
         <th colspan=\"5\" class=\"group\">messages</th></tr>{}",
        headings(&[
            "now",
            "since start",
            "over limits",
            "accepted",
            "rejected",
            "failed",
            "TLS share",
            "body bytes",
        ])
    );
    table(&mut out, "listeners", &head, 11, &rows, "No listener.");

    out.push_str("<h2>Domain-secure partners</h2>\n");
    let rows: Vec<String> = s
        .domains
        .iter()
        .map(|d| {
            let last = match &d.last_failure {
                Some(f) => format!(
                    "<td class=\"bad\">{}</td><td>{} ({}, listener {})</td>",
                    escape(&f.reason),
                    time(f.at),
                    ago(s.generated_at, f.at),
                    escape(&f.listener)
                ),
                None => "<td>-</td><td>-</td>".to_owned(),
            };
            format!(
                "<tr data-domain=\"{domain}\"><td>{domain}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n{}\">{}</td>{last}</tr>",
                d.received,
                d.sent,
                if d.outbound_failures > 0 { " bad" } else { "" },
                d.outbound_failures,
                domain = escape(&d.domain),
            )
        })
        .collect();
    table(
        &mut out,
        "domains",
        &headings(&[
            "domain",
            "messages received",
            "messages sent",
            "outbound session failures",
            "last failure reason",
            "last failure at",
        ]),
        6,
        &rows,
        "No domain-secure domain configured.",
    );

    out.push_str("<h2>Certificates</h2>\n");
    let rows: Vec<String> = s
        .certificates
        .iter()
        .map(|c| {
            let (class, left) = match c.state {
                CertificateState::Valid => ("valid", format!("{} days", c.days_to_expiry)),
                CertificateState::Expiring => (
                    "expiring",
                    format!("{} days (under {EXPIRY_WARNING_DAYS})", c.days_to_expiry),
                ),
                CertificateState::Expired => (
                    "expired",
                    format!("expired {} days ago", -c.days_to_expiry - 1),
                ),
            };
            format!(
                "<tr class=\"{class}\"><td>{}</td><td class=\"wrap\">{}</td><td>{}</td>\
                 <td>{}</td><td class=\"n\">{left}</td></tr>",
                escape(&c.name),
                escape(&c.subject),
                escape(&c.thumbprint),
                time(c.not_after),
            )
        })
        .collect();
    table(
        &mut out,
        "certificates",
        &headings(&[
            "name",
            "subject",
            "SHA-1 thumbprint",
            "expires",
            "days to expiry",
        ]),
        5,
        &rows,
        "No certificate loaded.",
    );

    out.push_str("<h2>Backends</h2>\n");
    let rows: Vec<String> = s
        .backends
        .iter()
        .map(|b| {
            let state = match b.state {
                BackendState::Up => "<td class=\"up\">up</td>",
                BackendState::Down => "<td class=\"down\">down (its last connection failed)</td>",
                BackendState::Unknown => "<td class=\"unknown\">not tried since start</td>",
            };
            format!(
                "<tr><td>{}</td><td>{}</td>{state}</tr>",
                escape(&b.listener),
                escape(&b.server)
            )
        })
        .collect();
    table(
        &mut out,
        "backends",
        &headings(&["listener", "server", "state"]),
        3,
        &rows,
        "No backend server.",
    );

    let _ = write!(
        out,
        "</main>\n<footer>Counts since the process started. This page reloads every \
         {REFRESH_SECONDS} s.</footer>\n</body></html>\n"
    );
    out
}
