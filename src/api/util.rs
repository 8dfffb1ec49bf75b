//! Small helpers the dialects share: response ids, Unix and RFC 3339 timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};

/// A fresh id such as `chatcmpl-3hK9…`: the prefix, then 24 random alphanumerics.
pub fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 24)
    )
}

/// Compares two secrets without an early exit, so response time does not reveal how much of one was right.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub use crate::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_prefixed() {
        let (a, b) = (new_id("msg_"), new_id("msg_"));
        assert!(a.starts_with("msg_") && a.len() == 28);
        assert_ne!(a, b);
    }
}
