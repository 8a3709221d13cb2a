//! The Received header the sidecar prepends (RFC 5321 §4.4), naming the client's address and
//! EHLO name, the protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA...) and the TLS version and
//! cipher, so that a backend without XCLIENT still knows how the message arrived.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::SystemTime;

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
    let _ = write!(h, ";\r\n\t{}\r\n", crate::date::format_rfc5322(when));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

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
