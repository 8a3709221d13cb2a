//! The wall clock as Unix seconds: certificate validity, metric timestamps, the status page.
//! Protocol deadlines use monotonic `Instant`s instead, passed into the core.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch; a clock before 1970 counts as 0.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
