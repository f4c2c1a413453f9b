//! One log line per interval for a condition that repeats at the message
//! rate (no healthy node, no RTP ports): each request, and each of its
//! retransmissions, would otherwise log the same thing. Sans-IO: the
//! caller passes the time.

use std::time::{Duration, Instant};

/// At most one line this often per throttled condition.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct LogThrottle {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// An occurrence at `now`: `Some(n)` if it is to be logged, `n` being
    /// the occurrences left unlogged since the last line; `None` if a line
    /// was logged less than the interval ago.
    pub fn occurred(&mut self, now: Instant) -> Option<u64> {
        if self
            .logged_at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            self.unlogged += 1;
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_unlogged() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut throttle = LogThrottle::default();
        assert_eq!(throttle.occurred(t0), Some(0));
        assert_eq!(throttle.occurred(t0 + second), None);
        assert_eq!(throttle.occurred(t0 + LOG_EVERY - second), None);
        assert_eq!(throttle.occurred(t0 + LOG_EVERY), Some(2));
        assert_eq!(throttle.occurred(t0 + LOG_EVERY + second), None);
        // Quiet for long: the next is logged at once.
        assert_eq!(throttle.occurred(t0 + 6 * LOG_EVERY), Some(1));
    }
}
