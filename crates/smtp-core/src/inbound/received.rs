//! The Received header the sidecar prepends (RFC 5321 §4.4), naming the client's address and
//! EHLO name, the protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA...) and the TLS version and
//! cipher, so that a backend without XCLIENT still knows how the message arrived.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::TlsInfo;

pub(super) fn header(
    helo: Option<&str>,
    peer: IpAddr,
    hostname: &str,
    tls: Option<&TlsInfo>,
    esmtp: bool,
    authenticated: bool,
    when: SystemTime,
) -> String {
    let mut proto = String::from(if esmtp { "ESMTP" } else { "SMTP" });
    if tls.is_some() {
        proto.push('S');
    }
    if authenticated {
        proto.push('A');
    }
    let helo: String = helo
        .unwrap_or("unknown")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let literal = match peer {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let mut h =
        format!("Received: from {helo} ({literal})\r\n\tby {hostname} (smtp-sidecar) with {proto}");
    if let Some(tls) = tls {
        let _ = write!(h, "\r\n\t(version={} cipher={})", tls.version, tls.cipher);
    }
    let _ = write!(h, ";\r\n\t{}\r\n", format_date(when));
    h
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Tue, 24 Nov 2026 02:45:00 +0000`.
pub fn format_date(when: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = when.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian
/// (the well-known era-based conversion).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(format_date(t(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            format_date(t(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            format_date(t(1_795_488_300)),
            "Tue, 24 Nov 2026 02:45:00 +0000"
        );
    }

    #[test]
    fn received_with_tls() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        let h = header(
            Some("client.example"),
            "192.0.2.7".parse().unwrap(),
            "mx.example.com",
            Some(&tls),
            true,
            false,
            UNIX_EPOCH,
        );
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.7])\r\n\tby mx.example.com (smtp-sidecar) \
             with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256);\r\n\t\
             Thu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
