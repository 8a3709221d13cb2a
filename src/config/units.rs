//! Durations (`500ms`, `30s`, `5m`, `1h`, `2d`, also combined as `1m30s`) and sizes (`35MiB`,
//! `10MB`, `1000B` or a plain number of bytes) as SPEC §3 writes them. KB/MB/GB are decimal,
//! KiB/MiB/GiB binary, as operators read them on a mail server's size limit.

use std::time::Duration;

/// Parses `<number><unit>` segments; `None` if anything is malformed or overflows.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60)?),
            "h" => Duration::from_secs(number.checked_mul(3600)?),
            "d" => Duration::from_secs(number.checked_mul(86_400)?),
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// Parses a size string in bytes; `None` if malformed or over `u64`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let number: u64 = text[..digits].parse().ok()?;
    let multiplier: u64 = match text[digits..].trim_start() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let cases: &[(&str, Option<Duration>)] = &[
            ("500ms", Some(ms(500))),
            ("30s", Some(secs(30))),
            ("5m", Some(secs(300))),
            ("1h", Some(secs(3600))),
            ("2d", Some(secs(172_800))),
            ("0s", Some(Duration::ZERO)),
            ("1m30s", Some(secs(90))),
            ("1h0m5s", Some(secs(3605))),
            (" 30s ", Some(secs(30))),
            ("", None),
            ("30", None),
            ("5x", None),
            ("s", None),
            ("-5s", None),
            ("1.5s", None),
            ("5 m", None),
            ("5M", None),
            ("30S", None),
            ("1h30", None),
            ("99999999999999999999s", None),
            ("999999999999999999d", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), *want, "{text:?}");
        }
    }

    #[test]
    fn sizes() {
        let cases: &[(&str, Option<u64>)] = &[
            ("35MiB", Some(35 * 1024 * 1024)),
            ("10MB", Some(10_000_000)),
            ("512KiB", Some(512 * 1024)),
            ("1GiB", Some(1 << 30)),
            ("100KB", Some(100_000)),
            ("100kB", Some(100_000)),
            ("1000B", Some(1000)),
            ("1000", Some(1000)),
            ("2GB", Some(2_000_000_000)),
            ("35 MiB", Some(35 * 1024 * 1024)),
            ("0", Some(0)),
            ("", None),
            ("MiB", None),
            ("35XB", None),
            ("35mib", None),
            ("3.5MiB", None),
            ("-1", None),
            ("35MiB5", None),
            ("99999999999999999999", None),
            ("20000000TiB", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), *want, "{text:?}");
        }
    }
}
