//! The retransmission schedule a UA keeps for what no transaction covers:
//! its 2xx to an INVITE until the ACK (RFC 3261 §13.3.1.4) and a reliable
//! provisional until the PRACK (RFC 3262 §3). Both start at T1, double
//! (the 2xx up to T2) and stop after 64·T1.

use std::time::{Duration, Instant};

use sip::transaction::TimerConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resend {
    next_at: Option<Instant>,
    interval: Duration,
    cap: Option<Duration>,
    give_up_at: Instant,
}

/// What a due [`Resend`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendDue {
    Nothing,
    Resend,
    /// 64·T1 passed without the acknowledgement.
    GiveUp,
}

impl Resend {
    /// The schedule of a 2xx: over a reliable transport nothing is resent,
    /// but the 64·T1 limit on the ACK still holds.
    pub fn final_response(timers: TimerConfig, reliable: bool, now: Instant) -> Resend {
        Resend {
            next_at: (!reliable).then_some(now + timers.t1),
            interval: timers.t1,
            cap: Some(timers.t2),
            give_up_at: now + 64 * timers.t1,
        }
    }

    /// The schedule of a reliable provisional response (no T2 cap).
    pub fn provisional(timers: TimerConfig, now: Instant) -> Resend {
        Resend {
            next_at: Some(now + timers.t1),
            interval: timers.t1,
            cap: None,
            give_up_at: now + 64 * timers.t1,
        }
    }

    pub fn poll_timeout(&self) -> Instant {
        self.next_at
            .map_or(self.give_up_at, |at| at.min(self.give_up_at))
    }

    /// Advances the schedule to `now`.
    pub fn fire(&mut self, now: Instant) -> ResendDue {
        if self.give_up_at <= now {
            return ResendDue::GiveUp;
        }
        match self.next_at {
            Some(at) if at <= now => {
                self.interval *= 2;
                if let Some(cap) = self.cap {
                    self.interval = self.interval.min(cap);
                }
                self.next_at = Some(now + self.interval);
                ResendDue::Resend
            }
            _ => ResendDue::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_t2_then_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut resend = Resend::final_response(TimerConfig::default(), false, t0);
        let mut fired = Vec::new();
        let mut now = t0;
        while now < t0 + ms(40_000) {
            now = resend.poll_timeout();
            match resend.fire(now) {
                ResendDue::Resend => fired.push((now - t0).as_millis()),
                ResendDue::GiveUp => break,
                ResendDue::Nothing => unreachable!("polled time is due"),
            }
        }
        assert_eq!(&fired[..5], [500, 1500, 3500, 7500, 11500]);
        assert_eq!(now - t0, ms(32_000));
        let mut reliable = Resend::final_response(TimerConfig::default(), true, t0);
        assert_eq!(reliable.poll_timeout(), t0 + ms(32_000));
        assert_eq!(reliable.fire(t0 + ms(500)), ResendDue::Nothing);
    }
}
