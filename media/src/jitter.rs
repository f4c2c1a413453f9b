//! Jitter buffer for the paths that decode (mixing, recording, IVR input):
//! packets are reordered by sequence number and played out one frame per
//! tick after a target delay; gaps are concealed with silence and packets
//! that arrive after their slot are dropped.
//!
//! In adaptive mode the target follows the measured interarrival jitter.
//! It is applied when playout (re)starts after the buffer ran dry (the
//! start of a talkspurt), and excess delay is shed by skipping a frame.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetDelay {
    Fixed(Duration),
    Adaptive { min: Duration, max: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    pub target: TargetDelay,
    /// Timestamp units per frame (160 for 20 ms at 8 kHz).
    pub frame_samples: u32,
    pub clock_rate: u32,
    /// Packets held at most; the oldest are dropped beyond it.
    pub capacity: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            target: TargetDelay::Adaptive {
                min: Duration::from_millis(40),
                max: Duration::from_millis(300),
            },
            frame_samples: crate::FRAME_SAMPLES as u32,
            clock_rate: crate::SAMPLE_RATE,
            capacity: 64,
        }
    }
}

/// Result of one playout tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// Nothing to play yet (priming or idle): play silence, nothing lost.
    Waiting,
    /// A frame was expected but is missing: conceal it.
    Conceal,
    Frame {
        timestamp: u32,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    pub played: u64,
    pub concealed: u64,
    pub late: u64,
    pub duplicates: u64,
    /// Frames skipped to shed delay or dropped for capacity.
    pub discarded: u64,
}

#[derive(Debug)]
struct Buffered {
    timestamp: i64,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Idle,
    Priming { start_at: Instant, next_ts: i64 },
    Playing { next_ts: i64, empty_ticks: u32 },
}

/// After this many consecutive ticks with nothing buffered, the talkspurt
/// is over and the next packet restarts playout with the current target.
const RESYNC_AFTER_EMPTY_TICKS: u32 = 3;

#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    packets: BTreeMap<i64, Buffered>,
    state: State,
    /// Highest extended sequence and timestamp seen, as unwrap references.
    highest_seq: Option<i64>,
    highest_ts: i64,
    first_arrival: Option<Instant>,
    last_transit: Option<i64>,
    /// Interarrival jitter in timestamp units, scaled by 16 (RFC 3550 A.8).
    jitter_q4: i64,
    stats: JitterStats,
}

fn unwrap16(reference: i64, value: u16) -> i64 {
    reference + i64::from(value.wrapping_sub(reference as u16) as i16)
}

