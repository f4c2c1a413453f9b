//! Frame pacing: frame N is due at `start + N * 20 ms`, computed from the
//! start rather than by sleeping 20 ms after each frame, so processing time
//! and timer lateness never accumulate into drift.

use std::time::{Duration, Instant};
use tokio::time::{Interval, MissedTickBehavior};

pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// The sans-IO clock: deadlines and due counts from a fixed start.
#[derive(Debug, Clone, Copy)]
pub struct FrameClock {
    start: Instant,
}

impl FrameClock {
    pub fn new(start: Instant) -> Self {
        FrameClock { start }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn deadline(&self, frame: u64) -> Instant {
        self.start + FRAME_DURATION * u32::try_from(frame).unwrap_or(u32::MAX)
    }

    /// Index of the frame whose slot contains `now` (frames `0..=index` are
    /// due); 0 before the start.
    pub fn frame_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        (elapsed.as_nanos() / FRAME_DURATION.as_nanos()) as u64
    }
}

/// One wake-up of the [`FramePacer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTick {
    /// Index of the frame to produce now.
    pub frame: u64,
    /// Frames whose slot passed while the task was not running; the caller
    /// advances its RTP timestamp over them (a gap the far end conceals).
    pub skipped: u64,
}

/// tokio driver for a [`FrameClock`].
///
/// `MissedTickBehavior::Skip` is deliberate: after a stall, `Burst` would
/// fire every missed tick at once and flood the far end with frames that
/// are already late, and `Delay` would shift the grid and drift from the
/// RTP clock. `Skip` keeps ticks on the `start + N * 20 ms` grid and
/// reports what was missed.
pub struct FramePacer {
    clock: FrameClock,
    interval: Interval,
    next_frame: u64,
}

impl FramePacer {
    pub fn new(start: tokio::time::Instant) -> Self {
        let mut interval = tokio::time::interval_at(start, FRAME_DURATION);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        FramePacer {
            clock: FrameClock::new(start.into_std()),
            interval,
            next_frame: 0,
        }
    }

    pub fn clock(&self) -> FrameClock {
        self.clock
    }

    pub async fn tick(&mut self) -> FrameTick {
        self.interval.tick().await;
        let frame = self
            .clock
            .frame_at(tokio::time::Instant::now().into_std())
            .max(self.next_frame);
        let skipped = frame - self.next_frame;
        self.next_frame = frame + 1;
        FrameTick { frame, skipped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{sleep, Instant as TokioInstant};

    #[test]
    fn clock_deadlines_are_multiples_of_the_frame_from_start() {
        let start = Instant::now();
        let clock = FrameClock::new(start);
        assert_eq!(clock.deadline(0), start);
        assert_eq!(clock.deadline(50), start + Duration::from_secs(1));
        assert_eq!(clock.frame_at(start + Duration::from_millis(39)), 1);
        assert_eq!(clock.frame_at(start + Duration::from_millis(40)), 2);
        assert_eq!(clock.frame_at(start), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_does_not_drift_with_processing_time() {
        let start = TokioInstant::now();
        let mut pacer = FramePacer::new(start);
        for expected in 0..500u64 {
            let tick = pacer.tick().await;
            assert_eq!(
                tick,
                FrameTick {
                    frame: expected,
                    skipped: 0
                }
            );
            assert_eq!(
                TokioInstant::now() - start,
                FRAME_DURATION * expected as u32
            );
            // Work that takes a third of the frame.
            sleep(Duration::from_millis(7)).await;
        }
        // The naive loop this replaces would be 500 * 7 ms = 3.5 s late.
        assert_eq!(
            TokioInstant::now() - start,
            Duration::from_millis(499 * 20 + 7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_skips_frames_and_stays_on_the_grid() {
        let start = TokioInstant::now();
        let mut pacer = FramePacer::new(start);
        assert_eq!(
            pacer.tick().await,
            FrameTick {
                frame: 0,
                skipped: 0
            }
        );
        sleep(Duration::from_millis(75)).await;
        assert_eq!(
            pacer.tick().await,
            FrameTick {
                frame: 3,
                skipped: 2
            }
        );
        assert_eq!(
            pacer.tick().await,
            FrameTick {
                frame: 4,
                skipped: 0
            }
        );
        assert_eq!(TokioInstant::now() - start, Duration::from_millis(80));
    }
}