fn unwrap32(reference: i64, value: u32) -> i64 {
    reference + i64::from(value.wrapping_sub(reference as u32) as i32)
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        JitterBuffer {
            config,
            packets: BTreeMap::new(),
            state: State::Idle,
            highest_seq: None,
            highest_ts: 0,
            first_arrival: None,
            last_transit: None,
            jitter_q4: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Measured interarrival jitter.
    pub fn jitter(&self) -> Duration {
        self.units_to_duration((self.jitter_q4 >> 4).max(0))
    }

    /// The delay playout will start with on the next (re)start.
    pub fn target_delay(&self) -> Duration {
        match self.config.target {
            TargetDelay::Fixed(delay) => delay,
            TargetDelay::Adaptive { min, max } => {
                // One frame of packetisation plus three times the jitter
                // covers nearly all of a roughly normal spread.
                let wanted = self.units_to_duration(i64::from(self.config.frame_samples))
                    + self.jitter() * 3;
                wanted.clamp(min, max)
            }
        }
    }

    fn units_to_duration(&self, units: i64) -> Duration {
        let nanos = u128::try_from(units).unwrap_or(0) * 1_000_000_000
            / u128::from(self.config.clock_rate.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn duration_to_units(&self, duration: Duration) -> i64 {
        i64::try_from(duration.as_nanos() * u128::from(self.config.clock_rate) / 1_000_000_000)
            .unwrap_or(i64::MAX)
    }

    pub fn push(&mut self, sequence: u16, timestamp: u32, payload: &[u8], arrival: Instant) {
        let seq = self
            .highest_seq
            .map_or(i64::from(sequence), |h| unwrap16(h, sequence));
        let ts = if self.highest_seq.is_none() {
            i64::from(timestamp)
        } else {
            unwrap32(self.highest_ts, timestamp)
        };
        if self.highest_seq.is_none_or(|h| seq > h) {
            self.highest_seq = Some(seq);
            self.highest_ts = ts;
        }
        self.update_jitter(ts, arrival);

        match self.state {
            State::Idle => {
                self.state = State::Priming {
                    start_at: arrival + self.target_delay(),
                    next_ts: ts,
                };
            }
            State::Priming { start_at, next_ts } if ts < next_ts => {
                // A reordered packet from before the first one: start there.
                self.state = State::Priming {
                    start_at,
                    next_ts: ts,
                };
            }
            State::Playing { next_ts, .. } if ts < next_ts => {
                self.stats.late += 1;
                return;
            }
            _ => {}
        }
        if self.packets.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        self.packets.insert(
            seq,
            Buffered {
                timestamp: ts,
                payload: payload.to_vec(),
            },
        );
        while self.packets.len() > self.config.capacity {
            self.packets.pop_first();
            self.stats.discarded += 1;
        }
    }

    fn update_jitter(&mut self, ts: i64, arrival: Instant) {
        let first = *self.first_arrival.get_or_insert(arrival);
        let transit = self.duration_to_units(arrival.saturating_duration_since(first)) - ts;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Removes buffered packets whose timestamp is before `limit`.
    fn remove_before(&mut self, limit: i64) -> u64 {
        let mut removed = 0;
        while let Some(entry) = self.packets.first_entry() {
            if entry.get().timestamp >= limit {
                break;
            }
            entry.remove();
            removed += 1;
        }
        removed
    }

    /// Called once per frame interval; yields what to play now.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let frame = i64::from(self.config.frame_samples);
        let next_ts = match self.state {
            State::Idle => return Playout::Waiting,
            State::Priming { start_at, .. } if now < start_at => return Playout::Waiting,
            State::Priming { next_ts, .. } | State::Playing { next_ts, .. } => next_ts,
        };
        // Shed delay beyond the target (adaptive shrink or a burst).
        let target_units = self.duration_to_units(self.target_delay());
        let mut next_ts = next_ts;
        // Depth by packet count rather than timestamp span, so a sender's
        // timestamp jump does not look like a huge backlog.
        let buffered_units = self.packets.len() as i64 * frame;
        if buffered_units > target_units + 2 * frame {
            self.remove_before(next_ts + frame);
            next_ts += frame;
            self.stats.discarded += 1;
        }
        self.stats.late += self.remove_before(next_ts);
        if let Some(entry) = self.packets.first_entry() {
            // More than a second ahead is a timestamp discontinuity (a
            // sender restart), not loss: continue from there.
            if entry.get().timestamp - next_ts > i64::from(self.config.clock_rate) {
                next_ts = entry.get().timestamp;
            }
        }
        let result = match self.packets.first_entry() {
            Some(entry) if entry.get().timestamp <= next_ts => {
                let packet = entry.remove();
                self.stats.played += 1;
                next_ts = packet.timestamp + frame;
                Playout::Frame {
                    timestamp: packet.timestamp as u32,
                    payload: packet.payload,
                }
            }
            _ => {
                self.stats.concealed += 1;
                next_ts += frame;
                Playout::Conceal
            }
        };
        let empty_ticks = match (self.state, self.packets.is_empty()) {
            (_, false) => 0,
            (State::Playing { empty_ticks, .. }, true) => empty_ticks + 1,
            (_, true) => 1,
        };
        self.state = if empty_ticks >= RESYNC_AFTER_EMPTY_TICKS {
            State::Idle
        } else {
            State::Playing {
                next_ts,
                empty_ticks,
            }
        };
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    fn fixed(delay_ms: u64) -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            target: TargetDelay::Fixed(Duration::from_millis(delay_ms)),
            ..JitterConfig::default()
        })
    }

    struct Stream {
        t0: Instant,
        seq_base: u16,
        ts_base: u32,
    }

    impl Stream {
        fn new() -> Self {
            Stream {
                t0: Instant::now(),
                seq_base: 0,
                ts_base: 0,
            }
        }
    }

    /// Runs the buffer on a fake clock: `arrivals` are (packet index,
    /// arrival ms). Pops every 20 ms from t0 for `ticks` ticks and returns
    /// the played sequence numbers (None for concealment, nothing while
    /// waiting).
    fn run(
        buffer: &mut JitterBuffer,
        stream: &Stream,
        arrivals: &[(u16, u64)],
        ticks: u32,
    ) -> Vec<Option<u16>> {
        let t0 = stream.t0;
        let mut arrivals = arrivals.to_vec();
        arrivals.sort_by_key(|(_, at)| *at);
        let mut pending = arrivals.into_iter().peekable();
        let mut out = Vec::new();
        for tick in 0..ticks {
            let now = t0 + FRAME * tick;
            while let Some((index, at)) =
                pending.next_if(|(_, at)| t0 + Duration::from_millis(*at) <= now)
            {
                let seq = stream.seq_base.wrapping_add(index);
                let timestamp = stream.ts_base.wrapping_add(u32::from(index) * 160);
                buffer.push(
                    seq,
                    timestamp,
                    &seq.to_be_bytes(),
                    t0 + Duration::from_millis(at),
                );
            }
            match buffer.pop(now) {
                Playout::Waiting => {}
                Playout::Conceal => out.push(None),
                Playout::Frame { payload, .. } => {
                    out.push(Some(u16::from_be_bytes([payload[0], payload[1]])))
                }
            }
        }
        out
    }

    #[test]
    fn reorders_by_sequence_after_the_target_delay() {
        let mut buffer = fixed(40);
        let arrivals = [(0, 0), (2, 20), (1, 30), (3, 60), (4, 80)];
        let played = run(&mut buffer, &Stream::new(), &arrivals, 7);
        assert_eq!(played, vec![Some(0), Some(1), Some(2), Some(3), Some(4)]);
        assert_eq!(buffer.stats().played, 5);
    }

    #[test]
    fn conceals_a_lost_packet_and_drops_a_late_one() {
        let mut buffer = fixed(40);
        // 2 never arrives; 4 arrives at 130 ms, after its slot at 120 ms.
        let arrivals = [(0, 0), (1, 20), (3, 60), (4, 130), (5, 100), (6, 120)];
        let played = run(&mut buffer, &Stream::new(), &arrivals, 9);
        assert_eq!(
            played,
            vec![Some(0), Some(1), None, Some(3), None, Some(5), Some(6)]
        );
        let stats = buffer.stats();
        assert_eq!((stats.concealed, stats.late), (2, 1));
    }

    #[test]
    fn sequence_and_timestamp_wrap_keep_order() {
        let mut buffer = fixed(40);
        let arrivals = [(0, 0), (1, 20), (3, 40), (2, 45), (4, 80)];
        let played = run(
            &mut buffer,
            &Stream {
                seq_base: 65534,
                ts_base: u32::MAX - 319,
                ..Stream::new()
            },
            &arrivals,
            7,
        );
        assert_eq!(
            played,
            vec![Some(65534), Some(65535), Some(0), Some(1), Some(2)]
        );
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut buffer = fixed(20);
        let played = run(&mut buffer, &Stream::new(), &[(0, 0), (0, 5), (1, 20)], 3);
        assert_eq!(played, vec![Some(0), Some(1)]);
        assert_eq!(buffer.stats().duplicates, 1);
    }

    #[test]
    fn adaptive_target_follows_jitter_and_applies_at_the_next_talkspurt() {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        assert_eq!(
            buffer.target_delay(),
            Duration::from_millis(40),
            "min when nothing measured"
        );
        // A talkspurt with ±15 ms of arrival jitter.
        let jittery: Vec<(u16, u64)> = (0..50u16)
            .map(|s| (s, u64::from(s) * 20 + if s % 2 == 1 { 30 } else { 0 }))
            .collect();
        let stream = Stream::new();
        run(&mut buffer, &stream, &jittery, 60);
        // The second talkspurt (after silence) starts with the larger
        // target: its first frame plays only after `target` has passed.
        let resume = stream.t0 + Duration::from_millis(1500);
        buffer.push(75, 75 * 160, &[1], resume);
        let target = buffer.target_delay();
        assert!(
            target > Duration::from_millis(80) && target <= Duration::from_millis(300),
            "target {target:?}"
        );
        let mut waited = Duration::ZERO;
        while buffer.pop(resume + waited) == Playout::Waiting {
            waited += Duration::from_millis(1);
        }
        assert!(
            waited >= target && waited < target + Duration::from_millis(2),
            "waited {waited:?}"
        );
    }

    #[test]
    fn excess_delay_is_shed_by_skipping_frames() {
        let mut buffer = fixed(40);
        // 20 packets arrive in a burst at once: far more than the target.
        let burst: Vec<(u16, u64)> = (0..20u16).map(|s| (s, 0)).collect();
        let played = run(&mut buffer, &Stream::new(), &burst, 25);
        let frames: Vec<u16> = played.iter().flatten().copied().collect();
        assert!(frames.len() < 20, "some frames were skipped: {frames:?}");
        assert!(frames.windows(2).all(|w| w[0] < w[1]), "still in order");
        assert_eq!(*frames.last().unwrap(), 19);
        assert!(buffer.stats().discarded > 0);
    }

    #[test]
    fn a_timestamp_discontinuity_does_not_stall_playout() {
        let mut buffer = fixed(40);
        let t0 = Instant::now();
        let mut played = Vec::new();
        for tick in 0..10u16 {
            let now = t0 + FRAME * u32::from(tick);
            // The sender jumps its timestamp by ~10 minutes at packet 4.
            let ts = if tick < 4 {
                u32::from(tick) * 160
            } else {
                5_000_000 + u32::from(tick) * 160
            };
            buffer.push(tick, ts, &tick.to_be_bytes(), now);
            if let Playout::Frame { payload, .. } = buffer.pop(now) {
                played.push(u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        assert_eq!(played, (0..8).collect::<Vec<u16>>());
    }
}
